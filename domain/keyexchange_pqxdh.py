"""``KeyExchange`` over the PQxdh handshake engine (docs/handshake.md): real keys for the
session manager. Bundles and identity keys come from the caller (a DID resolver), so the
domain stays free of I/O.

Both ends must name the same key material (the key id in the ledger is computed from it), so
it is the initiator-to-responder key followed by the responder-to-initiator key, whichever
end is asking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from l2_session.domain.errors import AuthenticationFailed
from l2_session.domain.handshake import Responder
from l2_session.domain.handshake_bundle import PrekeyBundle, create_prekeys
from l2_session.domain.handshake_engine import HandshakeEngine, Outcome
from l2_session.domain.handshake_keys import SessionKeys


def key_material(keys: SessionKeys) -> bytes:
    if keys.is_initiator:
        return keys.send_key + keys.receive_key
    return keys.receive_key + keys.send_key


class Directory(Protocol):
    """Where DIDs resolve and bundles are published (infrastructure/resolver.py)."""

    def resolve(self, did: str) -> Any: ...

    def publish_bundle(self, did: str, bundle: bytes, now_us: int) -> None: ...

    def fetch_bundle(self, did: str, now_us: int) -> PrekeyBundle: ...


class PqxdhKeyExchange:
    def __init__(
        self,
        engine: HandshakeEngine,
        *,
        fetch_bundle: Callable[[str, int], PrekeyBundle],
        identity_key_of: Callable[[str], bytes],
    ) -> None:
        self.engine = engine
        self._fetch_bundle = fetch_bundle
        self._identity_key_of = identity_key_of
        self._peers: dict[UUID, str] = {}  # conversation -> the DID it is with

    @classmethod
    def for_node(
        cls,
        did: str,
        identity: Ed25519PrivateKey,
        directory: Directory,
        *,
        now_us: int,
        valid_for_us: int,
        one_time_prekeys: int = 8,
    ) -> PqxdhKeyExchange:
        """Fresh prekeys for ``did``, published in ``directory``, and the exchange that uses
        them (both roles). Keeping the prekeys across restarts is the key store's job."""
        secrets, bundle = create_prekeys(
            identity,
            expires_at_us=now_us + valid_for_us,
            one_time_prekey_ids=tuple(range(1, one_time_prekeys + 1)),
        )
        directory.publish_bundle(did, bundle.encode(), now_us)
        engine = HandshakeEngine(identity, responder=Responder(identity, secrets, bundle))
        return cls(
            engine,
            fetch_bundle=directory.fetch_bundle,
            identity_key_of=lambda peer: bytes(directory.resolve(peer).identity_key),
        )

    def initiate(self, conversation: UUID, peer_did: str, now_us: int) -> bytes:
        self.engine.expire(now_us)  # forget handshakes that timed out
        bundle = self._fetch_bundle(peer_did, now_us)
        _, init = self.engine.initiate(
            bundle,
            now_us=now_us,
            expected_responder=self._identity_key_of(peer_did),
            source=peer_did,
        )
        self._peers[conversation] = peer_did
        return init

    def respond(self, conversation: UUID, peer_did: str, request: bytes, now_us: int) -> bytes:
        outcome = self.engine.receive(request, source=peer_did, now_us=now_us)
        if outcome.send is None:
            raise AuthenticationFailed(f"handshake request refused: {_why(outcome)}")
        if outcome.peer_identity != self._identity_key_of(peer_did):
            raise AuthenticationFailed(f"handshake request not signed by {peer_did}")
        self._peers[conversation] = peer_did
        return outcome.send

    def complete(self, conversation: UUID, response: bytes, now_us: int) -> tuple[bytes, bytes]:
        outcome = self._finish(conversation, response, now_us)
        if outcome.send is None or outcome.established is None:
            raise AuthenticationFailed(f"handshake response refused: {_why(outcome)}")
        return outcome.send, key_material(outcome.established)

    def confirm(self, conversation: UUID, confirmation: bytes, now_us: int) -> bytes:
        outcome = self._finish(conversation, confirmation, now_us)
        if outcome.established is None:
            raise AuthenticationFailed(f"key confirmation refused: {_why(outcome)}")
        return key_material(outcome.established)

    def _finish(self, conversation: UUID, data: bytes, now_us: int) -> Outcome:
        peer_did = self._peers.get(conversation, "")
        outcome = self.engine.receive(data, source=peer_did, now_us=now_us)
        if outcome.established is not None:
            if outcome.established.peer_identity != self._identity_key_of(peer_did):
                raise AuthenticationFailed(f"handshake completed by someone other than {peer_did}")
            self._peers.pop(conversation, None)
        return outcome


def _why(outcome: Outcome) -> str:
    return outcome.dropped or outcome.failed or "no reply"
