"""Key material of the handshake: identity keys as X25519 keys, checked DH, and the BLAKE3
key schedule.

Identity keys are Ed25519 (they name the node as a did:key). PQXDH needs the identity keys in
Diffie-Hellman too (DH1, DH2), so — as Signal does with one key pair for both — the Ed25519 key
is mapped to its X25519 form: the public point by the birational map u = (1 + y) / (1 - y) mod p
(RFC 7748 §4.1), the private scalar as the first half of SHA-512(seed), which is the scalar
Ed25519 itself signs with (RFC 8032 §5.1.5). libsodium's crypto_sign_ed25519_*_to_curve25519
compute the same.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from l2_session.domain.handshake.errors import HandshakeAuthenticationFailed, MalformedMessage

_P = 2**255 - 19

# BLAKE3 derive_key contexts: "hardcoded, globally unique, application-specific". One per use,
# so no output of one step can be mistaken for another's.
CONTEXT_TRANSCRIPT = "l2-session 2026-11 handshake v1 transcript"
CONTEXT_STAGE1 = "l2-session 2026-11 handshake v1 stage1 key"
CONTEXT_MASTER = "l2-session 2026-11 handshake v1 master key"
CONTEXT_CONFIRM_RESPONDER = "l2-session 2026-11 handshake v1 responder confirm key"
CONTEXT_CONFIRM_INITIATOR = "l2-session 2026-11 handshake v1 initiator confirm key"
# One derivation, split: key I->R 32 | key R->I 32 | resumption secret 32 | session id 16.
CONTEXT_CHANNEL_KEYS = "l2-session 2026-11 channel v1 keys"
CONTEXT_RESUME_AUTH = "l2-session 2026-11 resume v1 request key"
CONTEXT_RESUME_MASTER = "l2-session 2026-11 resume v1 master key"
CONTEXT_RESUME_CONFIRM_RESPONDER = "l2-session 2026-11 resume v1 responder confirm key"
CONTEXT_RESUME_CONFIRM_INITIATOR = "l2-session 2026-11 resume v1 initiator confirm key"

# Signature inputs start with a label, so a handshake signature can never pass for a ledger
# event signature or a prekey signature made by the same identity key.
LABEL_INIT_SIGNATURE = b"l2-session v1 init signature\x00"
LABEL_RESPONSE_SIGNATURE = b"l2-session v1 response signature\x00"


@lru_cache(maxsize=4096)
def ed25519_public_to_x25519(public: bytes) -> bytes:
    """The X25519 public key (Montgomery u) of an Ed25519 public key (Edwards y)."""
    if len(public) != 32:
        raise HandshakeAuthenticationFailed(f"identity key is {len(public)} bytes, expected 32")
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    if y >= _P:
        raise HandshakeAuthenticationFailed("identity key is not canonically encoded (y >= p)")
    if y == 1:
        # The neutral point: u would divide by zero, and it has no DH value anyway.
        raise HandshakeAuthenticationFailed("identity key is the neutral point")
    # pow(x, -1, p): extended Euclid, far cheaper than Fermat; inputs are public keys.
    u = (1 + y) * pow(1 - y, -1, _P) % _P
    return u.to_bytes(32, "little")


def ed25519_private_to_x25519(private: Ed25519PrivateKey) -> X25519PrivateKey:
    seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    # X25519 clamps the scalar itself (RFC 7748 §5), exactly as Ed25519 does.
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def ed25519_public_bytes(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def check_signature(identity: bytes, signature: bytes, message: bytes, what: str) -> None:
    """Raise ``HandshakeAuthenticationFailed`` unless ``signature`` is ``identity``'s."""
    try:
        Ed25519PublicKey.from_public_bytes(identity).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise HandshakeAuthenticationFailed(
            f"{what}: signature does not verify under identity {identity.hex()}"
        ) from None


def expect_id(what: str, got: bytes, expected: bytes) -> None:
    """A reply for another handshake or session is not ours: malformed here, nothing changes."""
    if got != expected:
        raise MalformedMessage(f"{what} for {got.hex()}, this one is {expected.hex()}")


def x25519_public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(private: X25519PrivateKey, public: bytes, what: str) -> bytes:
    """X25519, refusing an all-zero result (a low-order peer key: RFC 7748 §6.1)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise HandshakeAuthenticationFailed(
            f"{what}: the peer's X25519 key is of low order (all-zero shared secret)"
        ) from None


def length_prefixed(*parts: bytes) -> bytes:
    # Unambiguous concatenation: no two different part lists give the same bytes.
    out = bytearray()
    for part in parts:
        out += len(part).to_bytes(4, "big")
        out += part
    return bytes(out)


def transcript_hash(*parts: bytes) -> bytes:
    return blake3.blake3(length_prefixed(*parts), derive_key_context=CONTEXT_TRANSCRIPT).digest()


def derive(context: str, *material: bytes, length: int = 32) -> bytes:
    return blake3.blake3(length_prefixed(*material), derive_key_context=context).digest(length)


def mac(key: bytes, *parts: bytes) -> bytes:
    return blake3.blake3(length_prefixed(*parts), key=key).digest()


@dataclass(frozen=True)
class SessionKeys:
    """The result of a completed handshake (or resumption), from one side's point of view.

    ``resumption_secret`` and ``generation`` let the session resume after a restart without a
    new KEM exchange (resume.py); ``prekey_ids`` are the responder's (signed, KEM)
    prekeys it was made with: resumption is only offered while they are unchanged. Whoever
    stores this (the ledger) must seal the secret fields.
    """

    session_id: bytes
    send_key: bytes = field(repr=False)
    receive_key: bytes = field(repr=False)
    peer_identity: bytes
    is_initiator: bool
    transcript_hash: bytes
    resumption_secret: bytes = field(default=b"", repr=False)
    generation: int = 0
    prekey_ids: tuple[int, int] = (0, 0)


def session_keys(
    master: bytes,
    transcript: bytes,
    peer: bytes,
    initiator: bool,
    prekey_ids: tuple[int, int],
    *,
    session_id: bytes | None = None,
    generation: int = 0,
) -> SessionKeys:
    """Directional keys, session id and next resumption secret, all from ``master``."""
    block = derive(CONTEXT_CHANNEL_KEYS, master, length=112)
    i2r, r2i, resumption, sid = block[:32], block[32:64], block[64:96], block[96:]
    return SessionKeys(
        session_id=session_id or sid,
        send_key=i2r if initiator else r2i,
        receive_key=r2i if initiator else i2r,
        peer_identity=peer,
        is_initiator=initiator,
        transcript_hash=transcript,
        resumption_secret=resumption,
        generation=generation,
        prekey_ids=prekey_ids,
    )
