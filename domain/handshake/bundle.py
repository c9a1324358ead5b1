"""Signed prekey bundles: what a responder publishes so that others can start a handshake.

A bundle holds the responder's Ed25519 identity key, a signed X25519 prekey, a signed
ML-KEM-768 prekey, an expiry, and optionally one-time X25519 prekeys, each signed on its own so
that a directory can hand out one per fetch (and drop it) without breaking the main signature.

Body of a BUNDLE frame (integers big-endian; times in microseconds since the Unix epoch)::

    suite u8 | identity 32 | expires_at u64 | spk_id u32 | spk 32 | kem_id u32 | kem_pk 1184
    | signature 64 | count u8 | count x (opk_id u32 | opk 32 | opk_signature 64)

signature     = Ed25519(identity, "l2-session v1 prekey bundle\\0" || body[0 : 1265])
opk_signature = Ed25519(identity, "l2-session v1 one-time prekey\\0" || identity || opk_id || opk)
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from l2_session.domain.handshake.errors import (
    HandshakeAuthenticationFailed,
    MalformedMessage,
    PrekeyError,
)
from l2_session.domain.handshake.kem import DEFAULT_BACKEND, KemBackend, KemPrivateKey
from l2_session.domain.handshake.keys import (
    check_signature,
    ed25519_public_bytes,
    x25519_public_bytes,
)
from l2_session.domain.handshake.wire import (
    MAX_ONE_TIME_PREKEYS,
    MLKEM768_PUBLIC_LEN,
    SIGNATURE_LEN,
    SUITE_X25519_MLKEM768,
    MessageType,
    Reader,
    frame,
    unframe,
)

LABEL_BUNDLE = b"l2-session v1 prekey bundle\x00"
LABEL_ONE_TIME_PREKEY = b"l2-session v1 one-time prekey\x00"

SIGNED_LEN = 1 + 32 + 8 + 4 + 32 + 4 + MLKEM768_PUBLIC_LEN
OPK_ENTRY_LEN = 4 + 32 + SIGNATURE_LEN
BUNDLE_MIN_BODY = SIGNED_LEN + SIGNATURE_LEN + 1
BUNDLE_MAX_BODY = BUNDLE_MIN_BODY + MAX_ONE_TIME_PREKEYS * OPK_ENTRY_LEN


@dataclass(frozen=True)
class OneTimePrekey:
    prekey_id: int
    public: bytes
    signature: bytes

    def encode(self) -> bytes:
        return struct.pack(">I", self.prekey_id) + self.public + self.signature


def _opk_message(identity: bytes, prekey_id: int, public: bytes) -> bytes:
    return LABEL_ONE_TIME_PREKEY + identity + struct.pack(">I", prekey_id) + public


@dataclass(frozen=True)
class PrekeyBundle:
    suite: int
    identity: bytes
    expires_at_us: int
    signed_prekey_id: int
    signed_prekey: bytes
    kem_prekey_id: int
    kem_prekey: bytes
    signature: bytes
    one_time_prekeys: tuple[OneTimePrekey, ...] = ()

    def signed_part(self) -> bytes:
        return (
            struct.pack(">B", self.suite)
            + self.identity
            + struct.pack(">QI", self.expires_at_us, self.signed_prekey_id)
            + self.signed_prekey
            + struct.pack(">I", self.kem_prekey_id)
            + self.kem_prekey
        )

    def encode(self) -> bytes:
        body = (
            self.signed_part()
            + self.signature
            + struct.pack(">B", len(self.one_time_prekeys))
            + b"".join(opk.encode() for opk in self.one_time_prekeys)
        )
        return frame(MessageType.BUNDLE, body)

    @classmethod
    def parse(cls, data: bytes) -> PrekeyBundle:
        r = Reader("BUNDLE", unframe(data, MessageType.BUNDLE, BUNDLE_MIN_BODY, BUNDLE_MAX_BODY))
        suite = r.suite()
        identity = r.take(32, "identity")
        expires, spk_id = r.u64("expires_at"), r.u32("signed prekey id")
        spk = r.take(32, "signed prekey")
        kem_id = r.u32("kem prekey id")
        kem = r.take(MLKEM768_PUBLIC_LEN, "kem prekey")
        signature = r.take(SIGNATURE_LEN, "signature")
        count = r.u8("one-time prekey count")
        if count > MAX_ONE_TIME_PREKEYS:
            raise MalformedMessage(
                f"BUNDLE: {count} one-time prekeys, at most {MAX_ONE_TIME_PREKEYS}"
            )
        opks = []
        for i in range(count):
            opk_id = r.u32(f"one-time prekey {i} id")
            opks.append(
                OneTimePrekey(
                    opk_id,
                    r.take(32, f"one-time prekey {i}"),
                    r.take(SIGNATURE_LEN, f"one-time prekey {i} signature"),
                )
            )
        r.end()
        if len({opk.prekey_id for opk in opks}) != len(opks):
            raise MalformedMessage("BUNDLE: duplicate one-time prekey id")
        return cls(suite, identity, expires, spk_id, spk, kem_id, kem, signature, tuple(opks))

    def verify(self, now_us: int, expected_identity: bytes | None = None) -> None:
        """Raise unless every signature holds, the bundle has not expired, and (if given) it
        belongs to ``expected_identity`` — the key the peer's DID names."""
        self._check_owner(expected_identity)
        check_signature(
            self.identity, self.signature, LABEL_BUNDLE + self.signed_part(), "prekey bundle"
        )
        for opk in self.one_time_prekeys:
            check_signature(
                self.identity,
                opk.signature,
                _opk_message(self.identity, opk.prekey_id, opk.public),
                f"one-time prekey {opk.prekey_id}",
            )
        self._check_expiry(now_us)

    def check_current(self, now_us: int, expected_identity: bytes | None = None) -> None:
        """The cheap half of ``verify``: the owner and the expiry, no signature (a directory
        serving bundles it verified on publication; the handshake verifies before use)."""
        self._check_owner(expected_identity)
        self._check_expiry(now_us)

    def _check_owner(self, expected_identity: bytes | None) -> None:
        if expected_identity is not None and expected_identity != self.identity:
            raise HandshakeAuthenticationFailed(
                f"bundle identity {self.identity.hex()} is not the expected "
                f"{expected_identity.hex()}"
            )

    def _check_expiry(self, now_us: int) -> None:
        if now_us >= self.expires_at_us:
            raise PrekeyError(
                f"prekey bundle expired at {self.expires_at_us} us, now is {now_us} us; "
                "fetch a fresh one"
            )

    def with_one_time_prekeys(self, opks: tuple[OneTimePrekey, ...]) -> PrekeyBundle:
        return replace(self, one_time_prekeys=opks)


