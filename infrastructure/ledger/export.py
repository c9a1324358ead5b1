"""The forensic export: events of a ledger as a bundle anyone can verify without the ledger
(docs/forensic-export.md; the standalone verifier is tools/verify_bundle.py).

A bundle is a directory of six files, written whole or not at all:

    manifest.json     what was asked, the tree size, and each other file's BLAKE3 and size
    checkpoint.txt    the newest checkpoint the ledger stores (a C2SP signed note, §5)
    events.jsonl      the events, each with every column the event hash covers, its hash and
                      signature (never a sealed secret: the ``sealed`` column is not exported)
    proofs.jsonl      a partial export's: each event's Merkle inclusion proof in the
                      checkpoint's tree (a whole export holds every leaf: the verifier
                      recomputes the tree; it carries proofs only when asked)
    signers.json      each signer's registration (§7) and its did:key DID document
    sessions.json     per session asked for: the versions exported, and the events that bound
                      them (below)

Events are those at positions up to the checkpoint's size (later ones cannot be proven yet).
A partial export (``sessions`` and/or a time range) adds, for each session, the event just
before the range and the one just after it (when they exist): the verifier sees from their
versions, links and times that nothing of the session inside the range is missing. Nothing of
other sessions is exported; their events appear only as hashes inside the proofs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from blake3 import blake3
from l2_session.infrastructure.identity import NodeIdentity, public_bytes_from_did_key
from l2_session.infrastructure.ledger.application import SessionLedger
from l2_session.infrastructure.ledger.chain import session_key
from l2_session.infrastructure.ledger.errors import LedgerError
from l2_session.infrastructure.ledger.format import lp
from l2_session.infrastructure.ledger.merkle import audit_path, leaf_hash, levels
from l2_session.infrastructure.ledger.note import Signer

BUNDLE_FORMAT = "l2-session-bundle"
BUNDLE_VERSION = 2  # 2: a whole export carries no proofs.jsonl
FILES = (
    "checkpoint.txt", "events.jsonl", "proofs.jsonl", "signers.json", "sessions.json",
)  # fmt: skip
HEADS_FILE = "heads.txt"  # optional: the session heads a node signs (partial exports)
PROOF_BATCH = 500  # inclusion proofs read per statement
COLUMNS = (
    "position, session_id, version, topic, timestamp, payload, prev_session_hash, "
    "prev_global_hash, event_hash, signer, signature"
)


class ExportError(LedgerError):
    """What was asked cannot be exported (no checkpoint to prove it against, an unknown
    session, an empty selection, a bundle that already exists)."""


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    tree_size: int
    events: int  # exported, boundary events included
    sessions: int  # sessions with events in the bundle
    left_out: int  # events of the selection after the checkpoint (not provable yet)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def event_json(row: Sequence[Any], role: str) -> dict[str, Any]:
    """One exported event: the columns its hash covers, its hash and signature (§3)."""
    (position, session_id, version, topic, timestamp, payload, prev_session, prev_global,
     event_hash, signer, signature) = row  # fmt: skip
    return {
        "position": int(position),
        "session_id": str(session_id),
        "version": int(version),
        "topic": str(topic),
        "timestamp": int(timestamp),
        "payload": _b64(bytes(payload)),
        "prev_session_hash": _b64(bytes(prev_session)),
        "prev_global_hash": _b64(bytes(prev_global)),
        "event_hash": _b64(bytes(event_hash)),
        "signer": str(signer),
        "signature": _b64(bytes(signature)),
        "role": role,
    }


def did_document(did: str) -> dict[str, Any]:
    """The did:key method's DID document of an Ed25519 did:key (one Multikey method)."""
    public_bytes_from_did_key(did)  # refuses what is not an Ed25519 did:key
    fragment = did.removeprefix("did:key:")
    method = f"{did}#{fragment}"
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "verificationMethod": [
            {"id": method, "type": "Multikey", "controller": did, "publicKeyMultibase": fragment}
        ],
        "authentication": [method],
        "assertionMethod": [method],
    }


