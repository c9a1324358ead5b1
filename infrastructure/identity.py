"""Node identities: Ed25519 keys named as ``did:key`` (W3C did:key, multicodec ed25519-pub).

A did:key for an Ed25519 public key is ``did:key:z`` + base58btc(0xed 0x01 || 32-byte key).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
ED25519_MULTICODEC = b"\xed\x01"
DID_KEY_PREFIX = "did:key:z"


class DIDError(ValueError):
    """A DID that cannot be used: malformed, unsupported method, or wrong key type."""


def b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for i, ch in enumerate(text):
        try:
            n = n * 58 + _B58_INDEX[ch]
        except KeyError:
            raise DIDError(f"invalid base58btc character {ch!r} at offset {i}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def did_key_from_public_bytes(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise DIDError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return DID_KEY_PREFIX + b58encode(ED25519_MULTICODEC + public_key)


@lru_cache(maxsize=4096)
def public_bytes_from_did_key(did: str) -> bytes:
    """The raw Ed25519 public key named by ``did``; ``DIDError`` says what is wrong otherwise."""
    if not isinstance(did, str) or not did.startswith("did:"):
        raise DIDError(f"not a DID: {did!r}")
    method = did.split(":", 2)[1]
    if method != "key":
        raise DIDError(f"unsupported DID method {method!r} in {did!r} (only did:key is built in)")
    if not did.startswith(DID_KEY_PREFIX):
        raise DIDError(f"did:key must use base58btc multibase ('z'), got {did!r}")
    raw = b58decode(did[len(DID_KEY_PREFIX) :])
    if raw[:2] != ED25519_MULTICODEC:
        raise DIDError(
            f"did:key {did!r} is not an Ed25519 key (multicodec prefix {raw[:2].hex()}, "
            "expected ed01)"
        )
    if len(raw) != 34:
        raise DIDError(f"did:key {did!r} holds {len(raw) - 2} key bytes, expected 32")
    return raw[2:]


@lru_cache(maxsize=4096)
def public_key_from_did_key(did: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_bytes_from_did_key(did))


def verify_did_signature(did: str, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is ``did``'s Ed25519 signature of ``message``."""
    try:
        public_key_from_did_key(did).verify(signature, message)
    except (InvalidSignature, DIDError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class NodeIdentity:
    """A node's Ed25519 signing identity."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        if len(seed) != 32:
            raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def did(self) -> str:
        return did_key_from_public_bytes(self.public_bytes)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)
