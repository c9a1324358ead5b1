"""``KeyExchange`` over the PQxdh handshake engine (docs/handshake.md): real keys for the
session manager, full handshakes and resumptions. Bundles and identity keys come from the
caller (a DID resolver), so the domain stays free of I/O.

Key material is what the session records, sealed, in its ``Established`` event; it is also
the resumption ticket. Both ends must name the same key material (the key id in the ledger is
computed from it), so its layout does not depend on which end is asking — directions are
named by the order of the two identity keys, not by who initiated::

    key sent by the smaller identity key 32 | key sent by the larger 32 | resumption secret 32
    | session id 16 | generation u32 | signed prekey id u32 | KEM prekey id u32
    | prekeys belong to the larger identity key u8

From it and the two identities each end rebuilds its channel keys (``session_keys_of``) and
its ``ResumptionTicket`` (``ticket_of``).
"""

from __future__ import annotations

import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from l2_session.domain.handshake.admission import HandshakeRefused
from l2_session.domain.handshake.bundle import PrekeyBundle, PrekeySecrets, create_prekeys
from l2_session.domain.handshake.engine import HandshakeEngine, Outcome
from l2_session.domain.handshake.keys import SessionKeys, ed25519_public_bytes
from l2_session.domain.handshake.protocol import Responder
from l2_session.domain.handshake.resume import ResumeResponder, ResumptionTicket
from l2_session.domain.session.errors import AuthenticationFailed, NothingToResume, StaleFrame

_TAIL = struct.Struct(">16sIIIB")
KEY_MATERIAL_LEN = 32 * 3 + _TAIL.size


def new_prekey_id() -> int:
    return secrets.randbelow(2**32 - 1) + 1


def key_material(keys: SessionKeys, own_identity: bytes, prekeys_mine: bool) -> bytes:
    """The session's key material as both ends record it (layout in the module docstring)."""
    smaller = own_identity < keys.peer_identity
    first, second = (
        (keys.send_key, keys.receive_key) if smaller else (keys.receive_key, keys.send_key)
    )
    prekeys_of_larger = prekeys_mine != smaller
    tail = _TAIL.pack(keys.session_id, keys.generation, *keys.prekey_ids, prekeys_of_larger)
    return first + second + keys.resumption_secret + tail


def _unpack(material: bytes, own_identity: bytes, peer_identity: bytes) -> tuple[Any, ...]:
    if len(material) != KEY_MATERIAL_LEN:
        raise NothingToResume(
            f"stored key material is {len(material)} bytes, not the {KEY_MATERIAL_LEN} of a "
            "PQxdh session (made by another key exchange?): do a full handshake"
        )
    smaller = own_identity < peer_identity
    first, second, secret = material[:32], material[32:64], material[64:96]
    sid, generation, spk, kem, prekeys_of_larger = _TAIL.unpack(material[96:])
    send, receive = (first, second) if smaller else (second, first)
    prekeys_mine = bool(prekeys_of_larger) != smaller
    return send, receive, secret, sid, generation, (spk, kem), prekeys_mine


def session_keys_of(material: bytes, own_identity: bytes, peer_identity: bytes) -> SessionKeys:
    """This end's channel keys from the recorded key material (after a restart, say)."""
    send, receive, secret, sid, generation, prekey_ids, mine = _unpack(
        material, own_identity, peer_identity
    )
    # is_initiator names who sends with the I->R key; for the channel only the direction counts.
    return SessionKeys(
        sid, send, receive, peer_identity, not mine, b"", secret, generation, prekey_ids
    )


def ticket_of(material: bytes, own_identity: bytes, peer_identity: bytes) -> ResumptionTicket:
    return ResumptionTicket.of(session_keys_of(material, own_identity, peer_identity))


