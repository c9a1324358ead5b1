"""verify(ledger, checkpoint=None): recheck every hash, signature and chain link of a ledger.

The work is split by position range across worker processes (signature checks are the cost);
each worker checks its rows and the links inside its range, and returns the ends of its range
and of each session it saw, which the parent stitches together. Rows are read as raw bytes, so a
tampered column (even invalid UTF-8) becomes a reported problem, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blake3 import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from l2_session.domain.session.topics import CHECKPOINT_CONFLICT, CHECKPOINT_WITNESSED
from l2_session.infrastructure.identity import DIDError, public_key_from_did_key
from l2_session.infrastructure.ledger.checkpoint import Checkpoint, CheckpointError
from l2_session.infrastructure.ledger.codec import (
    decode_sealed_column,
    encode_sealed_column,
    sealed_reference,
)
from l2_session.infrastructure.ledger.format import (
    HASH_SIZE,
    SIGNATURE_SIZE,
    ZERO_HASH,
    event_hash_input_lp,
    genesis_hash,
    lp,
)
from l2_session.infrastructure.ledger.pg_url import is_postgres_url
from l2_session.infrastructure.ledger.schema import check_sqlite_ledger_file
from l2_session.infrastructure.ledger.tree import TILE
from l2_session.infrastructure.ledger.tree_head import TreeHeadError, verify_cosignature
from l2_session.infrastructure.ledger.verify_report import (
    Problem,
    ProblemKind,
    VerificationReport,
    aggregate_kind,
    printable,
)
from l2_session.infrastructure.ledger.verify_sources import (
    pg_ledger_meta,
    range_nodes,
    range_rows,
    read_errors,
    sqlite_integrity_problems,
    sqlite_ledger_meta,
    stored_tree_and_checkpoints,
    witnessed_events,
)
from l2_session.infrastructure.ledger.verify_tree import (
    RangeTree,
    TreeStitch,
    stored_rows,
    with_columns,
)

__all__ = ["Problem", "ProblemKind", "VerificationReport", "verify"]

_CONFLICT_TOPIC = CHECKPOINT_CONFLICT.encode()

# Rows per worker task. A ledger of one chunk is verified in-process: below ~25k events,
# starting worker processes costs more than it saves. The last tasks are smaller, down to one
# step of CHUNK_EVENTS // STEPS_PER_CHUNK rows (plan_ranges).
CHUNK_EVENTS = 25_000
STEPS_PER_CHUNK = 8
SIGNATURE_BLOCK = 256  # signatures checked together (_check_signatures)


@dataclass
class _RangeResult:
    count: int = 0
    problems: list[Problem] = field(default_factory=list)
    signers: dict[str, int] = field(default_factory=dict)
    first: tuple[int, bytes] | None = None  # (position, prev_global_hash) of the first row
    last: tuple[int, bytes] | None = None  # (position, event_hash) of the last row
    first_ts: int | None = None  # timestamps of the first and last rows
    last_ts: int | None = None
    firsts: dict[str, tuple[int, bytes, int]] = field(default_factory=dict)  # sid -> (v, prev, pos)
    lasts: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # sid -> (v, hash)
    created: dict[str, bytes] = field(default_factory=dict)  # sid -> topic of its version 1
    pinned: dict[int, bytes] = field(default_factory=dict)  # checkpoint size -> event hash there
    conflicts: list[tuple[int, bytes]] = field(default_factory=list)  # CheckpointConflict rows
    tree: RangeTree | None = None


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
    path: str,
    lo: int,
    hi: int,
    trusted: frozenset[str],
    pins: frozenset[int],
    layout: str | None,
    tiles_end: int | None,
    recompute: bool = True,
) -> _RangeResult:
    out = _RangeResult()
    try:
        inline = recompute and layout == "inline"  # the tree comes with the events
        with (
            range_rows(path, lo, hi, tree_column=inline) as rows,
            range_nodes(path, lo, hi, layout) as nodes,
        ):
            if recompute:
                stored = None if nodes is None else stored_rows(nodes, layout or "nodes", lo, hi)
                out.tree = RangeTree(stored, pins, tiles_end, inline=inline)
                if inline:
                    rows = with_columns(rows, out.tree)
            _check_rows(out, rows, trusted, pins)
            if out.tree is not None:
                out.tree.finish()
    except read_errors(path) as e:
        out.problems.append(
            Problem(ProblemKind.DATABASE_CORRUPT, None, None, f"rows {lo}..{hi}: {e}")
        )
        out.tree = None
    if out.tree is not None:
        out.problems.extend(out.tree.problems)
        out.tree.problems = []
        out.tree.stored = None  # a generator over a closed cursor does not go back to the parent
    return out


def _parse_slowly(row: Any, problems: list[Problem]) -> tuple[Any, ...] | None:
    """A row off the fast path: its values converted (text read as bytes), or None with a
    MALFORMED_ROW problem naming the column that is wrong."""
    raw_pos = row[0]
    try:
        return (
            _as_int(raw_pos), _as_bytes(row[1]), _as_int(row[2]), _as_bytes(row[3]),
            _as_int(row[4]), _as_bytes(row[5]), None if row[6] is None else _as_bytes(row[6]),
            _as_bytes(row[7], HASH_SIZE), _as_bytes(row[8], HASH_SIZE),
            _as_bytes(row[9], HASH_SIZE), _as_bytes(row[10]), _as_bytes(row[11], SIGNATURE_SIZE),
        )  # fmt: skip
    except TypeError as e:
        position = raw_pos if isinstance(raw_pos, int) else None
        problems.append(Problem(ProblemKind.MALFORMED_ROW, position, None, str(e)))
        return None


def _key_of(signer: str) -> Ed25519PublicKey | None:
    try:
        return public_key_from_did_key(signer)
    except (DIDError, ValueError):
        return None


# (key, signature, event hash, position, session id, signer) of a row whose signature is
# still to be checked.
_Unchecked = tuple[Ed25519PublicKey | None, bytes, bytes, int, str, str]


def _check_signatures(unchecked: list[_Unchecked], problems: list[Problem]) -> None:
    """Check a block of signatures, one after another, then forget them. Checked in blocks
    rather than row by row, OpenSSL's code and tables stay in the CPU's caches: ~4% more
    signatures per second than interleaved with the rows' Python work."""
    for key, signature, digest, position, sid, signer in unchecked:
        try:
            if key is None:
                raise InvalidSignature
            key.verify(signature, digest)
        except InvalidSignature:
            problems.append(
                Problem(
                    ProblemKind.BAD_SIGNATURE,
                    position,
                    sid,
                    f"signature does not verify under {signer}",
                )
            )
    unchecked.clear()