@dataclass(frozen=True)
class PrekeySecrets:
    """The responder's private halves, matching one published bundle."""

    signed_prekey_id: int
    signed_prekey: X25519PrivateKey = field(repr=False)
    kem_prekey_id: int
    kem_prekey: KemPrivateKey = field(repr=False)
    expires_at_us: int
    one_time_prekeys: Mapping[int, X25519PrivateKey] = field(default_factory=dict, repr=False)

    def without_one_time_prekey(self, prekey_id: int) -> PrekeySecrets:
        """These secrets after one-time prekey ``prekey_id`` was used (it never serves twice)."""
        rest = {k: v for k, v in self.one_time_prekeys.items() if k != prekey_id}
        return replace(self, one_time_prekeys=rest)


def create_prekeys(
    identity: Ed25519PrivateKey,
    *,
    expires_at_us: int,
    signed_prekey_id: int = 1,
    kem_prekey_id: int = 1,
    one_time_prekey_ids: tuple[int, ...] = (),
    kem: KemBackend = DEFAULT_BACKEND,
    signed_prekey: X25519PrivateKey | None = None,
    kem_prekey: KemPrivateKey | None = None,
    one_time_prekeys: Mapping[int, X25519PrivateKey] | None = None,
) -> tuple[PrekeySecrets, PrekeyBundle]:
    """Fresh (or given, for deterministic tests) prekeys and the signed bundle that publishes
    them."""
    if len(one_time_prekey_ids) > MAX_ONE_TIME_PREKEYS:
        raise PrekeyError(f"at most {MAX_ONE_TIME_PREKEYS} one-time prekeys per bundle")
    spk = signed_prekey or X25519PrivateKey.generate()
    kem_key = kem_prekey or kem.generate()
    opk_secrets = dict(
        one_time_prekeys or {i: X25519PrivateKey.generate() for i in one_time_prekey_ids}
    )
    identity_public = ed25519_public_bytes(identity)
    unsigned = PrekeyBundle(
        SUITE_X25519_MLKEM768,
        identity_public,
        expires_at_us,
        signed_prekey_id,
        x25519_public_bytes(spk),
        kem_prekey_id,
        kem_key.public_bytes,
        b"",
    )
    opks = tuple(
        OneTimePrekey(i, pub, identity.sign(_opk_message(identity_public, i, pub)))
        for i, pub in ((i, x25519_public_bytes(k)) for i, k in sorted(opk_secrets.items()))
    )
    bundle = replace(
        unsigned,
        signature=identity.sign(LABEL_BUNDLE + unsigned.signed_part()),
        one_time_prekeys=opks,
    )
    secrets = PrekeySecrets(
        signed_prekey_id, spk, kem_prekey_id, kem_key, expires_at_us, opk_secrets
    )
    return secrets, bundle
