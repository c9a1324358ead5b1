"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys: the envelope the ledger's
checkpoints will travel in, so that a note verifier from another implementation can check
them.

A note is UTF-8 text ending in a newline, a blank line, then one signature line per signer::

    <text>\\n
    \\n
    — <name> <base64(key id (4 bytes) || Ed25519 signature (64 bytes))>\\n

The key id is the first four bytes of SHA-256(name || 0x0A || 0x01 || public key), 0x01 being
the Ed25519 signature type; the signature is over the text (its final newline included).
Keys are written as C2SP does: a verifier key ``<name>+<key id hex>+<base64(0x01 || public
key)>``, a signer key ``PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>``. Ed25519 is
deterministic, so a signer reproduces a published note byte for byte
(tests/crypto/test_signed_note.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = b"\x01"  # the signature type
DASH = "\u2014 "  # a signature line begins with an em dash and a space
MAX_SIGNATURES = 100  # a note with more signature lines than this is refused unread


class NoteError(ValueError):
    """A note, key or signature that is malformed, or does not verify."""


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public_key).digest()[:4]


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise NoteError(f"key name {name!r}: non-empty, without '+' or spaces")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not base64") from None


@dataclass(frozen=True)
class Verifier:
    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """A verifier key as ``<name>+<key id hex>+<base64(0x01 || public key)>``."""
        name, _, rest = text.partition("+")
        hex_id, _, encoded = rest.partition("+")
        _check_name(name)
        raw = _unb64(encoded, f"verifier key {name}")
        if len(raw) != 33 or raw[:1] != ED25519:
            raise NoteError(f"verifier key {name}: not an Ed25519 key (type 0x01, 32 bytes)")
        if hex_id != key_id(name, raw[1:]).hex():
            raise NoteError(f"verifier key {name}: its key id {hex_id} is not its key's")
        return cls(name, bytes.fromhex(hex_id), Ed25519PublicKey.from_public_bytes(raw[1:]))

    def __str__(self) -> str:
        raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return f"{self.name}+{self.key_id.hex()}+{_b64(ED25519 + raw)}"


@dataclass(frozen=True)
class Signer:
    name: str
    private_key: Ed25519PrivateKey

    @classmethod
    def parse(cls, text: str) -> Signer:
        """A signer key as ``PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>``."""
        if not text.startswith("PRIVATE+KEY+"):
            raise NoteError("a signer key begins with PRIVATE+KEY+")
        name, _, rest = text.removeprefix("PRIVATE+KEY+").partition("+")
        hex_id, _, encoded = rest.partition("+")
        _check_name(name)
        raw = _unb64(encoded, f"signer key {name}")
        if len(raw) != 33 or raw[:1] != ED25519:
            raise NoteError(f"signer key {name}: not an Ed25519 key (type 0x01, 32 bytes)")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if hex_id != signer.verifier.key_id.hex():
            raise NoteError(f"signer key {name}: its key id {hex_id} is not its key's")
        return signer

    @property
    def verifier(self) -> Verifier:
        public = self.private_key.public_key()
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return Verifier(self.name, key_id(self.name, raw), public)

    def sign(self, text: str) -> str:
        """``text`` as a note signed by this key (C2SP signed-note)."""
        _check_text(text)
        signature = self.private_key.sign(text.encode())
        return f"{text}\n{DASH}{self.name} {_b64(self.verifier.key_id + signature)}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text ends with a newline")
    if "\n\n" in text or text.startswith("\n"):
        raise NoteError("a note's text has no blank line")


def open_note(note: str, verifiers: list[Verifier]) -> tuple[str, list[Verifier]]:
    """The text of ``note`` and the known verifiers whose signatures on it check. Signature
    lines of unknown keys are skipped; one of a known key that does not check is refused,
    as is a note that no known key signed."""
    text, sep, block = note.rpartition("\n\n")
    if not sep or not block.endswith("\n"):
        raise NoteError("a note is text, a blank line, then signature lines")
    text += "\n"
    _check_text(text)
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"{len(lines)} signature lines, at most {MAX_SIGNATURES}")
    known = {(v.name, v.key_id): v for v in verifiers}
    good: list[Verifier] = []
    for line in lines:
        if not line.startswith(DASH):
            raise NoteError(f"a signature line begins with '{DASH}': {line[:40]!r}")
        name, _, encoded = line.removeprefix(DASH).partition(" ")
        raw = _unb64(encoded, f"the signature of {name}")
        if len(raw) < 5:
            raise NoteError(f"the signature of {name} is too short")
        verifier = known.get((name, raw[:4]))
        if verifier is None:
            continue  # another's signature: not ours to check
        try:
            verifier.public_key.verify(raw[4:], text.encode())
        except InvalidSignature:
            raise NoteError(f"the signature of {name} does not verify") from None
        good.append(verifier)
    if not good:
        raise NoteError("no signature of a known key on the note")
    return text, good
