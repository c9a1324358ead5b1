"""Sessions with real PQxdh keys written to signed SQLite ledgers, for tests that run a second
process over the ledger (kill and restart, resume from a fresh process)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from l2_session.domain.handshake.bundle import create_prekeys
from l2_session.domain.handshake.protocol import InitiatorHandshake, Responder
from l2_session.domain.manager.pqxdh import key_material
from l2_session.domain.session.config import DEFAULT_CONFIG
from l2_session.domain.session.session import Session
from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.ledger import SessionLedger

DAY_US = 86_400_000_000


def open_ledger(store: KeyStore, path: Path) -> SessionLedger:
    return SessionLedger(path, identity=store.identity, storage_key=store.storage_key)


def established_pair(alice: KeyStore, bob: KeyStore, now_us: int) -> tuple[bytes, bytes]:
    """A real handshake, Alice initiating: the key material each end records."""
    secrets, bundle = create_prekeys(bob.identity.private_key, expires_at_us=now_us + DAY_US)
    responder = Responder(bob.identity.private_key, secrets, bundle)
    hs, init = InitiatorHandshake.start(alice.identity.private_key, bundle, now_us=now_us)
    response, pending = responder.receive_init(init, now_us=now_us)
    confirm, keys_a = hs.receive_response(response)
    keys_b = pending.receive_confirm(confirm)
    return (
        key_material(keys_a, alice.identity.public_bytes, prekeys_mine=False),
        key_material(keys_b, bob.identity.public_bytes, prekeys_mine=True),
    )


@dataclass
class Recorded:
    """Alice's session with Bob, established with real keys and saved to her ledger (open)."""

    alice: KeyStore
    bob: KeyStore
    ledger: SessionLedger
    session_id: UUID
    now_us: int

    def reopen(self) -> Session:
        """The session as a process that opens Alice's ledger file now replays it."""
        reader = open_ledger(self.alice, Path(self.ledger.path))
        try:
            return reader.repository.get(self.session_id)  # type: ignore[no-any-return]
        finally:
            reader.close()


def recorded_session(tmp_path: Path) -> Recorded:
    alice, bob = KeyStore.create(tmp_path / "a.keys"), KeyStore.create(tmp_path / "b.keys")
    now = time.time_ns() // 1000
    material, _ = established_pair(alice, bob, now)
    ledger = open_ledger(alice, tmp_path / "a.sqlite3")
    return Recorded(
        alice, bob, ledger, record_established(ledger, bob.identity.did, material, now), now
    )


def record_established(ledger: SessionLedger, peer_did: str, material: bytes, now_us: int) -> UUID:
    """An initiator's session, established with ``material``, saved to ``ledger``."""
    session = Session.open(peer_did, "initiator", DEFAULT_CONFIG, now_us)
    session.initiate_handshake(now_us)
    session.receive_valid_response(now_us, material)
    ledger.save(session)
    return session.id
