#!/usr/bin/env python3
"""Verify an l2-session forensic bundle without l2-session: this file imports only the
standard library, ``cryptography`` and ``blake3``, and follows docs/forensic-export.md and
docs/ledger-format.md (§3 events, §5 checkpoints, §7 signers, §13 the Merkle tree).

    python3 verify_bundle.py BUNDLE [--trust DID ...] [--json]

Exit status: 0 the bundle is intact; 1 it is not (each problem is listed); 2 it cannot be read
(a missing file, a file that is not what it should be) or the command line is wrong.

What is checked: every file against the manifest's BLAKE3 and size; the checkpoint's note
signature, by a signer of the bundle (and one of ``--trust``, if given); every signer's
registration signature and DID document; every event's hash, recomputed from its columns, and
its signature; that the events lead to the checkpoint's Merkle root (a whole export: the tree
recomputed from every leaf; a partial one: each event's inclusion proof); for each
session, that its events are consecutive versions linked by ``prev_session_hash``, begin at
version 1 or at a boundary event before the range, and end at the range's boundary event, at
the session's final event, or — said plainly — at an end the bundle cannot prove; for a whole
export, that it holds every position of the tree, linked by ``prev_global_hash`` from genesis.
"""

from __future__ import annotations

import argparse
import binascii
import concurrent.futures
import contextlib
import functools
import hashlib
import itertools
import json
import os
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blake3 import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FILES = ("checkpoint.txt", "events.jsonl", "signers.json", "sessions.json")
PROOFS = "proofs.jsonl"  # a partial export's (and any version 1 bundle's) inclusion proofs
VERSIONS = (1, 2)  # version 2: a whole export carries no proofs (its leaves make the tree)
MAX_SMALL_FILE = 64 * 1024 * 1024  # manifest, checkpoint, signers, sessions: read whole
MAX_LINE = 1024 * 1024  # one event of events.jsonl (a payload is at most 64 KiB, §9)
EVENT_DOMAIN = b"l2-session/ledger/event/v1\n"
GENESIS_DOMAIN = b"l2-session/ledger/genesis/v1\n"
SIGNER_V1 = b"l2-session/ledger/signer/v1\n"
SIGNER_V2 = b"l2-session/ledger/signer/v2\n"
ORIGIN = "l2-session/ledger/"
FINAL_STATE = "[*]"  # a session's last possible state: nothing can follow it
ZERO = bytes(32)
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class Unreadable(Exception):
    """The bundle cannot be read as one (exit 2)."""


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    events: int = 0
    sessions: dict[str, str] = field(default_factory=dict)  # id -> how its end is known
    anchored: bool = False
    ledger_id: str = ""
    tree_size: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "ledger_id": self.ledger_id, "tree_size": self.tree_size,
            "events": self.events, "sessions": self.sessions, "anchored": self.anchored,
            "problems": self.problems, "notes": self.notes,
        }  # fmt: skip


# -- formats ---------------------------------------------------------------------------------
def lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise Unreadable(f"{what} is not base64 text")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise Unreadable(f"{what} is not standard base64") from None


def did_key_public(did: str) -> bytes:
    """The Ed25519 public key of a did:key (multicodec 0xed 0x01, base58btc)."""
    if not did.startswith("did:key:z"):
        raise ValueError(f"{did!r} is not a base58btc did:key")
    number = 0
    for char in did[len("did:key:z") :]:
        digit = B58.find(char)
        if digit < 0:
            raise ValueError(f"{did!r} is not base58btc")
        number = number * 58 + digit
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")  # 0xed first: no zero bytes
    if len(raw) != 34 or raw[:2] != b"\xed\x01":
        raise ValueError(f"{did!r} is not an Ed25519 did:key")
    return raw[2:]


@functools.lru_cache(maxsize=64)
def _key(public: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public)