def _check_rows(
    out: _RangeResult, rows: Iterable[Any], trusted: frozenset[str], pins: frozenset[int]
) -> None:
    unchecked: list[_Unchecked] = []
    try:
        _check_row_contents(out, rows, trusted, pins, unchecked)
    finally:  # also when reading fails part way: every row counted had its signature checked
        _check_signatures(unchecked, out.problems)


def _check_row_contents(
    out: _RangeResult,
    rows: Iterable[Any],
    trusted: frozenset[str],
    pins: frozenset[int],
    unchecked: list[_Unchecked],
) -> None:
    """Every check of each row but the signature's, which goes to ``unchecked``."""
    grow = out.tree.add if out.tree is not None else None
    prev_pos: int | None = None
    prev_hash: bytes | None = None
    firsts, lasts, signers, problems = out.firsts, out.lasts, out.signers, out.problems
    # Per range, made once: length-prefixed session ids, topics and signers (the hash input
    # takes them prefixed) and the signers' key objects.
    prefixed: dict[bytes, bytes] = {}
    keys: dict[str, Ed25519PublicKey | None] = {}
    for row in rows:
        out.count += 1
        # Fast path: a well-formed row is twelve values of the stored types, unpacked at once;
        # anything else takes the slow path, which says exactly what is wrong.
        (position, sid_b, version, topic, timestamp, payload, sealed,
         prev_s, prev_g, stored_h, signer_b, signature) = row  # fmt: skip
        if not (
            type(position) is int and type(version) is int and type(timestamp) is int
            and type(sid_b) is bytes and type(topic) is bytes and type(payload) is bytes
            and type(signer_b) is bytes and (sealed is None or type(sealed) is bytes)
            and type(prev_s) is bytes and len(prev_s) == HASH_SIZE
            and type(prev_g) is bytes and len(prev_g) == HASH_SIZE
            and type(stored_h) is bytes and len(stored_h) == HASH_SIZE
            and type(signature) is bytes and len(signature) == SIGNATURE_SIZE
        ):  # fmt: skip
            parsed = _parse_slowly(row, problems)
            if parsed is None:
                raw_pos = row[0]
                prev_pos, prev_hash = (raw_pos if isinstance(raw_pos, int) else prev_pos), None
                continue
            (position, sid_b, version, topic, timestamp, payload, sealed,
             prev_s, prev_g, stored_h, signer_b, signature) = parsed  # fmt: skip
        try:
            sid, signer = sid_b.decode(), signer_b.decode()
        except UnicodeDecodeError as e:
            problems.append(Problem(ProblemKind.MALFORMED_ROW, position, None, str(e)))
            prev_pos, prev_hash = position, None
            continue
        if out.first_ts is None:
            out.first_ts = timestamp
        elif out.last_ts is not None and timestamp < out.last_ts:
            problems.append(
                Problem(ProblemKind.TIME_REVERSED, position, sid, _earlier(out.last_ts, timestamp))
            )
        out.last_ts = timestamp
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
        # One dict for all three: equal bytes have equal prefixed forms, whatever they name.
        sid_lp, topic_lp = prefixed.get(sid_b), prefixed.get(topic)
        signer_lp = prefixed.get(signer_b)
        if sid_lp is None:
            sid_lp = prefixed[sid_b] = lp(sid_b)
        if topic_lp is None:
            topic_lp = prefixed[topic] = lp(topic)
        if signer_lp is None:
            signer_lp = prefixed[signer_b] = lp(signer_b)
        h = blake3(
            event_hash_input_lp(
                position, sid_lp, version, topic_lp, timestamp, payload, prev_s, prev_g, signer_lp
            )
        ).digest()
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
        else:
            key = keys[signer] if signer in keys else keys.setdefault(signer, _key_of(signer))
            unchecked.append((key, signature, stored_h, position, sid, signer))
            if len(unchecked) >= SIGNATURE_BLOCK:
                _check_signatures(unchecked, problems)
        signers[signer] = signers.get(signer, 0) + 1
        if sealed is not None:
            why = _check_sealed(payload, sealed)
            if why:
                problems.append(Problem(ProblemKind.SEALED_MISMATCH, position, sid, why))
        last = lasts.get(sid)
        if last is None:
            firsts[sid] = (version, prev_s, position)
            if version == 1:  # its creation event: the topic tells a session from a peer
                out.created[sid] = topic
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
        if topic == _CONFLICT_TOPIC:  # this node found another's ledger in conflict
            out.conflicts.append((position, payload))
        if grow is not None:
            grow(position, stored_h)
        if position in pins:
            out.pinned[position] = stored_h
        prev_pos, prev_hash = position, stored_h
        out.last = (position, stored_h)


