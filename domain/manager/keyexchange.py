"""The key exchange as the session manager drives it, and a deterministic stand-in.

The manager needs four steps of a handshake, each bytes in and bytes out (sans-I/O):

    initiator                          responder
    initiate()        -- request -->   respond()
    complete()        <-- response --
                      -- confirmation --> confirm()

``complete`` gives the initiator its keys; ``confirm`` gives the responder its keys only once
the initiator has proved it holds the same ones (decision 6 in docs/spec-decisions.md). Key
rotation runs the same four steps inside the session (SPEC-018 §2.2 "re-handshake").

Resumption (decision 4) replaces the first two steps: ``resume`` and ``respond_resumption``
take the session's stored key material (sealed in the ledger) instead of doing a new KEM
exchange; ``complete`` and ``confirm`` then finish it like a handshake, with fresh keys.

The PQxdh engine (``domain/handshake/engine.py``, docs/handshake.md) fits this shape.
``MockKeyExchange`` is SPEC-018 §6.3's "PQxdh: deterministic test vectors" for simulations: a
seeded random share per side and BLAKE2b over both. It offers no security.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from typing import Protocol
from uuid import UUID

from l2_session.domain.session.errors import AuthenticationFailed, NothingToResume, StaleFrame


class KeyExchange(Protocol):
    def initiate(self, conversation: UUID, peer_did: str, now_us: int) -> bytes: ...

    def respond(self, conversation: UUID, peer_did: str, request: bytes, now_us: int) -> bytes: ...

    def complete(self, conversation: UUID, response: bytes, now_us: int) -> tuple[bytes, bytes]:
        """(confirmation to send, key material)."""
        ...

    def confirm(self, conversation: UUID, confirmation: bytes, now_us: int) -> bytes:
        """The key material, once ``confirmation`` proves the initiator derived it."""
        ...

    def resume(self, conversation: UUID, peer_did: str, key_material: bytes, now_us: int) -> bytes:
        """A resumption request proving possession of ``key_material`` (no KEM exchange)."""
        ...

    def respond_resumption(
        self, conversation: UUID, peer_did: str, request: bytes, key_material: bytes, now_us: int
    ) -> bytes:
        """The answer to a resumption ``request`` for the session holding ``key_material``;
        ``AuthenticationFailed`` if the request does not prove possession of it."""
        ...

    def expire(self, now_us: int) -> None:
        """Forget the handshakes in progress that have outlived the handshake timeout (the
        manager's ``tick`` calls it: time passes there, not only when a handshake starts)."""
        ...

    @property
    def timeout_us(self) -> int | None:
        """How long a handshake in progress is kept (``expire``); None: until it completes.
        The manager refuses a config that waits longer for a reply than this."""
        ...


def _key(initiator_share: bytes, responder_share: bytes) -> bytes:
    return hashlib.blake2b(initiator_share + responder_share, digest_size=32).digest()


def _confirmation(key: bytes) -> bytes:
    return hashlib.blake2b(b"confirm", key=key, digest_size=16).digest()


class MockKeyExchange:
    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._initiated: dict[UUID, bytes] = {}  # in flight: memory only, like ephemerals
        self._responded: dict[UUID, bytes] = {}
        self._resumed_from: dict[UUID, bytes] = {}  # conversation -> the stored key resumed
        self._answered: set[bytes] = set()  # resumption requests answered, as a replay cache

    def resume(self, conversation: UUID, peer_did: str, key_material: bytes, now_us: int) -> bytes:
        self._resumed_from[conversation] = key_material
        return self.initiate(conversation, peer_did, now_us)

    def respond_resumption(
        self, conversation: UUID, peer_did: str, request: bytes, key_material: bytes, now_us: int
    ) -> bytes:
        if request in self._answered:
            # As PQxdh's replay cache does: a duplicate request is not answered anew.
            raise NothingToResume("a resumption request answered before (a duplicate)")
        self._answered.add(request)
        share = self._rng.randbytes(32)
        # The stored key goes into the new one, as a real resumption's secret does.
        self._responded[conversation] = _key(key_material + request, share)
        return share

    def expire(self, now_us: int) -> None:
        """Nothing to do: a simulation's unanswered shares last as long as the simulation."""

    @property
    def timeout_us(self) -> int | None:
        return None

    def initiate(self, conversation: UUID, peer_did: str, now_us: int) -> bytes:
        share = self._rng.randbytes(32)
        self._initiated[conversation] = share
        return share

    def respond(self, conversation: UUID, peer_did: str, request: bytes, now_us: int) -> bytes:
        share = self._rng.randbytes(32)
        self._responded[conversation] = _key(request, share)
        return share

    def complete(self, conversation: UUID, response: bytes, now_us: int) -> tuple[bytes, bytes]:
        try:
            share = self._initiated.pop(conversation)
        except KeyError:
            # As PQxdh's engine does: a reply for no handshake in progress (already used, say,
            # and its save failed) is stale and dropped; it proves nothing about the peer.
            raise StaleFrame("a response to no request of ours in progress") from None
        key = _key(self._resumed_from.pop(conversation, b"") + share, response)
        return _confirmation(key), key

    def confirm(self, conversation: UUID, confirmation: bytes, now_us: int) -> bytes:
        key = self._responded.get(conversation)
        if key is None or not hmac.compare_digest(confirmation, _confirmation(key)):
            raise AuthenticationFailed("the key confirmation does not match our response")
        del self._responded[conversation]
        return key
