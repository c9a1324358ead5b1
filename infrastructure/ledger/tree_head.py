"""A log's signed tree head as C2SP writes it: the tlog-checkpoint body (c2sp.org/tlog-checkpoint)
and the witness cosignature over it (c2sp.org/tlog-cosignature, Ed25519). The note envelope
is note.py's; the tree and its proofs are merkle.py's.

A checkpoint body is at least three non-empty lines, each ending in a newline::

    <origin>            the log's identity (a schema-less URL, by convention)
    <tree size>         ASCII decimal, no sign, no leading zero
    <root hash>         standard base64 (with padding) of the 32-byte root
    [<extension line>]  optional, opaque, non-empty

A cosignature is a signature line whose key id is computed with signature type 0x04 and
whose base64 payload is key id (4 bytes) || timestamp (8 bytes, big-endian seconds since
the epoch) || Ed25519 signature (64 bytes) over::

    cosignature/v1
    time <timestamp>
    <the checkpoint body>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from l2_session.infrastructure.ledger.note import DASH, NoteError

ROOT_BYTES = 32
MAX_SIZE = 2**63 - 1  # a tree size fits a signed 64-bit integer wherever it is stored
COSIGNATURE = b"\x04"  # the signature type of a timestamped Ed25519 cosignature
TIMESTAMP = struct.Struct(">Q")


class TreeHeadError(NoteError):
    """A checkpoint body or cosignature that is malformed, or does not verify."""


@dataclass(frozen=True)
class TreeHead:
    """A checkpoint body: ``text()`` writes it, ``parse`` reads it back exactly."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise TreeHeadError(f"origin {self.origin!r}: one non-empty line")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise TreeHeadError(f"tree size {self.size!r} is not a whole number")
        if not 0 <= self.size <= MAX_SIZE:
            raise TreeHeadError(f"tree size {self.size} outside 0..{MAX_SIZE}")
        if len(self.root) != ROOT_BYTES:
            raise TreeHeadError(f"a root of {len(self.root)} bytes, not {ROOT_BYTES}")
        for line in self.extensions:
            if not line or "\n" in line:
                raise TreeHeadError(f"extension line {line!r}: one non-empty line")

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "".join(f"{line}\n" for line in (*lines, *self.extensions))

    @classmethod
    def parse(cls, text: str) -> TreeHead:
        if not text.endswith("\n"):
            raise TreeHeadError("a checkpoint body ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or any(not line for line in lines):
            raise TreeHeadError("a checkpoint body is at least three non-empty lines")
        origin, size_text, root_text, *extensions = lines
        if (
            not size_text.isascii()
            or not size_text.isdigit()
            or (len(size_text) > 1 and size_text[0] == "0")
        ):
            raise TreeHeadError(f"tree size {size_text!r}: decimal digits, no leading zero")
        try:
            root = base64.b64decode(root_text, validate=True)
        except (binascii.Error, ValueError):
            raise TreeHeadError(f"root hash {root_text!r} is not base64") from None
        if base64.b64encode(root).decode() != root_text:
            raise TreeHeadError(f"root hash {root_text!r} is not canonical base64")
        return cls(origin, int(size_text), root, tuple(extensions))


def cosignature_key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + COSIGNATURE + public_key).digest()[:4]


def _cosigned_message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def cosign(name: str, key: Ed25519PrivateKey, body: str, timestamp: int) -> str:
    """The signature line of a witness ``name`` cosigning the checkpoint ``body`` at
    ``timestamp`` (seconds since the epoch)."""
    TreeHead.parse(body)  # only a well-formed checkpoint is cosigned
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = key.sign(_cosigned_message(body, timestamp))
    payload = cosignature_key_id(name, public) + TIMESTAMP.pack(timestamp) + signature
    return f"{DASH}{name} {base64.b64encode(payload).decode()}\n"


def verify_cosignature(name: str, key: Ed25519PublicKey, body: str, line: str) -> int:
    """The timestamp of witness ``name``'s cosignature ``line`` on ``body``;
    ``TreeHeadError`` if it is not that witness's, or does not verify."""
    if not line.startswith(DASH) or not line.endswith("\n"):
        raise TreeHeadError("a cosignature is one signature line")
    signer, _, encoded = line[len(DASH) : -1].partition(" ")
    if signer != name:
        raise TreeHeadError(f"a cosignature by {signer!r}, not by {name!r}")
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise TreeHeadError(f"the cosignature of {name} is not base64") from None
    if len(payload) != 4 + TIMESTAMP.size + 64:
        raise TreeHeadError(f"a cosignature of {len(payload)} bytes, not 76")
    public = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if payload[:4] != cosignature_key_id(name, public):
        raise TreeHeadError(f"the cosignature is not by {name}'s key")
    (timestamp,) = TIMESTAMP.unpack(payload[4:12])
    try:
        key.verify(payload[12:], _cosigned_message(body, timestamp))
    except InvalidSignature:
        raise TreeHeadError(f"the cosignature of {name} does not verify") from None
    return int(timestamp)