def signature_ok(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        _key(public).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


_QI, _qI, _I = struct.Struct(">QI").pack, struct.Struct(">qI").pack, struct.Struct(">I").pack
a2b = binascii.a2b_base64


def root_from_inclusion(
    index: int,
    size: int,
    leaf: bytes,
    proof: list[str],
    path: dict[int, Climbed] | None = None,
) -> bytes:
    """RFC 9162 §2.1.3.2 with BLAKE3, the proof's hashes in base64; ``ValueError`` for a proof
    of the wrong length or not base64. ``path`` keeps, per level, the node the last proof
    climbed through (proofs checked in position order, against one tree size): a proof that
    reaches that node with the same value and the same remaining hashes leads where that one
    did, without hashing the rest again. Neighbouring events share all but their lowest
    nodes, so a run of proofs in order hashes each node of the tree about once."""
    fn, sn, level, r = index, size - 1, 0, blake3(b"\x00" + leaf).digest()
    walked: list[tuple[int, int, bytes, int]] = []
    for i, text in enumerate(proof):
        if sn == 0:
            raise ValueError("too many hashes")
        try:
            p = a2b(text, strict_mode=True)
        except (TypeError, ValueError):
            raise Unreadable("a proof hash is not standard base64") from None
        if fn & 1 or fn == sn:
            r = blake3(b"\x01" + p + r).digest()
            while not fn & 1 and fn:
                fn, sn, level = fn >> 1, sn >> 1, level + 1
        else:
            r = blake3(b"\x01" + r + p).digest()
        fn, sn, level = fn >> 1, sn >> 1, level + 1
        if path is not None:
            known = path.get(level)
            if (
                known is not None and known[0] == fn and known[1] == r
                and known[2][known[3] :] == proof[i + 1 :]
            ):  # fmt: skip
                r = known[4]
                break
            walked.append((level, fn, r, i + 1))
    else:
        if sn != 0:
            raise ValueError("too few hashes")
    if path is not None:
        for at, node, value, rest in walked:
            path[at] = (node, value, proof, rest, r)
    return r


Climbed = tuple[int, bytes, list[str], int, bytes]
"""A node a proof climbed through: its index in its level, its value, the proof, where the
proof's remaining hashes start, and the root the proof led to."""


@dataclass(frozen=True)
class Checkpoint:
    ledger_id: str
    size: int
    root: bytes
    head: bytes
    body: bytes
    signatures: list[tuple[str, bytes]]  # (key name, key id || signature)


def parse_checkpoint(text: str) -> Checkpoint:
    """docs/ledger-format.md §5 (format 2): five body lines, a blank line, signature lines."""
    body, sep, rest = text.partition("\n\n")
    lines = body.split("\n")
    if not sep or len(lines) != 5 or not lines[0].startswith(ORIGIN):
        raise Unreadable("checkpoint.txt is not a format-2 checkpoint (five lines, blank, sigs)")
    if not (lines[1].isdigit() and lines[3].startswith("head ") and lines[4].startswith("time ")):
        raise Unreadable("checkpoint.txt's size, head or time line is malformed")
    signatures = []
    for line in rest.split("\n"):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014":
            raise Unreadable(f"checkpoint.txt has a malformed signature line {line[:60]!r}")
        signatures.append((parts[1], b64(parts[2], "a checkpoint signature")))
    return Checkpoint(
        lines[0][len(ORIGIN) :], int(lines[1]), b64(lines[2], "the checkpoint's root"),
        b64(lines[3][5:], "the checkpoint's head"), (body + "\n").encode(), signatures,
    )  # fmt: skip


# -- reading ---------------------------------------------------------------------------------
def read_small(folder: Path, name: str) -> bytes:
    path = folder / name
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SMALL_FILE + 1)
    except OSError as e:
        raise Unreadable(f"{path}: {e.strerror}") from e
    if len(data) > MAX_SMALL_FILE:
        raise Unreadable(f"{path} is over {MAX_SMALL_FILE} bytes")
    return data


def read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads(read_small(folder, name))
    except ValueError as e:
        raise Unreadable(f"{folder / name} is not JSON ({e})") from e


