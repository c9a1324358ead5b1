"""ML-KEM-768 behind one small interface, with two interchangeable implementations.

pqcrypto is the design card's choice and the default. cryptography's ML-KEM is an independent
implementation (OpenSSL/aws-lc lineage) that was faster here for encapsulation and
decapsulation, so it is offered as an alternative; tests cross-check the two in both directions.

The libraries keep private keys differently — pqcrypto as the 2400-byte expanded key, cryptography
as the 64-byte FIPS 203 seed — so a private key remembers which backend made it, and its stored
form says which it is (by length). Public keys and ciphertexts are the same bytes for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pqcrypto.kem.ml_kem_768 as _pq
from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem
from l2_session.domain.handshake.errors import HandshakeAuthenticationFailed, PrekeyError

PUBLIC_KEY_LEN = 1184
CIPHERTEXT_LEN = 1088
SHARED_SECRET_LEN = 32
SEED_LEN = 64
EXPANDED_PRIVATE_LEN = 2400


class KemPrivateKey(Protocol):
    @property
    def public_bytes(self) -> bytes: ...

    def stored_bytes(self) -> bytes:
        """The form a key store keeps: the seed (cryptography) or the expanded key (pqcrypto)."""
        ...

    def decapsulate(self, ciphertext: bytes) -> bytes: ...


class KemBackend(Protocol):
    name: str

    def generate(self) -> KemPrivateKey: ...

    def load(self, stored: bytes) -> KemPrivateKey: ...

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        """(ciphertext, shared secret) for ``public_key``; a key that fails FIPS 203's input
        check (wrong length, coefficient not reduced mod q) raises."""
        ...


def _bad_key(public_key: bytes, error: Exception) -> HandshakeAuthenticationFailed:
    # The responder's KEM prekey came signed, so a key the library refuses is an attack or a
    # corrupt bundle, not a transient error.
    return HandshakeAuthenticationFailed(
        f"ML-KEM-768 encapsulation key refused ({len(public_key)} bytes): {error}"
    )


def _bad_ciphertext(ciphertext: bytes, error: Exception) -> HandshakeAuthenticationFailed:
    return HandshakeAuthenticationFailed(
        f"ML-KEM-768 ciphertext refused ({len(ciphertext)} bytes): {error}"
    )


@dataclass(frozen=True)
class PqcryptoPrivateKey:
    public_bytes: bytes
    expanded: bytes = field(repr=False)

    def stored_bytes(self) -> bytes:
        return self.expanded

    def decapsulate(self, ciphertext: bytes) -> bytes:
        try:
            return bytes(_pq.decaps(self.expanded, ciphertext))
        except ValueError as error:
            raise _bad_ciphertext(ciphertext, error) from None


class PqcryptoKem:
    name = "pqcrypto"

    def generate(self) -> PqcryptoPrivateKey:
        public, expanded = _pq.keygen()
        return PqcryptoPrivateKey(bytes(public), bytes(expanded))

    def load(self, stored: bytes) -> PqcryptoPrivateKey:
        if len(stored) != EXPANDED_PRIVATE_LEN:
            raise PrekeyError(
                f"pqcrypto needs the {EXPANDED_PRIVATE_LEN}-byte expanded ML-KEM key, got "
                f"{len(stored)} bytes (a {SEED_LEN}-byte seed belongs to the cryptography backend)"
            )
        # FIPS 203 §7.3: the expanded key embeds ek at [1152:2336] and its hash after it.
        return PqcryptoPrivateKey(stored[1152 : 1152 + PUBLIC_KEY_LEN], stored)

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        try:
            ciphertext, shared = _pq.encaps(public_key)
        except ValueError as error:
            raise _bad_key(public_key, error) from None
        return bytes(ciphertext), bytes(shared)


@dataclass(frozen=True)
class CryptographyPrivateKey:
    key: _mlkem.MLKEM768PrivateKey = field(repr=False)
    public_bytes: bytes

    def stored_bytes(self) -> bytes:
        return self.key.private_bytes_raw()

    def decapsulate(self, ciphertext: bytes) -> bytes:
        try:
            return self.key.decapsulate(ciphertext)
        except ValueError as error:
            raise _bad_ciphertext(ciphertext, error) from None


class CryptographyKem:
    name = "cryptography"

    def generate(self) -> CryptographyPrivateKey:
        return self._wrap(_mlkem.MLKEM768PrivateKey.generate())

    def load(self, stored: bytes) -> CryptographyPrivateKey:
        if len(stored) != SEED_LEN:
            raise PrekeyError(
                f"cryptography loads ML-KEM keys from their {SEED_LEN}-byte seed, got "
                f"{len(stored)} bytes (an expanded key belongs to the pqcrypto backend)"
            )
        return self._wrap(_mlkem.MLKEM768PrivateKey.from_seed_bytes(stored))

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        try:
            shared, ciphertext = _mlkem.MLKEM768PublicKey.from_public_bytes(
                public_key
            ).encapsulate()
        except ValueError as error:
            raise _bad_key(public_key, error) from None
        return ciphertext, shared

    @staticmethod
    def _wrap(key: _mlkem.MLKEM768PrivateKey) -> CryptographyPrivateKey:
        return CryptographyPrivateKey(key, key.public_key().public_bytes_raw())


BACKENDS: dict[str, KemBackend] = {"pqcrypto": PqcryptoKem(), "cryptography": CryptographyKem()}
DEFAULT_BACKEND: KemBackend = BACKENDS["pqcrypto"]


def backend(name: str) -> KemBackend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown ML-KEM backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}"
        ) from None


def load_private(stored: bytes) -> KemPrivateKey:
    """A stored private key with the backend that can use it, told apart by its length."""
    if len(stored) == SEED_LEN:
        return BACKENDS["cryptography"].load(stored)
    return BACKENDS["pqcrypto"].load(stored)
