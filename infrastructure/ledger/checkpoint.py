"""Signed checkpoints of a ledger: format 2 is a C2SP tlog-checkpoint signed as a C2SP
signed note; format 1 (read and verified, no longer written) was modelled on them.

Format 2 (docs/ledger-format.md §5)::

    l2-session/ledger/<ledger id>          origin line
    <size>                                 number of events the checkpoint covers
    <base64 Merkle root>                   root of the tree of those events (tree.py)
    head <base64 event hash>               extension: the event hash at position <size>
    time <timestamp µs>                    extension: when it was signed
    <empty line>
    — <did:key> <base64(key id[4] || Ed25519 signature[64])>
    [— <witness> <base64(cosignature)>]    witnesses' cosignatures, if any

The key name is the signer's did:key; the key id is the first 4 bytes of SHA-256(did || 0x0A ||
0x01 || public key) and the signature covers the body (the five lines, each ending in a
newline): any C2SP note verifier given the key ``<did>+<key id hex>+<base64(0x01 || public
key)>`` checks it (``verifier_key``).

Format 1::

    l2-session ledger <ledger id>
    <position>
    <base64 head hash>
    time <timestamp µs>
    <empty line>
    — <did:key> <base64(key id[4] || Ed25519 signature[64])>

with the key id from BLAKE3 rather than SHA-256. A checkpoint seen earlier pins the ledger's
history: if the event at its position no longer has its head hash, or the tree of its size
another root, history was rewritten; if the ledger is shorter, its tail was truncated.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass

from blake3 import blake3
from l2_session.infrastructure.identity import (
    DIDError,
    NodeIdentity,
    public_bytes_from_did_key,
    verify_did_signature,
)
from l2_session.infrastructure.ledger.errors import LedgerError
from l2_session.infrastructure.ledger.format import HASH_SIZE, SIGNATURE_SIZE
from l2_session.infrastructure.ledger.note import key_id as note_key_id
from l2_session.infrastructure.ledger.tree_head import TreeHead, TreeHeadError

ORIGIN_PREFIX = "l2-session ledger "  # format 1
ORIGIN_V2_PREFIX = "l2-session/ledger/"  # format 2
SIGNATURE_DASH = "\u2014"


class CheckpointError(LedgerError):
    """A checkpoint text that cannot be parsed, or whose signature does not verify."""


def _shown(line: str) -> str:
    """A line of what was read, quoted and cut short, for an error message."""
    return repr(line if len(line) <= 60 else line[:57] + "...")


def key_id(did: str) -> bytes:
    """A format-1 checkpoint's key id (BLAKE3 where signed-note uses SHA-256)."""
    return blake3(did.encode() + b"\n\x01" + public_bytes_from_did_key(did)).digest()[:4]


def note_key_id_of(did: str) -> bytes:
    """A format-2 checkpoint's key id: C2SP signed-note's, with the did:key as the key name."""
    return note_key_id(did, public_bytes_from_did_key(did))


def verifier_key(did: str) -> str:
    """The C2SP verifier key of ``did``'s format-2 checkpoints: what another implementation's
    note verifier is given to check them."""
    public = public_bytes_from_did_key(did)
    encoded = base64.b64encode(b"\x01" + public).decode()
    return f"{did}+{note_key_id(did, public).hex()}+{encoded}"


