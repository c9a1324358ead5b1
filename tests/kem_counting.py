"""ML-KEM-768 with its operations counted, so a test can show that something happened without
a KEM exchange, or was refused before any KEM work (importable: tests/ is on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass

from l2_session.domain.handshake.kem import DEFAULT_BACKEND, KemPrivateKey


@dataclass
class KemCounts:
    encapsulations: int = 0
    decapsulations: int = 0


class CountingKem:
    """The default ML-KEM backend, counting encapsulations (the initiator's KEM work)."""

    name = "counting"

    def __init__(self, counts: KemCounts) -> None:
        self.counts = counts

    def generate(self) -> KemPrivateKey:
        return DEFAULT_BACKEND.generate()

    def load(self, stored: bytes) -> KemPrivateKey:
        return DEFAULT_BACKEND.load(stored)

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        self.counts.encapsulations += 1
        return DEFAULT_BACKEND.encapsulate(public_key)


@dataclass
class CountingKemKey:
    """A KEM prekey counting decapsulations (the responder's KEM work)."""

    key: KemPrivateKey
    counts: KemCounts

    @property
    def public_bytes(self) -> bytes:
        return self.key.public_bytes

    def stored_bytes(self) -> bytes:
        return self.key.stored_bytes()

    def decapsulate(self, ciphertext: bytes) -> bytes:
        self.counts.decapsulations += 1
        return self.key.decapsulate(ciphertext)