def file_digest(path: Path, stop: threading.Event | None = None) -> tuple[str, int]:
    """(BLAKE3 hex digest, size) of the file; read in 1 MiB chunks, and given up once
    ``stop`` is set (the checks beside it failed: nobody will ask for the digest)."""
    hasher, size = blake3(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            if stop is not None and stop.is_set():
                break
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


# -- checks ----------------------------------------------------------------------------------
def verify_bundle(
    folder: Path, trusted: list[str] | None = None, workers: int | None = None
) -> Report:
    """Check the bundle in ``folder`` (``workers`` processes; default one per core)."""
    report = Report()
    if not folder.is_dir():
        raise Unreadable(f"{folder} is not a bundle (a directory)")
    manifest = read_json(folder, "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != "l2-session-bundle":
        raise Unreadable(f"{folder / 'manifest.json'} is not an l2-session bundle manifest")
    version = manifest.get("version")
    if version not in VERSIONS:
        raise Unreadable(f"bundle version {version!r}: this verifier reads 1 and 2")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise Unreadable("the manifest lists no files")
    selection = manifest.get("selection")
    if not isinstance(selection, dict):
        raise Unreadable("the manifest's selection is not an object")
    whole = not selection.get("partial", True)
    proofs = version == 1 or not whole or PROOFS in listed
    hashed: dict[str, dict[str, Any]] = {}
    for name in (*FILES, PROOFS) if proofs else FILES:
        entry, path = listed.get(name), folder / name
        if not isinstance(entry, dict):
            report.problems.append(f"missing_file: the manifest does not list {name}")
        elif not path.is_file():
            report.problems.append(f"missing_file: {name} is listed but not in the bundle")
        else:
            hashed[name] = entry
    if report.problems:
        return report
    # The files' hashes are computed beside the checks below (which do not rely on them):
    # BLAKE3 and reading release the GIL, and the workers need not wait for them. Checks that
    # fail (an unreadable bundle) stop the hashing, so that their error is not held up by it.
    stop = threading.Event()
    hasher = concurrent.futures.ThreadPoolExecutor(1)
    try:
        digests = {name: hasher.submit(file_digest, folder / name, stop) for name in hashed}
        _contents(folder, report, manifest, listed, whole, proofs, trusted, workers)
        changed = [
            f"file_changed: {name} is not the file the manifest hashes"
            for name, entry in hashed.items()
            if digests[name].result() != (entry.get("blake3"), entry.get("bytes"))
        ]
    except BaseException:
        stop.set()
        raise
    finally:
        hasher.shutdown(wait=True, cancel_futures=True)
    report.problems[:0] = changed
    return report


def _contents(
    folder: Path,
    report: Report,
    manifest: dict[str, Any],
    listed: dict[str, Any],
    whole: bool,
    proofs: bool,
    trusted: list[str] | None,
    workers: int | None,
) -> None:
    """Steps 2 to 5 of docs/forensic-export.md: signers, checkpoint, heads, events, sessions."""
    report.ledger_id = str(manifest.get("ledger_id", ""))
    size = manifest.get("tree_size")
    if not isinstance(size, int) or size < 1:
        raise Unreadable("the manifest's tree_size is not a positive whole number")
    report.tree_size = size

    signers = _signers(folder, report)
    checkpoint = parse_checkpoint(read_small(folder, "checkpoint.txt").decode("utf-8", "replace"))
    _check_checkpoint(checkpoint, report, signers, trusted)
    heads = _heads(folder, report, signers, checkpoint, trusted) if "heads.txt" in listed else None
    _events(
        folder, report, signers, checkpoint, manifest, whole, proofs,
        workers or os.cpu_count() or 1, heads,
    )  # fmt: skip


def _signers(folder: Path, report: Report) -> dict[str, bytes]:
    """The signers whose registration and DID document check: did -> public key."""
    found: dict[str, bytes] = {}
    entries = read_json(folder, "signers.json")
    if not isinstance(entries, list):
        raise Unreadable("signers.json is not a list")
    for entry in entries:
        did = str(entry.get("did", ""))
        try:
            public = did_key_public(did)
        except ValueError as e:
            report.problems.append(f"bad_signer: {e}")
            continue
        document = entry.get("did_document") or {}
        methods = document.get("verificationMethod") or [{}]
        if document.get("id") != did or methods[0].get("publicKeyMultibase") != did[8:]:
            report.problems.append(f"bad_signer: {did}'s DID document is not its own")
            continue
        at = entry.get("registered_at")
        signature = b64(entry.get("registration_signature"), f"{did}'s registration")
        ledger = lp(report.ledger_id.encode()) + lp(did.encode())
        v2 = isinstance(at, int) and signature_ok(
            public, signature, SIGNER_V2 + ledger + struct.pack(">q", at)
        )
        if not (v2 or signature_ok(public, signature, SIGNER_V1 + ledger)):
            report.problems.append(f"bad_signer: {did}'s registration signature does not verify")
            continue
        found[did] = public
    return found


def _check_checkpoint(
    cp: Checkpoint, report: Report, signers: dict[str, bytes], trusted: list[str] | None
) -> None:
    if cp.ledger_id != report.ledger_id or cp.size != report.tree_size:
        report.problems.append(
            "checkpoint_mismatch: the checkpoint is of another ledger or tree size than the "
            "manifest's"
        )
    name, signed = cp.signatures[0] if cp.signatures else ("", b"")
    public = signers.get(name)
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + (public or b"")).digest()[:4]
    if public is None:
        report.problems.append(f"checkpoint_unsigned: its signer {name or '(none)'} is not a "
                               "registered signer of the bundle")  # fmt: skip
    elif signed[:4] != key_id or not signature_ok(public, signed[4:], cp.body):
        report.problems.append("checkpoint_signature: the checkpoint's signature does not verify")
    if trusted is not None:
        report.anchored = name in trusted
        if not report.anchored:
            report.problems.append(f"untrusted: the checkpoint is signed by {name}, not --trust")
    else:
        report.notes.append(
            "signers UNANCHORED: the checkpoint's signer is taken from the bundle itself; pass "
            "--trust DID (the node's key, learned elsewhere) to anchor it"
        )


CHUNK = 20_000  # at most the events a worker checks at a time
STEP = 1_000  # parts begin at a multiple of STEP lines
LINE_BYTES = 800  # about an event line's length: CHUNK lines of a file cut by bytes


Part = tuple[int, int, int, int]
"""Where a worker reads: (offset in events.jsonl, the offset its lines start before or -1,
offset in proofs.jsonl or -1 past its end or without proofs, lines or -1)."""


def _chunks(folder: Path, report: Report, workers: int, with_proofs: bool) -> list[Part]:
    """The parts of the files the workers check: of at most about CHUNK lines, as many as a
    multiple of ``workers``, so that they finish together. Without proofs a part is a range
    of bytes of events.jsonl (its lines are those that start in it: nothing is read to cut
    them); with proofs, the same lines of both files, found by a pass over them (parts begin
    at a multiple of STEP lines)."""
    if not with_proofs:
        total = (folder / "events.jsonl").stat().st_size
        n = max(1, workers * -(-total // (workers * CHUNK * LINE_BYTES)))
        ends = [total * k // n for k in range(n + 1)]
        return [(a, b, -1, -1) for a, b in itertools.pairwise(ends)]
    events = _line_starts(folder / "events.jsonl", STEP)
    proofs = _line_starts(folder / PROOFS, STEP)
    if events[-1] != proofs[-1]:
        report.problems.append(
            f"bad_proof: proofs.jsonl holds {proofs[-1]} proofs for {events[-1]} events"
        )
    total, steps = events[-1], len(events) - 1
    n = min(steps, workers * -(-total // (workers * CHUNK)))
    ends = [steps * k // n for k in range(n + 1)]
    return [
        (events[a], -1, proofs[a] if a < len(proofs) - 1 else -1, min(b * STEP, total) - a * STEP)
        for a, b in itertools.pairwise(ends)
    ]


def _line_starts(path: Path, every: int, block_size: int = 1 << 20) -> list[int]:
    """The offsets of lines 0, every, 2 * every, ... of the file, then its line count (a
    last line without a newline counts). Read in blocks; a line's length is checked where it
    is read (``_line``)."""
    found: list[int] = []
    newlines, offset, target, last = 0, 0, every, b"\n"
    with path.open("rb") as f:
        while block := f.read(block_size):
            if offset == 0:
                found.append(0)
            n, at, seen = block.count(b"\n"), -1, newlines
            while target <= newlines + n:  # line `target` starts after the target-th newline
                while seen < target:
                    at, seen = block.find(b"\n", at + 1), seen + 1
                found.append(offset + at + 1)
                target += every
            newlines, offset, last = newlines + n, offset + len(block), block[-1:]
    if found and found[-1] == offset:  # the start of a line the file does not have
        found.pop()
    found.append(newlines + (last != b"\n"))
    return found


Record = tuple[int, str, int, int, Any, bytes, bytes, bytes, bool]
"""(position, session id, version, timestamp, role, prev_session_hash, prev_global_hash,
event_hash, final): what the checks across events need of one."""


Subtree = tuple[int, int, bytes]
"""A perfect subtree of the Merkle tree: (level, index in its level, hash)."""


def push_subtree(stack: list[Subtree], level: int, index: int, value: bytes) -> None:
    """Put the subtree right of those on ``stack`` (subtrees of consecutive leaves, left to
    right), joining it with its left sibling while that is the one before it: the stack of
    leaves 0..n-1 becomes the perfect parts of the tree of n, largest first (RFC 9162 §2.1.1).
    """
    while index & 1 and stack and stack[-1][0] == level and stack[-1][1] == index - 1:
        value = blake3(b"\x01" + stack.pop()[2] + value).digest()
        index, level = index >> 1, level + 1
    stack.append((level, index, value))


def root_of_parts(parts: list[Subtree]) -> bytes:
    """RFC 9162's root of the tree whose perfect parts (largest first) are ``parts``: the
    largest part beside the tree of the rest."""
    root = parts[-1][2]
    for _, _, value in reversed(parts[:-1]):
        root = blake3(b"\x01" + value + root).digest()
    return root


class Spans:
    """The checks between events, in position order: order, a whole export's global chain
    and Merkle tree, each session's chain, the range. A worker keeps one over its part (from
    its first event on); the parent joins the parts with ``join``.

    In a whole export, ``tree`` holds the perfect subtrees of the leaves seen (consecutive
    ones, from ``tree_start`` to ``tree_end`` - 1: ``push_subtree``), None once a leaf was
    not the next one (what is missing is reported as such); the parent's, joined from every
    part's, is the tree of the whole export."""

    def __init__(self, whole: bool, since: int | None, until: int | None, genesis: bytes):
        self.whole, self.since, self.until, self.genesis = whole, since, until, genesis
        self.first: Record | None = None
        self.last: Record | None = None
        self.sessions: dict[str, list[Record]] = {}  # id -> [first record, last record]
        self.problems: list[str] = []
        self.count = 0
        self.tree: list[Subtree] | None = [] if whole else None
        self.tree_start: int | None = None
        self.tree_end = 0

    def add(self, r: Record) -> None:
        """The next event of a part."""
        tree = self.tree
        if tree is not None:
            index = r[0] - 1
            if self.tree_start is None:
                self.tree_start = self.tree_end = index
            if index != self.tree_end:
                self.tree = None
            else:
                push_subtree(tree, 0, index, blake3(b"\x00" + r[7]).digest())
                self.tree_end = index + 1
        if self.last is not None:
            self._follows(r, self.last)
        self.first = self.first or r
        self.last = r
        self.count += 1
        inside = (self.since is None or r[3] >= self.since) and (
            self.until is None or r[3] <= self.until
        )
        if (r[4] == "selected") != inside:
            where = "in" if inside else "out of"
            self.problems.append(
                f"range: session {r[1]} version {r[2]} is marked {r[4]} but is {where} the range"
            )
        self._session(r[1], r, r)

    def join(self, part: Spans) -> None:
        """The next part, checked where it meets what came before."""
        if part.first is None or part.last is None:
            return
        if self.tree is not None:
            if part.tree is None or (
                self.tree_start is not None and part.tree_start != self.tree_end
            ):  # a gap, or leaves out of order: reported as such
                self.tree = None
            else:
                if self.tree_start is None:
                    self.tree_start = part.tree_start
                for level, index, value in part.tree:
                    push_subtree(self.tree, level, index, value)
                self.tree_end = part.tree_end
        self._follows(part.first, self.last)
        for sid, (first, last) in part.sessions.items():
            self._session(sid, first, last)
        self.first = self.first or part.first
        self.last, self.count = part.last, self.count + part.count

    def _follows(self, r: Record, before: Record | None) -> None:
        last_position = before[0] if before is not None else 0
        if r[0] <= last_position:
            self.problems.append(f"order: position {r[0]} does not follow position {last_position}")
        if self.whole:
            if r[0] != last_position + 1:
                self.problems.append(
                    f"missing_event: a whole export lacks position {last_position + 1}"
                )
            if r[6] != (before[7] if before is not None else self.genesis):
                self.problems.append(f"global_chain_break: at position {r[0]}")

    def _session(self, sid: str, first: Record, last: Record) -> None:
        seen = self.sessions.get(sid)
        if seen is None:
            self.sessions[sid] = [first, last]
            return
        if first[2] != seen[1][2] + 1:
            self.problems.append(f"missing_event: session {sid} lacks version {seen[1][2] + 1}")
        elif first[5] != seen[1][7]:
            self.problems.append(f"session_chain_break: session {sid} version {first[2]}")
        seen[1] = last

    def root(self, size: int) -> bytes | None:
        """The root of the tree of a whole export's events, if they are leaves 0..size-1."""
        if not self.tree or self.tree_start != 0 or self.tree_end != size:
            return None
        return root_of_parts(self.tree)


def _check_chunk(
    folder: Path,
    signers: dict[str, bytes],
    cp: Checkpoint,
    with_proofs: bool,
    part: Part,
    spans: Spans,
) -> tuple[list[str], Spans]:
    """The checks of each event on its own (hash, signature, and its proof if the bundle has
    proofs) for ``part``, and those between its events (``spans``, a fresh one: what joins it
    to the other parts is the parent's)."""
    problems: list[str] = []
    path: dict[int, Climbed] = {}
    keys = {did: _key(public) for did, public in signers.items()}
    events_at, events_end, proofs_at, count = part
    with contextlib.ExitStack() as files:
        events = files.enter_context((folder / "events.jsonl").open("rb"))
        proofs = files.enter_context((folder / PROOFS).open("rb")) if with_proofs else None
        if proofs is not None and proofs_at >= 0:
            proofs.seek(proofs_at)
        for raw in _part_lines(events, events_at, events_end, count):
            proof = _line(proofs, PROOFS) if proofs is not None and proofs_at >= 0 else None
            try:
                position, version = int(raw["position"]), int(raw["version"])
                sid, topic, signer = str(raw["session_id"]), str(raw["topic"]), str(raw["signer"])
                timestamp, payload = int(raw["timestamp"]), a2b(raw["payload"], strict_mode=True)
                after_session = a2b(raw["prev_session_hash"], strict_mode=True)
                after_global = a2b(raw["prev_global_hash"], strict_mode=True)
                leaf = a2b(raw["event_hash"], strict_mode=True)
                signature = a2b(raw["signature"], strict_mode=True)
            except (KeyError, TypeError, ValueError) as err:
                raise _unreadable_event(raw, err) from err
            sid_b, name, who = sid.encode(), topic.encode(), signer.encode()
            if leaf != blake3(b"".join((  # the event hash, docs/ledger-format.md §3
                EVENT_DOMAIN, _QI(position, len(sid_b)), sid_b, _QI(version, len(name)), name,
                _qI(timestamp, len(payload)), payload, after_session, after_global,
                _I(len(who)), who,
            ))).digest():  # fmt: skip
                problems.append(f"hash_mismatch: position {position}: its columns do not hash "
                                "to its hash")  # fmt: skip
            key = keys.get(signer)
            if key is None:
                problems.append(f"unknown_signer: position {position} is signed by {signer}")
            else:
                try:
                    key.verify(signature, leaf)
                except (InvalidSignature, ValueError):
                    problems.append(f"bad_signature: position {position}")
            if not with_proofs:
                pass  # a whole export: its tree is recomputed from every leaf (Spans)
            elif not isinstance(proof, dict) or proof.get("position") != position:
                problems.append(
                    f"bad_proof: no inclusion proof of position {position} in its place"
                )
            elif not 1 <= position <= cp.size:
                problems.append(f"bad_proof: position {position} is not in the tree of {cp.size}")
            else:
                hashes = proof.get("hashes")
                try:
                    if not isinstance(hashes, list):
                        raise ValueError("its hashes are not a list")
                    if root_from_inclusion(position - 1, cp.size, leaf, hashes, path) != cp.root:
                        problems.append(f"bad_proof: position {position} does not lead to the "
                                        "checkpoint's root")  # fmt: skip
                except ValueError as err:
                    problems.append(f"bad_proof: position {position}: {err}")
            if position == cp.size and leaf != cp.head:
                problems.append("checkpoint_mismatch: the event at its size is not its head")
            spans.add((
                position, sid, version, timestamp, raw.get("role"), after_session, after_global,
                leaf, b'"[*]"' in payload and _final(payload),
            ))  # fmt: skip
    return problems, spans


def _part_lines(f: Any, start: int, end: int, count: int) -> Iterator[Any]:
    """The JSON values of a part's lines of events.jsonl: the ``count`` lines from offset
    ``start``; or, with ``end`` >= 0, the lines that start in [start, end) — a line that
    begins before ``start`` is the part's before."""
    if end < 0:
        f.seek(start)
        for _ in range(count):
            value = _line(f, "events.jsonl")
            if value is None:
                return
            yield value
        return
    if start:
        f.seek(start - 1)  # the end of the line before, or the newline just before start
        while (rest := f.readline(MAX_LINE)) and not rest.endswith(b"\n"):
            pass  # a line over MAX_LINE is refused by the part where it starts
    tell = f.tell
    while tell() < end and (value := _line(f, "events.jsonl")) is not None:
        yield value


def _unreadable_event(raw: Any, err: Exception) -> Unreadable:
    """What is wrong with an event line that did not read: the field, where it can say."""
    if isinstance(raw, dict):
        for name in ("payload", "prev_session_hash", "prev_global_hash", "event_hash", "signature"):
            try:
                b64(raw[name], name)
            except Unreadable as named:
                return named
            except KeyError:
                break
    return Unreadable(f"an event of events.jsonl lacks or mistypes a field ({err})")


_DECODER = json.JSONDecoder()


def _line(f: Any, name: str) -> Any:
    """The next line's JSON value (None at the end of the file)."""
    line = f.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise Unreadable(f"{name} holds a line over {MAX_LINE} bytes")
    try:
        text = line.decode("utf-8")
        value, end = _DECODER.raw_decode(text)  # decode() without its two whitespace scans
        if end != len(text) and text[end:].strip():
            raise ValueError(f"extra data after the value at column {end + 1}")
        return value
    except ValueError as e:  # UnicodeDecodeError is one
        try:
            return _DECODER.decode(line.decode("utf-8"))  # leading whitespace, or the error
        except ValueError:
            pass
        raise Unreadable(f"{name} holds a line that is not JSON ({e})") from e


def _events(
    folder: Path,
    report: Report,
    signers: dict[str, bytes],
    cp: Checkpoint,
    manifest: dict[str, Any],
    whole: bool,
    with_proofs: bool,
    workers: int,
    heads: tuple[int, bytes] | None,
) -> None:
    """Each event checked on its own by ``workers`` processes; then, in position order, what
    spans events: order, the global chain and the tree of a whole export, each session's
    chain and range."""
    parts = _chunks(folder, report, workers, with_proofs)
    selection = manifest["selection"]
    since, until = selection.get("from_us"), selection.get("until_us")
    genesis = blake3(GENESIS_DOMAIN + lp(report.ledger_id.encode())).digest()
    joined = Spans(whole, since, until, genesis)
    fresh = functools.partial(Spans, whole, since, until, genesis)
    if workers > 1 and len(parts) > 1:
        pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(parts)))
        check = functools.partial(_check_chunk, folder, signers, cp, with_proofs)
        results: Any = pool.map(check, parts, [fresh() for _ in parts])
    else:
        pool = None
        results = (_check_chunk(folder, signers, cp, with_proofs, p, fresh()) for p in parts)
    try:
        for problems, part in results:
            report.problems += problems + part.problems
            joined.join(part)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    report.problems += joined.problems
    report.events = joined.count
    last_position = joined.last[0] if joined.last is not None else 0
    if whole and last_position != cp.size:
        report.problems.append(f"missing_event: a whole export ends at {last_position}, "
                               f"not at the tree size {cp.size}")  # fmt: skip
    if whole:
        root = joined.root(cp.size)
        if root is None and report.ok:  # what is missing or out of order was reported above
            report.problems.append("bad_proof: the events are not the leaves of the tree")
        elif root is not None and root != cp.root:
            report.problems.append(
                "bad_proof: the tree of the events does not lead to the checkpoint's root"
            )
    sessions = joined.sessions
    _completeness(folder, report, sessions, manifest, whole, heads)


def _final(payload: bytes) -> bool:
    """Whether the event left its session in the final state (its payload's ``state``); only
    payloads holding ``"[*]"`` need parsing."""
    try:
        return bool(json.loads(payload).get("state") == FINAL_STATE)
    except (ValueError, AttributeError):
        return False


def _completeness(
    folder: Path,
    report: Report,
    sessions: dict[str, list[Any]],
    manifest: dict[str, Any],
    whole: bool,
    heads: tuple[int, bytes] | None,
) -> None:
    """Where each session's events begin and end, and whether that is proven."""
    declared = read_json(folder, "sessions.json")
    selection = manifest.get("selection") or {}
    since = selection.get("from_us")
    asked = selection.get("sessions")
    if asked is not None:
        missing = {str(s).replace("-", "") for s in asked} - set(sessions)
        for sid in sorted(missing):
            report.problems.append(f"missing_session: session {sid} was asked for and is absent")
    bounds = {str(b.get("session_id")): b for b in declared} if isinstance(declared, list) else {}
    whole = whole and not any(
        p.startswith(("missing_event", "order", "global_chain_break")) for p in report.problems
    )
    for sid, (first, last) in sessions.items():
        if first[2] == 1 and first[5] != ZERO:
            report.problems.append(f"session_chain_break: session {sid} version 1")
        if first[2] > 1 and not (first[4] == "before" and since is not None and first[3] < since):
            report.problems.append(f"missing_event: session {sid} starts at version "
                                   f"{first[2]} with nothing before the range")  # fmt: skip
        if whole:
            end = "proven: the bundle holds every event of the tree"
        elif last[4] == "after":
            end = "proven: the next event is after the range"
        elif last[8]:
            end = "proven: the session's last event is final (closed)"
        elif heads is not None and _head_is(report, sid, last, bounds.get(sid), heads):
            end = "proven: the signed session heads name its last event as its newest"
        else:
            end = "NOT PROVEN: nothing in the bundle shows the session had no later event"
        if sid in bounds and bounds[sid].get("after") is not None and last[4] != "after":
            report.problems.append(f"missing_event: session {sid}'s boundary event after the "
                                   "range is gone")  # fmt: skip
        report.sessions[sid] = end


def _heads(
    folder: Path,
    report: Report,
    signers: dict[str, bytes],
    cp: Checkpoint,
    trusted: list[str] | None,
) -> tuple[int, bytes] | None:
    """(session count, heads root) of ``heads.txt``, a note signed by a signer of the bundle
    over the checkpoint's tree (docs/forensic-export.md); None, with a problem, if it fails."""
    text = read_small(folder, "heads.txt").decode("utf-8", "replace")
    body, _, rest = text.partition("\n\n")
    lines = body.split("\n")
    origin = f"{ORIGIN}{report.ledger_id}/heads"
    if len(lines) != 5 or lines[0] != origin or not (lines[1].isdigit() and lines[3].isdigit()):
        report.problems.append("heads_mismatch: heads.txt is not the session heads of this ledger")
        return None
    if int(lines[1]) != cp.size or b64(lines[2], "the heads' tree root") != cp.root:
        report.problems.append("heads_mismatch: the session heads are of another tree than the "
                               "checkpoint's")  # fmt: skip
        return None
    parts = rest.split("\n")[0].split(" ")
    name = parts[1] if len(parts) == 3 else ""
    public = signers.get(name)
    signed = b64(parts[2], "the heads' signature") if len(parts) == 3 else b""
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + (public or b"")).digest()[:4]
    if (
        public is None
        or signed[:4] != key_id
        or not signature_ok(public, signed[4:], (body + "\n").encode())
    ):
        report.problems.append("heads_signature: the session heads' signature does not verify")
        return None
    if trusted is not None and name not in trusted:
        report.problems.append(f"untrusted: the session heads are signed by {name}, not --trust")
        return None
    return int(lines[3]), b64(lines[4], "the heads root")


def _head_is(report: Report, sid: str, last: Any, bound: Any, heads: tuple[int, bytes]) -> bool:
    """Whether the signed heads prove ``last`` (a record) the session's newest event; a head
    that proves a later one is a problem (events the bundle should hold are missing)."""
    head = bound.get("head") if isinstance(bound, dict) else None
    if not isinstance(head, dict):
        return False
    try:
        version, position = int(head["version"]), int(head["position"])
        event = b64(head["event_hash"], "a head's event hash")
        leaf = lp(sid.encode()) + struct.pack(">QQ", version, position) + event
        root = root_from_inclusion(int(head["index"]), heads[0], leaf, list(head["hashes"]))
    except (KeyError, TypeError, ValueError) as e:
        report.problems.append(f"bad_head: session {sid}'s head and its proof are unreadable ({e})")
        return False
    if root != heads[1]:
        report.problems.append(f"bad_head: session {sid}'s head is not in the signed heads")
        return False
    if (version, event) != (last[2], last[7]):
        report.problems.append(
            f"missing_event: session {sid}'s newest event is version {version}, the bundle "
            f"ends at version {last[2]}"
        )
        return False
    return True


def summary(report: Report) -> str:
    lines = [
        f"bundle verification: {'OK' if report.ok else f'{len(report.problems)} PROBLEM(S)'}",
        f"  ledger {report.ledger_id}, tree of {report.tree_size} events; "
        f"{report.events} events checked in {len(report.sessions)} session(s)",
    ]
    lines += [f"  session {sid}: end {end}" for sid, end in sorted(report.sessions.items())]
    lines += [f"  {note}" for note in report.notes]
    lines += [f"  - {p}" for p in report.problems[:100]]
    if len(report.problems) > 100:
        lines.append(f"  ... and {len(report.problems) - 100} more")
    return "\n".join(_printable(line) for line in lines)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify_bundle.py", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--trust", action="append", metavar="DID",
                        help="the did:key that must sign the checkpoint (repeat)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--workers", type=int, help="processes to use (default: one per core)")
    args = parser.parse_args(argv)
    try:
        report = verify_bundle(args.bundle, args.trust, args.workers)
    except Unreadable as e:
        print(f"verify_bundle.py: {_printable(str(e))}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(report.to_json(), indent=2) if args.json else summary(report))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: stop quietly, and let nothing flush to the pipe again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