def verify(
    ledger: Any,
    checkpoint: Checkpoint | str | None = None,
    *,
    trusted_signers: Iterable[str] | None = None,
    workers: int | None = None,
    chunk_events: int = CHUNK_EVENTS,
    witnesses: Iterable[Any] = (),
    check_tree: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> VerificationReport:
    """Verify a ledger (a SessionLedger, the path of its file or a PostgreSQL URL).

    ``trusted_signers``: the did:keys allowed to sign. By default, the signers registered in the
    ledger itself — pass them explicitly to also catch a forger who registered their own key.
    ``checkpoint``: a checkpoint seen earlier (object or text); detects truncation or rewriting.
    ``workers``: processes to use (default: one per core); ``chunk_events``: rows per task.
    ``witnesses``: other nodes' ledgers (paths or URLs): every checkpoint of this ledger they
    witnessed is checked as a checkpoint seen before, and every conflict they recorded about
    it is reported (decision 25). ``check_tree=False`` skips the Merkle tree: no root is
    recomputed, no stored node compared, no checkpoint's root checked (their head hashes
    still are) — faster, and checking less. ``progress(done, total)`` is called as ranges of
    positions are checked (positions checked so far, positions in all), from this thread.
    """
    if chunk_events < 1:
        raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
    n_workers = workers or os.cpu_count() or 1
    step = max(1, chunk_events // STEPS_PER_CHUNK)
    integrity: Callable[[str], list[Problem]] | None = None
    pg = getattr(ledger, "pg", None)
    if pg is not None or is_postgres_url(ledger):
        source = pg.url() if pg is not None else str(ledger)
        ledger_id, registered, bounds, last = pg_ledger_meta(source, step)
    else:
        path = Path(getattr(ledger, "path", ledger))
        check_sqlite_ledger_file(path, create=False)
        source = str(path)
        try:
            ledger_id, registered, bounds, last = sqlite_ledger_meta(source, step)
        except sqlite3.DatabaseError as e:
            return _unreadable_meta(source, e)
        integrity = sqlite_integrity_problems
    if isinstance(checkpoint, str):
        checkpoint = Checkpoint.parse(checkpoint)
    trusted = frozenset(trusted_signers) if trusted_signers is not None else registered
    report = VerificationReport()
    report.anchored = trusted_signers is not None
    try:
        layout, stored, cosigned = stored_tree_and_checkpoints(source)
    except read_errors(source) as e:
        layout, stored, cosigned = None, [], []
        report.problems.append(
            Problem(ProblemKind.DATABASE_CORRUPT, None, None, f"stored checkpoints: {e}")
        )
    layout = layout if check_tree else None  # how the tree checked is stored
    tiles_end = last // TILE * TILE if layout == "tiles" and last is not None else None
    checkpoints = _parse_stored(stored, report)
    _check_cosignatures(cosigned, dict(stored), report)
    if checkpoint is not None:
        checkpoints.append(("the checkpoint given", checkpoint))
    for witness in witnesses:
        checkpoints += _witnessed(witness, ledger_id, report)
    pins = frozenset(cp.position for _, cp in checkpoints if cp.position > 0)

    ranges = plan_ranges(bounds, last, chunk_events // step, n_workers)
    total, done = sum(b - a + 1 for a, b in ranges), 0  # ranges are inclusive
    if n_workers == 1 or len(ranges) < 2:
        report.problems += integrity(source) if integrity else []
        results = []
        for a, b in ranges:
            results.append(
                _verify_range(source, a, b, trusted, pins, layout, tiles_end, check_tree)
            )
            if progress is not None:
                done += b - a + 1
                progress(done, total)
        report.workers = 1
    else:
        n_workers = min(n_workers, len(ranges))
        ctx = multiprocessing.get_context("forkserver")
        # The structural check reads the whole file; beside the workers, its reading overlaps
        # their signature checks instead of delaying them.
        with (
            ThreadPoolExecutor(max_workers=1) as beside,
            ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool,
        ):
            checked = beside.submit(_in_the_gaps, integrity, source) if integrity else None
            args = (trusted, pins, layout, tiles_end)
            futures = {
                pool.submit(_verify_range, source, a, b, *args): b - a + 1 for a, b in ranges
            }
            if progress is not None:
                for future in as_completed(futures):
                    done += futures[future]
                    progress(done, total)
            results = [f.result() for f in futures]
            report.problems += checked.result() if checked else []
        report.workers = n_workers
    _stitch(report, results, genesis_hash(ledger_id))
    report.conflicts_recorded = _conflicts_recorded(results)
    tree = _stitch_tree(report, results, layout is not None, tiles_end) if check_tree else None
    for name, cp in checkpoints:
        _check_checkpoint(report, name, cp, ledger_id, trusted, results, tree)
    if checkpoint is not None:
        report.checkpoint_checked = True
        report.checkpoint_position = checkpoint.position
        report.anchored = report.anchored or checkpoint.signature_valid()
    report.problems.sort(key=lambda p: p.position if p.position is not None else -1)
    return report


def _witnessed(
    witness: Any, ledger_id: str, report: VerificationReport
) -> list[tuple[str, Checkpoint]]:
    """The checkpoints of ledger ``ledger_id`` that the ledger ``witness`` recorded: those it
    cosigned, and both of each conflict (one of them no longer matches, or the origin signed
    two histories); each conflict is a problem of this ledger's owner."""
    pg = getattr(witness, "pg", None)
    source = pg.url() if pg is not None else str(getattr(witness, "path", witness))
    found: list[tuple[str, Checkpoint]] = []
    rows = witnessed_events(source, (CHECKPOINT_WITNESSED, CHECKPOINT_CONFLICT))
    report.witnesses += 1
    report.anchored = True
    for position, topic, payload in rows:
        try:
            fields = json.loads(payload)
            texts = (
                [fields["checkpoint"]]
                if topic == CHECKPOINT_WITNESSED
                else [fields["witnessed"], fields["offered"]]
            )
            parsed = [Checkpoint.parse(t) for t in texts if t]
        except (ValueError, KeyError, TypeError, CheckpointError) as e:
            report.problems.append(
                Problem(
                    ProblemKind.CHECKPOINT_MISMATCH,
                    None,
                    None,
                    f"witness ledger {printable(source)} position {position}: unreadable ({e})",
                )
            )
            continue
        if not parsed or parsed[-1].ledger_id != ledger_id:
            continue
        name = f"the checkpoint witnessed in {source} (its position {position})"
        if topic == CHECKPOINT_CONFLICT:
            report.problems.append(
                Problem(
                    ProblemKind.WITNESS_CONFLICT,
                    parsed[-1].size,
                    None,
                    f"{source} (position {position}) recorded that this ledger's owner offered "
                    f"a checkpoint that does not extend the one it witnessed "
                    f"({fields.get('reason')}): two signed histories",
                )
            )
        found += [(name, cp) for cp in parsed]
        report.witnessed_checkpoints += len(parsed)
    return found


def _check_cosignatures(
    cosigned: list[tuple[int, int, str, str]], stored: dict[int, str], report: VerificationReport
) -> None:
    """Each witness cosignature kept must be its witness's, on the checkpoint it names."""
    for row_id, checkpoint_id, witness, line in cosigned:
        text = stored.get(checkpoint_id)
        why = None
        try:
            if text is None:
                why = f"names checkpoint #{checkpoint_id}, which is not stored"
            else:
                body = Checkpoint.parse(text).body().decode()
                verify_cosignature(
                    witness, public_key_from_did_key(witness), body, line.rstrip("\n") + "\n"
                )
        except (CheckpointError, TreeHeadError, DIDError, ValueError) as e:
            why = f"does not verify ({e})"
        if why:
            report.problems.append(
                Problem(
                    ProblemKind.CHECKPOINT_MISMATCH,
                    None,
                    None,
                    f"cosignature #{row_id} by {witness} {why}",
                )
            )
        else:
            report.cosignatures += 1


def _conflicts_recorded(results: list[_RangeResult]) -> list[str]:
    """What this ledger's node recorded of other ledgers that did not extend what it had
    witnessed (decision 25): evidence about them, not a problem of this ledger."""
    found = []
    for r in results:
        for position, payload in r.conflicts:
            try:
                fields = json.loads(payload)
                origin = Checkpoint.parse(fields["offered"]).origin
                found.append(f"{origin}: {fields['reason']} (position {position})")
            except (ValueError, KeyError, TypeError, CheckpointError):
                found.append(f"an unreadable record (position {position})")
    return found


def _parse_stored(
    stored: list[tuple[int, str]], report: VerificationReport
) -> list[tuple[str, Checkpoint]]:
    """The checkpoints stored in the ledger, each named for the report; one that cannot be
    read is a problem of the ledger (the table is append-only: nothing wrote it honestly)."""
    found: list[tuple[str, Checkpoint]] = []
    for row_id, text in stored:
        name = f"stored checkpoint #{row_id}"
        try:
            found.append((name, Checkpoint.parse(text)))
        except CheckpointError as e:
            report.problems.append(
                Problem(ProblemKind.CHECKPOINT_MISMATCH, None, None, f"{name}: {e}")
            )
    report.stored_checkpoints = len(found)
    return found


def _stitch_tree(
    report: VerificationReport,
    results: list[_RangeResult],
    has_tree: bool,
    tiles_end: int | None,
) -> TreeStitch | None:
    """The whole tree from the ranges' blocks: its root, the roots at checkpoint sizes, and
    the stored nodes that span ranges checked. None if the rows could not all be read."""
    stitch = TreeStitch(checked=has_tree, tiles_end=tiles_end)
    for r in results:
        if r.tree is None:
            return None
        stitch.add_range(r.tree)
    if stitch.broken:
        return None
    report.problems.extend(stitch.finish())
    report.tree_root = stitch.root()
    report.tree_checked = has_tree
    return stitch


def _unreadable_meta(source: str, error: sqlite3.DatabaseError) -> VerificationReport:
    """The report on a SQLite ledger whose id or signers cannot be read: no chain link or
    signature can be checked without them, so SQLite's own check says where the damage is."""
    report = VerificationReport()
    report.problems = sqlite_integrity_problems(source)
    report.problems.append(
        Problem(
            ProblemKind.DATABASE_CORRUPT,
            None,
            None,
            f"the ledger's id and signers cannot be read ({error}); no event was checked",
        )
    )
    return report


def _in_the_gaps(check: Callable[[str], list[Problem]], source: str) -> list[Problem]:
    """Run ``check`` on this thread at the lowest CPU priority (Linux gives each thread its
    own nice value): it takes the cores when the workers leave them idle — while they start,
    at the tail — instead of slowing the signature checks. Elsewhere it runs as it is."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: no harm
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    return check(source)


def plan_ranges(
    bounds: list[int], last: int | None, steps_per_chunk: int, workers: int
) -> list[tuple[int, int]]:
    """Position ranges for the workers, from every step-th stored position (``bounds``).

    Guided, as OpenMP schedules loops: whole chunks (``steps_per_chunk`` steps) while much is
    left, then ever smaller ones, so that the workers finish together instead of one waiting
    for the other's last whole chunk.
    """
    if not bounds or last is None:
        return []
    ranges, i, n = [], 0, len(bounds)
    while i < n:
        k = steps_per_chunk if workers == 1 else (n - i) // (2 * workers)
        j = min(n, i + max(1, min(steps_per_chunk, k)))
        ranges.append((bounds[i], bounds[j] - 1 if j < n else last))
        i = j
    return ranges


def _earlier(before: int, now: int) -> str:
    return f"timestamp {now} µs is earlier than the previous event's ({before} µs)"


def _stitch(report: VerificationReport, results: list[_RangeResult], genesis: bytes) -> None:
    expected_pos, expected_prev = 1, genesis
    last_ts: int | None = None
    sessions: dict[str, tuple[int, bytes]] = {}
    created: dict[str, bytes] = {}
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
        if (
            r.first is not None
            and r.first_ts is not None
            and last_ts is not None
            and r.first_ts < last_ts
        ):
            report.problems.append(
                Problem(ProblemKind.TIME_REVERSED, r.first[0], None, _earlier(last_ts, r.first_ts))
            )
        if r.last_ts is not None:
            last_ts = r.last_ts
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
        created.update(r.created)
    report.head_position = expected_pos - 1
    report.head_hash = expected_prev
    for sid in sessions:
        topic = created.get(sid)
        kind = aggregate_kind(topic.decode(errors="replace") if topic is not None else None)
        report.aggregates[kind] = report.aggregates.get(kind, 0) + 1


def _check_checkpoint(
    report: VerificationReport,
    name: str,
    cp: Checkpoint,
    ledger_id: str,
    trusted: frozenset[str],
    results: list[_RangeResult],
    tree: TreeStitch | None,
) -> None:
    kind = ProblemKind.CHECKPOINT_MISMATCH
    if cp.ledger_id != ledger_id:
        report.problems.append(
            Problem(kind, None, None, f"{name} is for ledger {cp.ledger_id}, not {ledger_id}")
        )
        return
    if not cp.signature_valid():
        report.problems.append(
            Problem(kind, cp.position, None, f"{name}: its signature does not verify")
        )
    elif cp.signer not in trusted:
        report.problems.append(
            Problem(kind, cp.position, None, f"{name} is signed by untrusted {cp.signer}")
        )
    if cp.position == 0:
        return
    pinned = next((r.pinned[cp.position] for r in results if cp.position in r.pinned), None)
    if report.head_position < cp.position or pinned is None:
        report.problems.append(
            Problem(
                kind,
                cp.position,
                None,
                f"truncated: the ledger ends at position {report.head_position}, but {name} "
                f"covers {cp.position} events",
            )
        )
    elif pinned != cp.head_hash:
        report.problems.append(
            Problem(
                kind,
                cp.position,
                None,
                f"rewritten: the event hash at the position of {name} differs from its head hash",
            )
        )
    elif cp.root is not None and tree is not None and tree.roots.get(cp.position) != cp.root:
        report.problems.append(
            Problem(
                kind,
                cp.position,
                None,
                f"rewritten: the Merkle root of the first {cp.position} events differs from "
                f"the root {name} signed",
            )
        )