def prekeys_are_mine(material: bytes, own_identity: bytes, peer_identity: bytes) -> bool:
    return bool(_unpack(material, own_identity, peer_identity)[-1])


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
        source_of: Callable[[str], str] | None = None,
    ) -> None:
        self.engine = engine
        # Where a peer's frames come from, as the transport sees it (its address). The engine
        # keys quarantine and rate limits by identity *and* source (docs/spec-decisions.md,
        # decision 11); a DID is only a claim, so it is the source only in simulations.
        self.source_of: Callable[[str], str] = source_of or (lambda did: did)
        self.identity = ed25519_public_bytes(engine.identity)
        self._fetch_bundle = fetch_bundle
        self._identity_key_of = identity_key_of
        # conversation -> (the DID it is with, whether the prekeys in use are this node's,
        # when its handshake started), oldest first: entries go with their handshake's timeout.
        self._peers: OrderedDict[UUID, tuple[str, bool, int]] = OrderedDict()
        # The ticket being answered: the manager hands over the session's stored key
        # material with each RESUME, so no ticket is kept in memory between requests.
        self._answering: dict[bytes, ResumptionTicket] = {}
        if engine.resume_responder is None:
            engine.resume_responder = ResumeResponder(self._answering.get, (0, 0))
        # Told the responder's secrets when a handshake spent one of its one-time prekeys,
        # before the answer leaves (a node keeps them: KeyStore.set_prekeys), so that a
        # restart does not bring a spent prekey back.
        self.on_prekeys_changed: Callable[[PrekeySecrets], None] | None = None

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
        engine_options: dict[str, Any] | None = None,
    ) -> PqxdhKeyExchange:
        """Fresh prekeys for ``did``, published in ``directory``, and the exchange that uses
        them (both roles). Keeping the prekeys across restarts is the key store's job."""
        prekeys, bundle = create_prekeys(
            identity,
            expires_at_us=now_us + valid_for_us,
            # Fresh ids for fresh prekeys: resumption tells "unchanged prekeys" by their ids.
            signed_prekey_id=new_prekey_id(),
            kem_prekey_id=new_prekey_id(),
            one_time_prekey_ids=tuple(range(1, one_time_prekeys + 1)),
        )
        directory.publish_bundle(did, bundle.encode(), now_us)
        return cls.with_prekeys(identity, Responder(identity, prekeys, bundle), directory,
                                **(engine_options or {}))  # fmt: skip

    @classmethod
    def with_prekeys(
        cls, identity: Ed25519PrivateKey, responder: Responder, directory: Directory, **options: Any
    ) -> PqxdhKeyExchange:
        """The exchange for a node whose prekeys are already published (kept in a key store)."""
        engine = HandshakeEngine(identity, responder=responder, **options)
        return cls(
            engine,
            fetch_bundle=directory.fetch_bundle,
            identity_key_of=lambda peer: bytes(directory.resolve(peer).identity_key),
        )

    # ------------------------------------------------------------------ full handshake
    def initiate(self, conversation: UUID, peer_did: str, now_us: int) -> bytes:
        self.expire(now_us)
        bundle = self._fetch_bundle(peer_did, now_us)
        _, init = self.engine.initiate(
            bundle,
            now_us=now_us,
            expected_responder=self._identity_key_of(peer_did),
            source=self.source_of(peer_did),
        )
        self._started(conversation, peer_did, False, now_us)  # the responder's prekeys are used
        return init

    def respond(self, conversation: UUID, peer_did: str, request: bytes, now_us: int) -> bytes:
        try:
            expected = self._identity_key_of(peer_did)
        except (ValueError, LookupError) as error:  # DIDError, ResolutionError
            # Cheap identity checks come before any key-exchange work.
            raise HandshakeRefused(
                f"handshake request from {peer_did!r} refused: {error}"
            ) from None
        outcome = self.engine.receive(
            request, source=self.source_of(peer_did), now_us=now_us, expected_initiator=expected
        )
        responder = self.engine.responder
        if outcome.prekeys_changed and self.on_prekeys_changed and responder is not None:
            self.on_prekeys_changed(responder.secrets)
        if outcome.send is None or outcome.peer_identity != expected:
            # Dropped, not an authentication failure of ``peer_did``: the identity in a refused
            # INIT is unproven, and quarantining the DID it claims would let anyone lock that
            # peer out with forged INITs. The engine has quarantined (identity, source) itself.
            raise HandshakeRefused(
                f"handshake request from {peer_did} refused: "
                + (_why(outcome) if outcome.send is None else "signed by another identity")
            )
        self._started(conversation, peer_did, True, now_us)
        return outcome.send

    # ------------------------------------------------------------------ resumption
    def resume(self, conversation: UUID, peer_did: str, key_material: bytes, now_us: int) -> bytes:
        self.expire(now_us)
        peer = self._identity_key_of(peer_did)
        mine = prekeys_are_mine(key_material, self.identity, peer)
        self._started(conversation, peer_did, mine, now_us)
        ticket = ticket_of(key_material, self.identity, peer)
        return self.engine.resume(ticket, now_us=now_us, source=self.source_of(peer_did))

    def respond_resumption(
        self, conversation: UUID, peer_did: str, request: bytes, key_material: bytes, now_us: int
    ) -> bytes:
        peer = self._identity_key_of(peer_did)
        ticket = ticket_of(key_material, self.identity, peer)
        mine = prekeys_are_mine(key_material, self.identity, peer)
        resumer = self.engine.resume_responder
        assert resumer is not None  # set in __init__
        # SPEC-018 §2.1 "with unchanged prekeys": the prekeys the session was made with must
        # still be current. Only the node that owns them can tell; if they are the resumer's,
        # it knows its own (and the transcript binds their ids), so they are taken as stated.
        responder = self.engine.responder
        resumer.current_prekey_ids = (
            (responder.secrets.signed_prekey_id, responder.secrets.kem_prekey_id)
            if mine and responder is not None
            else ticket.prekey_ids
        )
        self._answering[ticket.session_id] = ticket
        try:
            outcome = self.engine.receive(request, source=self.source_of(peer_did), now_us=now_us)
        finally:
            self._answering.clear()
        if outcome.send is None:
            # Not an authentication failure: the conversation id travels in clear, so anyone
            # can send a RESUME for it; quarantining on that would let them lock the peer out.
            raise NothingToResume(f"resumption refused: {_why(outcome)}")
        self._started(conversation, peer_did, mine, now_us)
        return outcome.send

    # ------------------------------------------------------------------ both
    def complete(self, conversation: UUID, response: bytes, now_us: int) -> tuple[bytes, bytes]:
        outcome, mine = self._finish(conversation, response, now_us)
        if outcome.send is None or outcome.established is None:
            raise AuthenticationFailed(f"handshake response refused: {_why(outcome)}")
        return outcome.send, key_material(outcome.established, self.identity, mine)

    def confirm(self, conversation: UUID, confirmation: bytes, now_us: int) -> bytes:
        outcome, mine = self._finish(conversation, confirmation, now_us)
        if outcome.established is None:
            raise AuthenticationFailed(f"key confirmation refused: {_why(outcome)}")
        return key_material(outcome.established, self.identity, mine)

    def _finish(self, conversation: UUID, data: bytes, now_us: int) -> tuple[Outcome, bool]:
        peer_did, mine, _ = self._peers.get(conversation, ("", False, 0))
        outcome = self.engine.receive(data, source=self.source_of(peer_did), now_us=now_us)
        if outcome.dropped is not None:
            # Stale, stray, malformed or from another address (decision 13): the engine kept
            # waiting, and so does the session. Only a reply that fails verification is an
            # authentication failure of the peer.
            raise StaleFrame(f"handshake reply from {peer_did} dropped: {outcome.dropped}")
        if outcome.established is not None:
            if outcome.established.peer_identity != self._identity_key_of(peer_did):
                raise AuthenticationFailed(f"handshake completed by someone other than {peer_did}")
            self._peers.pop(conversation, None)
        return outcome, mine

    # ------------------------------------------------------------------ time
    @property
    def timeout_us(self) -> int:
        return self.engine.timeout_us

    def expire(self, now_us: int) -> None:
        """Forget the handshakes, and whom they were with, that outlived the timeout."""
        self.engine.expire(now_us)
        while self._peers:
            conversation, (_, _, started_us) = next(iter(self._peers.items()))
            if now_us - started_us < self.engine.timeout_us:
                break
            del self._peers[conversation]

    def _started(self, conversation: UUID, peer_did: str, mine: bool, now_us: int) -> None:
        self._peers.pop(conversation, None)  # to the end: the newest
        self._peers[conversation] = (peer_did, mine, now_us)
        while len(self._peers) > self.engine.max_pending:  # as the engine's table is bounded
            self._peers.popitem(last=False)


def _why(outcome: Outcome) -> str:
    return outcome.dropped or outcome.failed or "no reply"
