"""verify(ledger, checkpoint=None): recheck every hash, signature and chain link of a ledger.

The work is split by position range across worker processes (signature checks are the cost);
each worker checks its rows and the links inside its range, and returns the ends of its range
and of each session it saw, which the parent stitches together. Rows are read as raw bytes, so a
tampered column (even invalid UTF-8) becomes a reported problem, never a crash.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sqlite3
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from blake3 import blake3

from ..identity import verify_did_signature
from .checkpoint import Checkpoint
from .codec import decode_sealed_column, encode_sealed_column, sealed_reference
from .format import HASH_SIZE, SIGNATURE_SIZE, ZERO_HASH, event_hash, genesis_hash, lp
from .pg_url import is_postgres_url
from .recorder import SIGNER_DOMAIN
from .schema import EVENT_COLUMNS, EVENTS_TABLE, META_TABLE, SIGNERS_TABLE, check_sqlite_ledger_file

# Rows per worker task. A ledger of one chunk is verified in-process: below ~25k events,
# starting worker processes costs more than it saves.
CHUNK_EVENTS = 25_000


class ProblemKind(StrEnum):
    HASH_MISMATCH = "hash_mismatch"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_SIGNER = "unknown_signer"
    VERSION_GAP = "version_gap"
    SESSION_CHAIN_BREAK = "session_chain_break"
    GLOBAL_CHAIN_BREAK = "global_chain_break"
    POSITION_GAP = "position_gap"
    SEALED_MISMATCH = "sealed_mismatch"
    MALFORMED_ROW = "malformed_row"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    DATABASE_CORRUPT = "database_corrupt"


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    position: int | None
    session_id: str | None
    detail: str

    def __str__(self) -> str:
        where = f"position {self.position}" if self.position is not None else "ledger"
        session = f" session {self.session_id}" if self.session_id else ""
        return f"{self.kind.value} at {where}{session}: {self.detail}"


@dataclass
class VerificationReport:
    events_checked: int = 0
    signers_seen: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    head_position: int = 0
    head_hash: bytes = ZERO_HASH
    sessions: int = 0
    checkpoint_checked: bool = False
    workers: int = 1

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds_at(self, position: int) -> set[ProblemKind]:
        return {p.kind for p in self.problems if p.position == position}

    def summary(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} PROBLEM(S)"
        lines = [
            f"ledger verification: {state}",
            f"  events checked: {self.events_checked} in {self.sessions} sessions "
            f"(head position {self.head_position}, {self.workers} worker(s))",
            "  signers seen: "
            + (", ".join(f"{d} ({n})" for d, n in sorted(self.signers_seen.items())) or "none"),
        ]
        if self.checkpoint_checked:
            lines.append("  checkpoint: checked")
        lines += [f"  - {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        return "\n".join(lines)


@dataclass
class _RangeResult:
    count: int = 0
    problems: list[Problem] = field(default_factory=list)
    signers: dict[str, int] = field(default_factory=dict)
    first: tuple[int, bytes] | None = None  # (position, prev_global_hash) of the first row
    last: tuple[int, bytes] | None = None  # (position, event_hash) of the last row
    firsts: dict[str, tuple[int, bytes, int]] = field(default_factory=dict)  # sid -> (v, prev, pos)
    lasts: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # sid -> (v, hash)
    pinned: bytes | None = None  # event hash at the checkpoint's position, if in range


def _connect_ro(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.text_factory = bytes  # tampered text must not crash the reader
    return conn


def _as_bytes(value: Any, size: int | None = None) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise TypeError(
            f"expected {size or 'some'} bytes, got {type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, bytes) else "")
        )
    return value


def _as_int(value: Any) -> int:
    if not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _check_sealed(payload: bytes, sealed: bytes) -> str | None:
    try:
        blobs = decode_sealed_column(sealed)
        state = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        return f"sealed column or payload unreadable: {e}"
    if encode_sealed_column(blobs) != sealed:
        # Base64 and JSON admit several spellings of one value; only the canonical one is valid,
        # so that no byte of the column can change unnoticed.
        return "sealed column is not in canonical form"
    refs = {k: sealed_reference(v) for k, v in state.items()} if isinstance(state, dict) else {}
    for name, blob in blobs.items():
        if refs.get(name) != blake3(blob).hexdigest():
            return f"sealed field {name!r} does not match the digest in the payload"
    return None


def _verify_range(
    path: str, lo: int, hi: int, trusted: frozenset[str], pin: int | None
) -> _RangeResult:
    out = _RangeResult()
    errors = _pg_errors() if is_postgres_url(path) else (sqlite3.DatabaseError,)
    try:
        with _range_rows(path, lo, hi) as rows:
            _check_rows(out, rows, trusted, pin)
    except errors as e:
        out.problems.append(
            Problem(ProblemKind.DATABASE_CORRUPT, None, None, f"rows {lo}..{hi}: {e}")
        )
    return out


@contextmanager
def _range_rows(source: str, lo: int, hi: int) -> Iterator[Iterable[Any]]:
    if is_postgres_url(source):
        from .pg_verify import range_rows

        with range_rows(source, lo, hi) as rows:
            yield rows
        return
    conn = _connect_ro(source)
    try:
        yield conn.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM {EVENTS_TABLE} "
            "WHERE position BETWEEN ? AND ? ORDER BY position",
            (lo, hi),
        )
    finally:
        conn.close()


def _pg_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.Error,)


def _check_rows(
    out: _RangeResult, rows: Iterable[Any], trusted: frozenset[str], pin: int | None
) -> None:
    prev_pos: int | None = None
    prev_hash: bytes | None = None
    firsts, lasts, signers, problems = out.firsts, out.lasts, out.signers, out.problems
    for row in rows:
        out.count += 1
        raw_pos = row[0]
        try:
            position = _as_int(raw_pos)
            sid_b = _as_bytes(row[1])
            sid = sid_b.decode()
            version = _as_int(row[2])
            topic = _as_bytes(row[3])
            timestamp = _as_int(row[4])
            payload = _as_bytes(row[5])
            sealed = None if row[6] is None else _as_bytes(row[6])
            prev_s = _as_bytes(row[7], HASH_SIZE)
            prev_g = _as_bytes(row[8], HASH_SIZE)
            stored_h = _as_bytes(row[9], HASH_SIZE)
            signer_b = _as_bytes(row[10])
            signer = signer_b.decode()
            signature = _as_bytes(row[11], SIGNATURE_SIZE)
        except (TypeError, UnicodeDecodeError) as e:
            problems.append(
                Problem(
                    ProblemKind.MALFORMED_ROW,
                    raw_pos if isinstance(raw_pos, int) else None,
                    None,
                    str(e),
                )
            )
            prev_pos, prev_hash = (raw_pos if isinstance(raw_pos, int) else prev_pos), None
            continue
        if out.first is None:
            out.first = (position, prev_g)
        elif prev_pos is not None and position != prev_pos + 1:
            problems.append(
                Problem(ProblemKind.POSITION_GAP, position, sid, f"follows position {prev_pos}")
            )
        if prev_hash is not None and prev_g != prev_hash:
            problems.append(
                Problem(
                    ProblemKind.GLOBAL_CHAIN_BREAK,
                    position,
                    sid,
                    "prev_global_hash is not the previous event's hash",
                )
            )
        h = event_hash(
            position, sid_b, version, topic, timestamp, payload, prev_s, prev_g, lp(signer_b)
        )
        if h != stored_h:
            problems.append(
                Problem(
                    ProblemKind.HASH_MISMATCH,
                    position,
                    sid,
                    "stored event_hash differs from the hash of the row's content",
                )
            )
        if signer not in trusted:
            problems.append(
                Problem(ProblemKind.UNKNOWN_SIGNER, position, sid, f"signed by {signer!r}")
            )
        elif not verify_did_signature(signer, signature, stored_h):
            problems.append(
                Problem(
                    ProblemKind.BAD_SIGNATURE,
                    position,
                    sid,
                    f"signature does not verify under {signer}",
                )
            )
        signers[signer] = signers.get(signer, 0) + 1
        if sealed is not None:
            why = _check_sealed(payload, sealed)
            if why:
                problems.append(Problem(ProblemKind.SEALED_MISMATCH, position, sid, why))
        last = lasts.get(sid)
        if last is None:
            firsts[sid] = (version, prev_s, position)
        else:
            if version != last[0] + 1:
                problems.append(
                    Problem(
                        ProblemKind.VERSION_GAP,
                        position,
                        sid,
                        f"version {version} follows version {last[0]}",
                    )
                )
            if prev_s != last[1]:
                problems.append(
                    Problem(
                        ProblemKind.SESSION_CHAIN_BREAK,
                        position,
                        sid,
                        "prev_session_hash is not the hash of the session's previous event",
                    )
                )
        lasts[sid] = (version, stored_h)
        if position == pin:
            out.pinned = stored_h
        prev_pos, prev_hash = position, stored_h
        out.last = (position, stored_h)


def _ledger_meta(
    path: str, chunk: int
) -> tuple[str, frozenset[str], list[tuple[int, int]], list[Problem]]:
    problems: list[Problem] = []
    conn = _connect_ro(path)
    try:
        integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
        if integrity not in (b"ok", "ok"):
            problems.append(
                Problem(
                    ProblemKind.DATABASE_CORRUPT, None, None, f"SQLite quick_check: {integrity!r}"
                )
            )
        row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key='ledger_id'").fetchone()
        ledger_id = row[0].decode() if row else ""
        signers = set()
        for did, signature in conn.execute(f"SELECT did, signature FROM {SIGNERS_TABLE}"):
            did_s = did.decode(errors="replace")
            statement = SIGNER_DOMAIN + lp(ledger_id.encode()) + lp(did_s.encode())
            if verify_did_signature(did_s, bytes(signature), statement):
                signers.add(did_s)
        # Chunk boundaries from the positions actually stored: an attacker may have moved a row
        # to a huge position, and arithmetic ranges up to it would be endless.
        positions = conn.execute(f"SELECT position FROM {EVENTS_TABLE} ORDER BY position")
        bounds = [p for i, (p,) in enumerate(positions) if i % chunk == 0]
        last = conn.execute(f"SELECT MAX(position) FROM {EVENTS_TABLE}").fetchone()[0]
    finally:
        conn.close()
    ranges = [(a, b - 1) for a, b in itertools.pairwise(bounds)]
    if bounds:
        ranges.append((bounds[-1], last))
    return ledger_id, frozenset(signers), ranges, problems


def _pg_ledger_meta(
    url: str, chunk: int
) -> tuple[str, frozenset[str], list[tuple[int, int]], list[Problem]]:
    from .pg_verify import ledger_meta

    return (*ledger_meta(url, chunk), [])


def verify(
    ledger: Any,
    checkpoint: Checkpoint | str | None = None,
    *,
    trusted_signers: Iterable[str] | None = None,
    workers: int | None = None,
    chunk_events: int = CHUNK_EVENTS,
) -> VerificationReport:
    """Verify a ledger (a SessionLedger, the path of its file or a PostgreSQL URL).

    ``trusted_signers``: the did:keys allowed to sign. By default, the signers registered in the
    ledger itself — pass them explicitly to also catch a forger who registered their own key.
    ``checkpoint``: a checkpoint seen earlier (object or text); detects truncation or rewriting.
    ``workers``: processes to use (default: one per core); ``chunk_events``: rows per task.
    """
    if chunk_events < 1:
        raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
    pg = getattr(ledger, "pg", None)
    if pg is not None or is_postgres_url(ledger):
        source = pg.url() if pg is not None else str(ledger)
        ledger_id, registered, ranges, problems = _pg_ledger_meta(source, chunk_events)
    else:
        path = Path(getattr(ledger, "path", ledger))
        check_sqlite_ledger_file(path, create=False)
        source = str(path)
        ledger_id, registered, ranges, problems = _ledger_meta(source, chunk_events)
    if isinstance(checkpoint, str):
        checkpoint = Checkpoint.parse(checkpoint)
    trusted = frozenset(trusted_signers) if trusted_signers is not None else registered
    report = VerificationReport(problems=problems)
    pin = checkpoint.position if checkpoint else None

    n_workers = workers or os.cpu_count() or 1
    if n_workers == 1 or len(ranges) < 2:
        results = [_verify_range(source, a, b, trusted, pin) for a, b in ranges]
        report.workers = 1
    else:
        n_workers = min(n_workers, len(ranges))
        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            futures = [pool.submit(_verify_range, source, a, b, trusted, pin) for a, b in ranges]
            results = [f.result() for f in futures]
        report.workers = n_workers
    _stitch(report, results, genesis_hash(ledger_id))
    if checkpoint is not None:
        _check_checkpoint(report, checkpoint, ledger_id, trusted, results)
    report.problems.sort(key=lambda p: p.position if p.position is not None else -1)
    return report


def _stitch(report: VerificationReport, results: list[_RangeResult], genesis: bytes) -> None:
    expected_pos, expected_prev = 1, genesis
    sessions: dict[str, tuple[int, bytes]] = {}
    for r in results:
        report.events_checked += r.count
        report.problems.extend(r.problems)
        for signer, n in r.signers.items():
            report.signers_seen[signer] = report.signers_seen.get(signer, 0) + n
        if r.first is not None:
            pos, prev = r.first
            if pos != expected_pos:
                report.problems.append(
                    Problem(
                        ProblemKind.POSITION_GAP, pos, None, f"expected position {expected_pos}"
                    )
                )
            if prev != expected_prev:
                what = (
                    "the ledger's genesis hash"
                    if expected_pos == 1
                    else "the previous event's hash"
                )
                report.problems.append(
                    Problem(
                        ProblemKind.GLOBAL_CHAIN_BREAK, pos, None, f"prev_global_hash is not {what}"
                    )
                )
        if r.last is not None:
            expected_pos, expected_prev = r.last[0] + 1, r.last[1]
        for sid, (version, prev, pos) in r.firsts.items():
            before = sessions.get(sid)
            want_v, want_prev = (before[0] + 1, before[1]) if before else (1, ZERO_HASH)
            if version != want_v:
                report.problems.append(
                    Problem(
                        ProblemKind.VERSION_GAP, pos, sid, f"version {version}, expected {want_v}"
                    )
                )
            if prev != want_prev:
                report.problems.append(
                    Problem(
                        ProblemKind.SESSION_CHAIN_BREAK,
                        pos,
                        sid,
                        "prev_session_hash does not continue the session's chain",
                    )
                )
        sessions.update(r.lasts)
    report.head_position = expected_pos - 1
    report.head_hash = expected_prev
    report.sessions = len(sessions)


def _check_checkpoint(
    report: VerificationReport,
    cp: Checkpoint,
    ledger_id: str,
    trusted: frozenset[str],
    results: list[_RangeResult],
) -> None:
    report.checkpoint_checked = True
    kind = ProblemKind.CHECKPOINT_MISMATCH
    if cp.ledger_id != ledger_id:
        report.problems.append(
            Problem(kind, None, None, f"checkpoint is for ledger {cp.ledger_id}, not {ledger_id}")
        )
        return
    if not cp.signature_valid():
        report.problems.append(
            Problem(kind, cp.position, None, "checkpoint signature does not verify")
        )
    elif cp.signer not in trusted:
        report.problems.append(
            Problem(kind, cp.position, None, f"checkpoint signed by untrusted {cp.signer}")
        )
    if cp.position == 0:
        return
    pinned = next((r.pinned for r in results if r.pinned is not None), None)
    if report.head_position < cp.position or pinned is None:
        report.problems.append(
            Problem(
                kind,
                cp.position,
                None,
                f"truncated: the ledger ends at position {report.head_position}, but a checkpoint "
                f"covers {cp.position} events",
            )
        )
    elif pinned != cp.head_hash:
        report.problems.append(
            Problem(
                kind,
                cp.position,
                None,
                "rewritten: the event hash at the checkpoint's position differs from the "
                "checkpoint's head hash",
            )
        )