class _Rows:
    """The export's reads, in the ledger's own SQL dialect."""

    def __init__(self, ledger: SessionLedger) -> None:
        recorder = ledger.ledger_recorder
        self.read = recorder.reading
        self.m, self.events = recorder.tree_sql.mark, recorder.tree_sql.events

    def sessions_in(self, upto: int, since: int | None, until: int | None) -> list[str]:
        """The sessions with an event at or before ``upto`` appended in the time range (their
        events are read with ``session``, once)."""
        where, params = [f"position <= {self.m}"], [upto]
        if since is not None:
            where.append(f"timestamp >= {self.m}")
            params.append(since)
        if until is not None:
            where.append(f"timestamp <= {self.m}")
            params.append(until)
        with self.read() as cur:
            cur.execute(
                f"SELECT DISTINCT session_id FROM {self.events} WHERE {' AND '.join(where)}",
                params,
            )
            return sorted(str(row[0]) for row in cur.fetchall())

    def pages(self, upto: int, page: int) -> Iterator[list[tuple[Sequence[Any], str]]]:
        """Every event up to position ``upto``, ``page`` positions a read."""
        for start in range(1, upto + 1, page):
            with self.read() as cur:
                cur.execute(
                    f"SELECT {COLUMNS} FROM {self.events} WHERE position >= {self.m} "
                    f"AND position <= {self.m} ORDER BY position",
                    (start, min(start + page - 1, upto)),
                )
                yield [(row, "selected") for row in cur.fetchall()]

    def session(self, sid: str, upto: int) -> list[Sequence[Any]]:
        with self.read() as cur:
            cur.execute(
                f"SELECT {COLUMNS} FROM {self.events} WHERE session_id = {self.m} "
                f"AND position <= {self.m} ORDER BY version",
                (sid, upto),
            )
            return list(cur.fetchall())

    def heads(self, upto: int) -> list[tuple[str, int, int, bytes]]:
        """(session id, version, position, event hash) of every session's newest event at or
        before position ``upto``, in session id order."""
        with self.read() as cur:
            cur.execute(
                f"SELECT e.session_id, e.version, e.position, e.event_hash FROM {self.events} e "
                f"JOIN (SELECT session_id, MAX(version) AS v FROM {self.events} "
                f"WHERE position <= {self.m} GROUP BY session_id) h "
                "ON e.session_id = h.session_id AND e.version = h.v ORDER BY e.session_id",
                (upto,),
            )
            return [(str(s), int(v), int(p), bytes(h)) for s, v, p, h in cur.fetchall()]

    def count_after(self, upto: int) -> int:
        with self.read() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {self.events} WHERE position > {self.m}", (upto,))
            return int(cur.fetchone()[0])


