"""Signed checkpoints, modelled on C2SP tlog-checkpoint and signed-note (BLAKE3 for SHA-256).

    l2-session ledger <ledger id>          origin line
    <position>                             number of events the checkpoint covers
    <base64 head hash>                     event hash at that position (32 bytes)
    time <timestamp µs>                    extension line: when it was signed
    <empty line>
    — <did:key> <base64(key id[4] || Ed25519 signature[64])>

The signature covers the note body (the four lines, each ending in a newline). The key id is
the first 4 bytes of BLAKE3(did || 0x0A || 0x01 || public key), as signed-note does with SHA-256.
A checkpoint seen earlier pins the ledger's history: if the event at its position no longer
has its head hash, history was rewritten; if the ledger is shorter, its tail was truncated.
"""

from __future__ import annotations

import base64
import binascii
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

ORIGIN_PREFIX = "l2-session ledger "
SIGNATURE_DASH = "\u2014"


class CheckpointError(LedgerError):
    """A checkpoint text that cannot be parsed, or whose signature does not verify."""


def _shown(line: str) -> str:
    """A line of what was read, quoted and cut short, for an error message."""
    return repr(line if len(line) <= 60 else line[:57] + "...")


def key_id(did: str) -> bytes:
    return blake3(did.encode() + b"\n\x01" + public_bytes_from_did_key(did)).digest()[:4]


@dataclass(frozen=True)
class Checkpoint:
    ledger_id: str
    position: int
    head_hash: bytes
    timestamp_us: int
    signer: str
    signature: bytes

    @property
    def origin(self) -> str:
        return ORIGIN_PREFIX + self.ledger_id

    def body(self) -> bytes:
        return (
            f"{self.origin}\n{self.position}\n{base64.b64encode(self.head_hash).decode()}\n"
            f"time {self.timestamp_us}\n"
        ).encode()

    def to_text(self) -> str:
        sig = base64.b64encode(key_id(self.signer) + self.signature).decode()
        return self.body().decode() + f"\n{SIGNATURE_DASH} {self.signer} {sig}\n"

    @classmethod
    def sign(
        cls,
        identity: NodeIdentity,
        ledger_id: str,
        position: int,
        head_hash: bytes,
        timestamp_us: int,
    ) -> Checkpoint:
        unsigned = cls(ledger_id, position, head_hash, timestamp_us, identity.did, b"")
        return cls(
            ledger_id,
            position,
            head_hash,
            timestamp_us,
            identity.did,
            identity.sign(unsigned.body()),
        )

    def signature_valid(self) -> bool:
        return verify_did_signature(self.signer, self.signature, self.body())

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint in ``text``; ``CheckpointError`` says what is wrong with what was read."""
        if not text.strip():
            raise CheckpointError("the checkpoint is empty")
        first = text.split("\n", 1)[0]
        if not first.startswith(ORIGIN_PREFIX):
            raise CheckpointError(
                f"not a checkpoint: its first line {_shown(first)} is not an origin line "
                f"'{ORIGIN_PREFIX}<ledger id>'"
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
        lines = body.split("\n")
        if len(lines) != 4:
            raise CheckpointError(f"checkpoint body has {len(lines)} lines, expected 4")
        origin, size, head, time_line = lines  # the origin line was checked first
        if not size.isdigit() or (size != "0" and size.startswith("0")):
            raise CheckpointError(f"checkpoint position {size!r} is not a decimal number")
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
        sig_line = signatures.rstrip("\n").split("\n")[0]
        parts = sig_line.split(" ")
        if len(parts) != 3 or parts[0] != SIGNATURE_DASH:
            raise CheckpointError(f"checkpoint signature line {sig_line!r} is malformed")
        signer = parts[1]
        try:
            raw = base64.b64decode(parts[2], validate=True)
            expected_id = key_id(signer)
        except (binascii.Error, DIDError) as e:
            raise CheckpointError(f"checkpoint signature line: {e}") from None
        if len(raw) != 4 + SIGNATURE_SIZE or raw[:4] != expected_id:
            raise CheckpointError("checkpoint signature does not carry the signer's key id")
        return cls(
            origin[len(ORIGIN_PREFIX) :], int(size), head_hash, int(time_line[5:]), signer, raw[4:]
        )