@dataclass(frozen=True)
class Checkpoint:
    ledger_id: str
    position: int
    head_hash: bytes
    timestamp_us: int
    signer: str
    signature: bytes
    root: bytes | None = None  # the Merkle root of the first ``position`` events; None: format 1
    cosignatures: tuple[str, ...] = ()  # witnesses' signature lines after the signer's, as read

    @property
    def version(self) -> int:
        return 1 if self.root is None else 2

    @property
    def size(self) -> int:
        """The number of events covered (the tree size, in tlog-checkpoint's words)."""
        return self.position

    @property
    def origin(self) -> str:
        return (ORIGIN_PREFIX if self.root is None else ORIGIN_V2_PREFIX) + self.ledger_id

    def body(self) -> bytes:
        head = base64.b64encode(self.head_hash).decode()
        if self.root is None:
            return f"{self.origin}\n{self.position}\n{head}\ntime {self.timestamp_us}\n".encode()
        extensions = (f"head {head}", f"time {self.timestamp_us}")
        return TreeHead(self.origin, self.position, self.root, extensions).text().encode()

    def key_id(self) -> bytes:
        return key_id(self.signer) if self.root is None else note_key_id_of(self.signer)

    def to_text(self) -> str:
        sig = base64.b64encode(self.key_id() + self.signature).decode()
        lines = "".join(line + "\n" for line in self.cosignatures)
        return self.body().decode() + f"\n{SIGNATURE_DASH} {self.signer} {sig}\n" + lines

    @classmethod
    def sign(
        cls,
        identity: NodeIdentity,
        ledger_id: str,
        position: int,
        head_hash: bytes,
        timestamp_us: int,
        root: bytes | None = None,
    ) -> Checkpoint:
        """Sign a checkpoint: format 2 given the tree's ``root``, format 1 without."""
        unsigned = cls(ledger_id, position, head_hash, timestamp_us, identity.did, b"", root)
        return cls(
            ledger_id,
            position,
            head_hash,
            timestamp_us,
            identity.did,
            identity.sign(unsigned.body()),
            root,
        )

    def signature_valid(self) -> bool:
        return verify_did_signature(self.signer, self.signature, self.body())

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint in ``text``; ``CheckpointError`` says what is wrong with what was read."""
        if not text.strip():
            raise CheckpointError("the checkpoint is empty")
        first = text.split("\n", 1)[0]
        if not first.startswith((ORIGIN_PREFIX, ORIGIN_V2_PREFIX)):
            raise CheckpointError(
                f"not a checkpoint: its first line {_shown(first)} is not an origin line "
                f"'{ORIGIN_V2_PREFIX}<ledger id>' (or '{ORIGIN_PREFIX}<ledger id>', format 1)"
            )
        if "\r" in text:
            raise CheckpointError(
                "the checkpoint's lines end in CR LF; its lines end in LF alone (convert the "
                "file's line ends, e.g. with dos2unix)"
            )
        body, sep, signatures = text.partition("\n\n")
        if not sep:
            lines = text.split("\n")
            signed = next((i for i, ln in enumerate(lines) if ln.startswith(SIGNATURE_DASH)), None)
            if signed is not None:
                raise CheckpointError(
                    f"the checkpoint has no blank line between its body and its signature line "
                    f"(line {signed + 1}): put back the empty line before "
                    f"'{SIGNATURE_DASH} did:key:...'"
                )
            raise CheckpointError(
                "the checkpoint has no signature: after its body, expected an empty line, then "
                f"'{SIGNATURE_DASH} <did:key> <signature>'"
            )
        if first.startswith(ORIGIN_V2_PREFIX):
            return cls._parse_v2(body, signatures)
        lines = body.split("\n")
        if len(lines) != 4:
            raise CheckpointError(f"checkpoint body has {len(lines)} lines, expected 4")
        origin, size, head, time_line = lines  # the origin line was checked first
        if not size.isdigit() or (size != "0" and size.startswith("0")):
            raise CheckpointError(f"checkpoint position {size!r} is not a decimal number")
        head_hash, timestamp = _head_and_time(head, time_line)
        signer, signature = _signature(signatures.rstrip("\n").split("\n")[0], key_id)
        return cls(origin[len(ORIGIN_PREFIX) :], int(size), head_hash, timestamp, signer, signature)

    @classmethod
    def _parse_v2(cls, body: str, signatures: str) -> Checkpoint:
        try:
            head = TreeHead.parse(body + "\n")
        except TreeHeadError as e:
            raise CheckpointError(f"checkpoint body: {e}") from None
        if len(head.extensions) != 2:
            raise CheckpointError(
                f"checkpoint body has {len(head.extensions)} extension lines, expected 2 "
                "('head <base64 event hash>', 'time <µs>')"
            )
        head_line, time_line = head.extensions
        if not head_line.startswith("head "):
            raise CheckpointError(f"checkpoint head line {_shown(head_line)} is not 'head <hash>'")
        head_hash, timestamp = _head_and_time(head_line[5:], time_line)
        if not signatures.endswith("\n"):
            raise CheckpointError("the checkpoint's last signature line has no final newline")
        lines = signatures[:-1].split("\n")
        signer, signature = _signature(lines[0], note_key_id_of)
        for line in lines[1:]:
            if not line.startswith(SIGNATURE_DASH + " "):
                raise CheckpointError(f"checkpoint signature line {_shown(line)} is malformed")
        return cls(
            head.origin[len(ORIGIN_V2_PREFIX) :],
            head.size,
            head_hash,
            timestamp,
            signer,
            signature,
            head.root,
            tuple(lines[1:]),
        )


def _head_and_time(head: str, time_line: str) -> tuple[bytes, int]:
    """The head hash (base64 of 32 bytes) and the time line of a checkpoint body."""
    try:
        head_hash = base64.b64decode(head, validate=True)
    except binascii.Error:
        raise CheckpointError(f"checkpoint head hash {head!r} is not base64") from None
    if len(head_hash) != HASH_SIZE:
        raise CheckpointError(
            f"checkpoint head hash is {len(head_hash)} bytes, expected {HASH_SIZE}"
        )
    if not time_line.startswith("time ") or not time_line[5:].isdigit():
        raise CheckpointError(f"checkpoint time line {time_line!r} is not 'time <µs>'")
    return head_hash, int(time_line[5:])


def _signature(line: str, key_id_of: Callable[[str], bytes]) -> tuple[str, bytes]:
    """(signer, signature) of a checkpoint's signature line, whose key id is ``key_id_of``
    its signer's (the format's)."""
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != SIGNATURE_DASH:
        raise CheckpointError(f"checkpoint signature line {_shown(line)} is malformed")
    signer = parts[1]
    try:
        raw = base64.b64decode(parts[2], validate=True)
        expected_id = key_id_of(signer)
    except (binascii.Error, DIDError) as e:
        raise CheckpointError(f"checkpoint signature line: {e}") from None
    if len(raw) != 4 + SIGNATURE_SIZE or raw[:4] != expected_id:
        raise CheckpointError("checkpoint signature does not carry the signer's key id")
    return signer, raw[4:]