def export_bundle(
    location: str | Path | SessionLedger,
    out: str | Path,
    *,
    sessions: Iterable[UUID | str] = (),
    since_us: int | None = None,
    until_us: int | None = None,
    identity: NodeIdentity | None = None,
    proofs: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Write a bundle of the ledger at ``location`` to the new directory ``out``: every event
    up to the newest stored checkpoint, or those of ``sessions`` and/or appended between
    ``since_us`` and ``until_us`` (µs, inclusive) with their boundary events. With the node's
    ``identity``, a partial bundle also carries the session heads it signs (``heads.txt``),
    which prove where a live session ends. A partial bundle carries each event's inclusion
    proof; a whole one only with ``proofs`` (its leaves are the whole tree, which the verifier
    recomputes: proofs are for handing single events on, and double the bundle)."""
    target = Path(out)
    if target.exists() or target.is_symlink():
        raise ExportError(f"{target} already exists; the export writes a new bundle there")
    if since_us is not None and until_us is not None and until_us < since_us:
        raise ExportError("the time range ends before it begins (--until before --from)")
    ledger = (
        location if isinstance(location, SessionLedger) else SessionLedger(location, create=False)
    )
    try:
        return _export(
            ledger, target, list(sessions), since_us, until_us, identity, proofs, progress
        )
    finally:
        if ledger is not location:
            ledger.close()


def _export(
    ledger: SessionLedger,
    target: Path,
    chosen: list[UUID | str],
    since_us: int | None,
    until_us: int | None,
    identity: NodeIdentity | None,
    proofs: bool,
    progress: Callable[[int, int], None] | None,
) -> ExportSummary:
    signed = [cp for _, cp in ledger.stored_checkpoints(newest=16) if cp.root is not None]
    if not signed:
        raise ExportError(
            "the ledger stores no checkpoint of format 2 (with a Merkle root) to prove the "
            "events against: a node signs one on its witnessing cadence and when it stops, "
            "or with `l2-session node`'s 'checkpoint' op"
        )
    checkpoint = signed[-1]
    size = checkpoint.size
    registered = {did for did, _, _ in ledger.signer_registrations()}
    if identity is not None and identity.did not in registered:
        raise ExportError(
            f"{identity.did} is not a registered signer of this ledger: the session heads must "
            "be signed by a node that writes it (its key store)"
        )
    reads = _Rows(ledger)
    partial = bool(chosen) or since_us is not None or until_us is not None
    bounds: list[dict[str, Any]] = []
    if partial:
        rows = _partial(reads, size, chosen, since_us, until_us, bounds)
        if not any(role == "selected" for _, role in rows):
            raise ExportError("nothing to export: no event of the ledger is in the selection")
        batches: Iterable[list[tuple[Sequence[Any], str]]] = [
            rows[i : i + PROOF_BATCH] for i in range(0, len(rows), PROOF_BATCH)
        ]
        total = len(rows)
    else:  # every event, read and written a page at a time: memory stays bounded
        batches, total = reads.pages(size, PROOF_BATCH), size
    heads = (
        _signed_heads(reads, ledger.ledger_id, checkpoint, identity, bounds)
        if (partial and identity is not None)
        else None
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if heads is not None:
            (staging / HEADS_FILE).write_text(heads, encoding="utf-8")
        events, sessions = _write(
            ledger, staging, batches, total, checkpoint, bounds,
            {"partial": partial, "sessions": [str(UUID(str(s))) for s in chosen] or None,
             "from_us": since_us, "until_us": until_us},
            {identity.did} if heads is not None and identity is not None else set(),
            partial or proofs, progress,
        )  # fmt: skip
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportSummary(target, size, events, sessions, reads.count_after(size))


def _partial(
    reads: _Rows,
    size: int,
    chosen: list[UUID | str],
    since_us: int | None,
    until_us: int | None,
    bounds: list[dict[str, Any]],
) -> list[tuple[Sequence[Any], str]]:
    """The events of a partial export, in position order, with each session's boundaries
    (``_in_range``); what sessions.json says of each session is added to ``bounds``."""
    if chosen:
        ids = []
        for raw in chosen:
            try:
                ids.append(session_key(raw if isinstance(raw, UUID) else UUID(str(raw))))
            except ValueError:
                raise ExportError(f"{raw!r} is not a session id (a UUID)") from None
    else:  # a time range over every session: those with an event in it
        ids = reads.sessions_in(size, since_us, until_us)
    rows: list[tuple[Sequence[Any], str]] = []
    for sid in ids:
        history = reads.session(sid, size)
        if not history:
            raise ExportError(
                f"the ledger holds no session {sid} at or before its checkpoint (position {size})"
            )
        picked, bound = _in_range(history, since_us, until_us)
        rows += picked
        bounds.append(bound)
    rows.sort(key=lambda item: int(item[0][0]))
    return rows


def heads_leaf(session_id: str, version: int, position: int, event_hash: bytes) -> bytes:
    """One leaf of the session-heads tree (docs/forensic-export.md)."""
    return lp(session_id.encode()) + struct.pack(">QQ", version, position) + event_hash


def _signed_heads(
    reads: _Rows,
    ledger_id: str,
    checkpoint: Any,
    identity: NodeIdentity,
    bounds: list[dict[str, Any]],
) -> str:
    """Sign the heads of every session at the checkpoint's size, as a C2SP signed note over
    the root of their Merkle tree; give each exported session in ``bounds`` its head and the
    head's inclusion proof in that tree."""
    heads = reads.heads(checkpoint.size)
    tree = levels([leaf_hash(heads_leaf(*h)) for h in heads])
    index = {h[0]: i for i, h in enumerate(heads)}
    for bound in bounds:
        i = index[bound["session_id"]]
        _, version, position, event_hash = heads[i]
        bound["head"] = {
            "version": version, "position": position, "event_hash": _b64(event_hash),
            "index": i, "hashes": [_b64(node) for node in audit_path(tree, i)],
        }  # fmt: skip
    root = tree[-1][0] if heads else blake3(b"").digest()
    body = (
        f"l2-session/ledger/{ledger_id}/heads\n{checkpoint.size}\n{_b64(checkpoint.root)}\n"
        f"{len(heads)}\n{_b64(root)}\n"
    )
    return Signer(identity.did, identity.private_key).sign(body)


def _in_range(
    history: list[Sequence[Any]], since_us: int | None, until_us: int | None
) -> tuple[list[tuple[Sequence[Any], str]], dict[str, Any]]:
    """A session's events in the time range, with the event just before it and the one just
    after it (by version) as boundaries; and what the bundle's sessions.json says of it."""
    inside = [
        i
        for i, row in enumerate(history)
        if (since_us is None or int(row[4]) >= since_us)
        and (until_us is None or int(row[4]) <= until_us)
    ]
    sid = str(history[0][1])
    bound: dict[str, Any] = {"session_id": sid, "versions": None, "before": None, "after": None}
    picked: list[tuple[Sequence[Any], str]] = []
    if inside:
        first, last = inside[0], inside[-1]
        bound["versions"] = [int(history[first][2]), int(history[last][2])]
        picked = [(history[i], "selected") for i in range(first, last + 1)]
        if first > 0:
            picked.insert(0, (history[first - 1], "before"))
            bound["before"] = int(history[first - 1][2])
        if last + 1 < len(history):
            picked.append((history[last + 1], "after"))
            bound["after"] = int(history[last + 1][2])
    else:  # none inside: the events on either side of the range show that
        before = [
            i for i, row in enumerate(history) if since_us is not None and int(row[4]) < since_us
        ]
        after = [
            i for i, row in enumerate(history) if until_us is not None and int(row[4]) > until_us
        ]
        for index, role in ((before[-1] if before else None, "before"),
                            (after[0] if after else None, "after")):  # fmt: skip
            if index is not None:
                picked.append((history[index], role))
                bound[role] = int(history[index][2])
    return picked, bound


def _write(
    ledger: SessionLedger,
    folder: Path,
    batches: Iterable[list[tuple[Sequence[Any], str]]],
    total: int,
    checkpoint: Any,
    bounds: list[dict[str, Any]],
    selection: dict[str, Any],
    also_signers: set[str],
    with_proofs: bool,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    """Write the bundle's files into ``folder``; (events written, sessions among them)."""
    size = checkpoint.size
    (folder / "checkpoint.txt").write_text(checkpoint.to_text(), encoding="utf-8")
    signers_seen, sessions_seen, written = {checkpoint.signer, *also_signers}, set(), 0
    with contextlib.ExitStack() as files:
        events = files.enter_context((folder / "events.jsonl").open("w", encoding="utf-8"))
        proofs = (  # a whole export's leaves are its whole tree: proofs only if asked
            files.enter_context((folder / "proofs.jsonl").open("w", encoding="utf-8"))
            if with_proofs
            else None
        )
        for batch in batches:
            for row, role in batch:
                events.write(json.dumps(event_json(row, role), sort_keys=True) + "\n")
                signers_seen.add(str(row[9]))
                sessions_seen.add(str(row[1]))
            if proofs is not None:
                for proof in ledger.inclusion_proofs([int(row[0]) for row, _ in batch], size):
                    hashes = [_b64(h) for h in proof.hashes]
                    proofs.write(json.dumps({"position": proof.position, "hashes": hashes},
                                            sort_keys=True) + "\n")  # fmt: skip
            written += len(batch)
            if progress is not None:
                progress(written, total)
    signers = [
        {
            "did": did,
            "registered_at": registered_at,
            "registration_signature": _b64(signature),
            "did_document": did_document(did),
        }
        for did, registered_at, signature in ledger.signer_registrations()
        if did in signers_seen
    ]
    _dump(folder / "signers.json", signers)
    _dump(folder / "sessions.json", sorted(bounds, key=lambda b: b["session_id"]))
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "ledger_id": ledger.ledger_id,
        "tree_size": size,
        "selection": selection,
        "events": written,
        "files": {
            name: _file_entry(folder / name)
            for name in (*FILES, HEADS_FILE)
            if (folder / name).exists()
        },
    }
    _dump(folder / "manifest.json", manifest)
    return written, len(sessions_seen)


def _file_entry(path: Path) -> dict[str, Any]:
    hasher = blake3()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return {"blake3": hasher.hexdigest(), "bytes": path.stat().st_size}


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
