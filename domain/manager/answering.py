"""The answering side of the session manager: handshake and resumption requests from peers
(SPEC-018 §2.1; decisions 4, 6, 10, 11, 14 and 16 in docs/spec-decisions.md).

Split from manager.py by idea — what a node does when a peer asks for a session — and mixed
into ``SessionManager``, which provides the lookups and bookkeeping declared below.
"""

from __future__ import annotations

import random
from typing import Any
from uuid import UUID, uuid5

from l2_session.domain.manager.keyexchange import KeyExchange
from l2_session.domain.manager.ledger import Ledger
from l2_session.domain.session.commands import (
    Frame,
    HandshakeRequest,
    HandshakeResponse,
    Output,
    Send,
)
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import (
    AuthenticationFailed,
    InvalidState,
    NothingToResume,
    StaleFrame,
)
from l2_session.domain.session.peer import Peer
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import State, Trigger, is_allowed


class HandshakeAnswering:
    # Provided by SessionManager (manager.py).
    local_did: str
    config: SessionConfig
    _ledger: Ledger
    _kx: KeyExchange
    _rng: random.Random
    _own_prekeys: str
    _last_handshake_frame: dict[UUID, Frame]
    _answered_request: dict[UUID, bytes]
    transport: str

    def peer(self, peer_did: str, now_us: int = 0) -> Peer:
        raise NotImplementedError

    def _find(self, conversation: UUID) -> Session | None:
        raise NotImplementedError

    def _add(self, session: Session) -> None:
        raise NotImplementedError

    def _commit(self, s: Session, *others: Any, arm: bool = True) -> list[Output]:
        raise NotImplementedError

    def _arm(self, s: Session, not_before_us: int = 0) -> None:
        raise NotImplementedError

    def _send(self, s: Session, frame: Frame) -> Send:
        raise NotImplementedError

    def _on_request(self, peer_did: str, frame: HandshakeRequest, now_us: int) -> list[Output]:
        peer = self.peer(peer_did, now_us)
        if not frame.authentic:
            peer.authentication_failed(now_us, self._rng.random())
            self._ledger.save(peer)
            return []
        peer.check_admissible(now_us)
        existing = self._find(frame.conversation)
        if (
            existing is not None
            and not existing.closed
            and existing.state == State.HANDSHAKE_INITIATED
            and peer_did < self.local_did
        ):
            # Decision 16: both ends started a handshake for this conversation (both resume
            # after restarting). The larger DID's goes on; the peer answers it, not we this.
            raise InvalidState(existing.state, Trigger.RECEIVE_HANDSHAKE)
        if frame.resuming:
            if existing is None:
                # Nothing to resume here: the initiator's resumption times out and it falls
                # back to a full handshake (decision 4). Not an authentication failure.
                raise StaleFrame("a resumption for a conversation this node does not have")
            return self._on_resumption(existing, peer, frame, now_us)
        answered = existing is not None and existing.state == State.HANDSHAKE_RECEIVED
        if answered and self._answered_request.get(frame.conversation) in (None, frame.key_share):
            assert existing is not None
            return self._resend(existing)  # a duplicate request: answer it again
        # The initiator retried: the same session answers (decision 10) — one answering an
        # earlier request answers the new one instead (the initiator restarted, or lost our
        # answer and its own half with it: answered with the old answer, it would drop it).
        # A session that is still established refuses until its own heartbeats fail.
        if (
            existing is not None
            and not existing.closed
            and not answered
            and not is_allowed(existing.state, Trigger.RECEIVE_HANDSHAKE)
        ):
            raise InvalidState(existing.state, Trigger.RECEIVE_HANDSHAKE)
        try:
            response = self._kx.respond(frame.conversation, peer_did, frame.key_share, now_us)
        except AuthenticationFailed:
            # §2.1 authentication failure on the responder's side: nothing is opened.
            peer.authentication_failed(now_us, self._rng.random())
            self._ledger.save(peer)
            return []
        if existing is None or existing.closed:
            # A new conversation (or one whose session was cleaned up): a new session.
            salt = self.local_did if existing is None else f"{self.local_did}#{existing.id}"
            session = Session.open(
                peer_did,
                "responder",
                self.config,
                now_us,
                conversation=frame.conversation,
                session_id=uuid5(frame.conversation, salt),
                transport=self.transport,
            )
            self._add(session)
        else:
            session = existing
        if not answered:
            session.receive_handshake(now_us)
        reply = HandshakeResponse(frame.conversation, response, self._own_prekeys)
        self._last_handshake_frame[session.conversation] = reply
        self._answered_request[session.conversation] = frame.key_share
        # Decision 14: saved with its outcome (the key confirmation, a failure or a timeout),
        # in one append. The responder's half of the handshake lives only in memory, so a
        # record of it now could not outlive a crash usefully; nothing to send derives from it.
        self._arm(session)
        return [self._send(session, reply)]

    def _on_resumption(
        self, s: Session, peer: Peer, frame: HandshakeRequest, now_us: int
    ) -> list[Output]:
        """The peer resumes with the keys stored for this conversation (decision 4): answer
        from the stored key material, and take the new keys with its confirmation."""
        if s.key_material is None:
            raise NothingToResume(f"session {s.id} holds no keys to resume (cleaned up?)")
        # Already answering one: a duplicate is answered again; a new one (the peer restarted
        # again before confirming, or mid-rotation) replaces it, or the peer would wait on an
        # answer to a request it no longer has (decision 16).
        answering = s.state in (State.HANDSHAKE_RECEIVED, State.ROTATING)
        # An established session whose peer resumes missed the peer's restart: the new keys
        # replace the current ones like a rotation the peer asked for (no message is lost).
        established = s.state == State.ESTABLISHED
        trigger = Trigger.TIME_TO_ROTATE if established else Trigger.RECEIVE_HANDSHAKE
        if not answering and not is_allowed(s.state, trigger):
            raise InvalidState(s.state, trigger)
        try:
            share = self._kx.respond_resumption(
                s.conversation, s.peer_did, frame.key_share, s.key_material, now_us
            )
        except (NothingToResume, StaleFrame):
            if answering and self._answered_request.get(s.conversation) == frame.key_share:
                return self._resend(s)  # a duplicate (replayed) request: answer it again
            if answering:
                # Not the request answered, nor one from the keys held: the peer saved the
                # keys of that answer and restarted before its confirmation came (decision
                # 16). Answering it with the last answer would look forged to the peer; its
                # resumption times out and a full handshake carries the session on.
                raise StaleFrame(
                    f"a resumption of session {s.id} from keys it never confirmed; refused"
                ) from None
            raise
        reply = HandshakeResponse(s.conversation, share, self._own_prekeys)
        self._last_handshake_frame[s.conversation] = reply
        self._answered_request[s.conversation] = frame.key_share
        if answering:
            return [self._send(s, reply)]
        if trigger is Trigger.TIME_TO_ROTATE:
            s.time_to_rotate(now_us, requested_by_peer=True)
        else:
            s.receive_handshake(now_us)
        return [*self._commit(s, peer), self._send(s, reply)]

    def _resend(self, s: Session) -> list[Output]:
        """Answer again with the last handshake frame, when the peer shows it lost it."""
        frame = self._last_handshake_frame.get(s.conversation)
        return [] if frame is None else [self._send(s, frame)]
