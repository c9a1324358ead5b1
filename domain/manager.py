"""The session manager: SPEC-018 §5.2 ``establish`` / ``resume`` / ``accept`` / ``tick``.

Sans-I/O. Every entry point takes ``now_us`` and returns the outputs to perform (``Send``
a frame, ``Deliver`` a message); it never touches a socket or a clock. Frames and deadlines
become ``Session`` / ``Peer`` commands; the aggregates decide; the manager saves what they
recorded to the ledger and re-arms the session's next deadline.

Deadlines live in one binary heap keyed by time, one live entry per session (older entries
are skipped by generation), so ``tick`` costs O(due timers · log n), not O(sessions).

Key agreement here is a stand-in (BLAKE2b of both key shares) so that the state machine can
be simulated end to end; the PQxdh handshake (docs/handshake.md) replaces it.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from l2_session.domain import timers
from l2_session.domain.commands import (
    Data,
    DataAck,
    Deliver,
    Frame,
    HandshakeAck,
    HandshakeRequest,
    HandshakeResponse,
    Heartbeat,
    HeartbeatAck,
    Output,
    RotationRequest,
    RotationResponse,
    Send,
)
from l2_session.domain.config import DEFAULT_CONFIG, SessionConfig
from l2_session.domain.errors import SessionError, UnknownSession
from l2_session.domain.peer import Peer, peer_id
from l2_session.domain.session import Session
from l2_session.domain.states import State

log = logging.getLogger("l2_session.session")


class Repository(Protocol):
    def get(self, aggregate_id: UUID) -> Any: ...


class Ledger(Protocol):
    """What the manager needs of the ledger: any eventsourcing ``Application`` fits."""

    @property
    def repository(self) -> Any: ...

    def save(self, *objs: Any, **kwargs: Any) -> Any: ...


def derive_key(initiator_share: bytes, responder_share: bytes) -> bytes:
    return hashlib.blake2b(initiator_share + responder_share, digest_size=32).digest()


class SessionManager:
    def __init__(
        self,
        local_did: str,
        ledger: Ledger,
        config: SessionConfig = DEFAULT_CONFIG,
        *,
        seed: int = 0,
        prekeys_of: Callable[[str], str] = lambda did: "",
        own_prekeys: str = "",
    ) -> None:
        self.local_did = local_did
        self.config = config
        self._ledger = ledger
        self._rng = random.Random(seed)  # jitter and key shares; seeded for simulations
        self._prekeys_of = prekeys_of
        self._own_prekeys = own_prekeys
        self._sessions: dict[UUID, Session] = {}
        self._conversations: dict[UUID, UUID] = {}
        self._peers: dict[str, Peer] = {}
        self._heap: list[tuple[int, int, UUID]] = []
        self._armed: dict[UUID, int] = {}
        self._generation = itertools.count()
        self._shares: dict[UUID, bytes] = {}  # ephemeral shares in flight: memory only
        self.dropped_frames = 0

    # ------------------------------------------------------------------ lookups
    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def session(self, session_id: UUID) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise UnknownSession(session_id) from None

    def session_for(self, conversation: UUID) -> Session | None:
        sid = self._conversations.get(conversation)
        return None if sid is None else self._sessions[sid]

    def peer(self, peer_did: str) -> Peer:
        found = self._peers.get(peer_did)
        if found is None:
            try:
                found = self._ledger.repository.get(peer_id(peer_did))
            except AggregateNotFoundError:  # a peer never seen before
                found = Peer.register(peer_did, self.config, 0)
            self._peers[peer_did] = found
        return found

    def __len__(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------ §5.2 API
    def establish(self, peer_did: str, now_us: int) -> tuple[UUID, list[Output]]:
        peer = self.peer(peer_did)
        peer.check_admissible(now_us)
        session = Session.open(peer_did, "initiator", self.config, now_us)
        session.initiate_handshake(now_us)
        self._add(session)
        return session.id, self._commit(session, peer)

    def restore(self, session_id: UUID) -> Session:
        """After a restart: replay the session from the ledger and re-arm its deadlines."""
        session: Session = self._ledger.repository.get(session_id)
        self._add(session)
        self._arm(session)
        return session

    def resume(self, session_id: UUID, now_us: int) -> list[Output]:
        session = self.session(session_id)
        peer = self.peer(session.peer_did)
        peer.check_admissible(now_us)
        session.initiate_resumption(now_us, self._prekeys_of(session.peer_did))
        return self._commit(session, peer)

    def submit(self, session_id: UUID, payload: bytes, now_us: int) -> list[Output]:
        session = self.session(session_id)
        session.submit_message(now_us, payload)
        return self._commit(session)

    def cleanup(self, session_id: UUID, now_us: int) -> list[Output]:
        session = self.session(session_id)
        session.cleanup(now_us)
        return self._commit(session)

    def link_event(self, session_id: UUID, what: str, now_us: int) -> list[Output]:
        """Transport signals: ``connectivity_lost``, ``connectivity_restored``,
        ``transport_failed``, ``transport_switched`` (§2.3)."""
        session = self.session(session_id)
        command = {
            "connectivity_lost": session.connectivity_lost,
            "connectivity_restored": session.connectivity_restored,
            "transport_failed": session.transport_failed,
            "transport_switched": session.transport_switched,
        }[what]
        command(now_us)
        return self._commit(session)

    # ------------------------------------------------------------------ frames
    def receive(self, peer_did: str, frame: Frame, now_us: int) -> list[Output]:
        """A frame from ``peer_did``. Frames that do not fit the session's state (late,
        duplicated, replayed) are dropped and counted: the network is not trusted."""
        try:
            if isinstance(frame, HandshakeRequest):
                return self._on_request(peer_did, frame, now_us)
            session = self.session_for(frame.conversation)
            if session is None or session.peer_did != peer_did:
                raise UnknownSession(frame.conversation)
            return self._on_frame(session, frame, now_us)
        except SessionError as error:
            self.dropped_frames += 1
            log.debug("dropped %s from %s: %s", type(frame).__name__, peer_did, error)
            return []

    def _on_request(self, peer_did: str, frame: HandshakeRequest, now_us: int) -> list[Output]:
        peer = self.peer(peer_did)
        if not frame.authentic:
            peer.authentication_failed(now_us, self._rng.random())
            self._ledger.save(peer)
            return []
        peer.check_admissible(now_us)
        existing = self.session_for(frame.conversation)
        share = self._rng.randbytes(32)
        if existing is not None and frame.resuming:
            # The initiator resumes with the stored keys (decision 4); answer with ours.
            if existing.state in (State.SUSPENDED, State.FAILED):
                existing.initiate_resumption(now_us, existing.prekeys or "")
                existing.receive_valid_response(now_us)
            reply = HandshakeResponse(frame.conversation, b"", self._own_prekeys)
            return [*self._commit(existing, peer), self._send(existing, reply)]
        salt = self.local_did
        if existing is not None:
            if existing.state == State.HANDSHAKE_RECEIVED:
                raise UnknownSession(frame.conversation)  # a duplicate: already answered
            # The initiator started over (a retry): this end opens a fresh responder session
            # for the conversation; the old one is closed if it can be, else left to its
            # timers (it will never hear from the peer again).
            if existing.state in (State.SUSPENDED, State.FAILED) and not existing.closed:
                existing.cleanup(now_us)
                self._commit(existing)
            salt = f"{self.local_did}#{existing.id}"
        session = Session.open(
            peer_did,
            "responder",
            self.config,
            now_us,
            conversation=frame.conversation,
            session_id=uuid5(frame.conversation, salt),
        )
        session.receive_handshake(now_us, derive_key(frame.key_share, share))
        self._add(session)
        reply = HandshakeResponse(frame.conversation, share, self._own_prekeys)
        return [*self._commit(session, peer), self._send(session, reply)]

    def _on_frame(self, s: Session, frame: Frame, now_us: int) -> list[Output]:
        out: list[Output] = []
        touched: list[Any] = []
        if isinstance(frame, HandshakeResponse | RotationResponse) and not frame.authentic:
            peer = self.peer(s.peer_did)
            retry_at = peer.authentication_failed(now_us, self._rng.random())
            s.receive_invalid_signature(now_us, retry_at)
            touched.append(peer)
        elif isinstance(frame, HandshakeResponse):
            if s.resuming:
                s.receive_valid_response(now_us, prekeys=frame.prekeys or None)
            else:
                share = self._shares.pop(s.id, b"")
                key = derive_key(share, frame.key_share)
                s.receive_valid_response(now_us, key, frame.prekeys or None)
            out.append(self._send(s, HandshakeAck(s.conversation)))
            touched.append(self._peer_succeeded(s, now_us))
        elif isinstance(frame, HandshakeAck):
            if not frame.authentic:
                peer = self.peer(s.peer_did)
                s.receive_invalid_signature(now_us, None)
                peer.authentication_failed(now_us, self._rng.random())
                touched.append(peer)
            else:
                s.receive_ack(now_us)
                touched.append(self._peer_succeeded(s, now_us))
        elif isinstance(frame, Heartbeat):
            if s.closed or s.state not in (State.ESTABLISHED, State.DEGRADED, State.ROTATING):
                raise UnknownSession(frame.conversation)
            out.append(self._send(s, HeartbeatAck(s.conversation, frame.counter)))
            if s.state != State.DEGRADED or s.heartbeat_sent_us is not None:
                return out
            # The peer is talking to us again: attempt re-establishment (decision 5).
            s.connectivity_restored(now_us)
        elif isinstance(frame, HeartbeatAck):
            s.receive_heartbeat_ack(now_us, frame.counter)
        elif isinstance(frame, Data):
            if s.receive_message(now_us, frame.seq, frame.payload):
                out.append(Deliver(s.id, frame.seq, frame.payload))
            out.append(self._send(s, DataAck(s.conversation, s.next_expected_seq - 1)))
        elif isinstance(frame, DataAck):
            s.receive_message_ack(now_us, frame.up_to_seq)
        elif isinstance(frame, RotationRequest):
            share = self._rng.randbytes(32)
            s.time_to_rotate(now_us, requested_by_peer=True)
            s.rotation_complete(now_us, derive_key(frame.key_share, share))
            out.append(self._send(s, RotationResponse(s.conversation, share)))
        else:  # RotationResponse
            share = self._shares.pop(s.id, b"")
            s.rotation_complete(now_us, derive_key(share, frame.key_share))
        # Direct replies first: the handshake ack must reach the peer before flushed data.
        return [*out, *self._commit(s, *touched)]

    def _peer_succeeded(self, s: Session, now_us: int) -> Peer:
        peer = self.peer(s.peer_did)
        peer.succeeded(now_us)
        return peer

    # ------------------------------------------------------------------ timers
    def tick(self, now_us: int) -> list[Output]:
        """SPEC-018 §5.2 ``tick``: fire every deadline that is due, O(due · log n)."""
        due: list[UUID] = []
        while self._heap and self._heap[0][0] <= now_us:
            _, generation, sid = heapq.heappop(self._heap)
            if self._armed.get(sid) != generation:
                continue  # superseded by a later schedule
            del self._armed[sid]
            due.append(sid)
        # Collected first, fired after: a session re-armed while firing waits for the next
        # tick, so one tick always ends.
        out: list[Output] = []
        for sid in due:
            out.extend(self._fire_due(self._sessions[sid], now_us))
        return out

    def next_wakeup_us(self) -> int | None:
        while self._heap and self._armed.get(self._heap[0][2]) != self._heap[0][1]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def _fire_due(self, s: Session, now_us: int) -> list[Output]:
        out: list[Output] = []
        not_before = 0
        while (due := timers.next_deadline(s)) is not None and due[0] <= now_us:
            timer = due[1]
            try:
                out.extend(self._fire(s, timer, now_us))
            except SessionError as error:
                # The deadline stays (it is derived from the session); wake up again when it
                # can fire, not at once, or tick would spin on it.
                not_before = getattr(error, "until_us", now_us + timers.US)
                log.info("timer %s of session %s deferred: %s", timer, s.id, error)
                break
        self._arm(s, not_before)
        return out

    def _fire(self, s: Session, timer: timers.Timer, now_us: int) -> list[Output]:
        touched: list[Any] = []
        T = timers.Timer
        if timer in (T.HANDSHAKE_TIMEOUT, T.ROTATION_TIMEOUT):
            retry_at = None
            if s.role == "initiator":
                peer = self.peer(s.peer_did)
                retry_at = peer.schedule_retry(now_us, self._rng.random())
                touched.append(peer)
            if timer is T.HANDSHAKE_TIMEOUT:
                s.handshake_timed_out(now_us, retry_at)
            else:
                s.rotation_timed_out(now_us, retry_at)
        elif timer is T.SEND_HEARTBEAT:
            s.heartbeat_due(now_us)
        elif timer is T.HEARTBEAT_RESPONSE:
            s.heartbeat_timed_out(now_us)
        elif timer in (T.SUSPENDED_RECOVERY, T.RETRY_BACKOFF):
            peer = self.peer(s.peer_did)
            peer.check_admissible(now_us)
            (s.retry if timer is T.SUSPENDED_RECOVERY else s.retry_with_backoff)(now_us)
        elif timer is T.PARTITION:
            s.partition_detected(now_us)
        elif timer is T.DEGRADED_TIMEOUT:
            s.degraded_timed_out(now_us)
        elif timer is T.ROTATION:
            s.time_to_rotate(now_us)
        else:  # LEASE_EXPIRY
            s.cleanup(now_us)
        return self._commit(s, *touched, arm=False)

    # ------------------------------------------------------------------ bookkeeping
    def _add(self, session: Session) -> None:
        self._sessions[session.id] = session
        self._conversations[session.conversation] = session.id

    def _arm(self, s: Session, not_before_us: int = 0) -> None:
        due = timers.next_deadline(s)
        if due is None:
            self._armed.pop(s.id, None)
            return
        generation = next(self._generation)
        self._armed[s.id] = generation
        heapq.heappush(self._heap, (max(due[0], not_before_us), generation, s.id))
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._armed):
            # Lazy deletion leaves superseded entries; compact before they dominate.
            self._heap = [e for e in self._heap if self._armed.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    def _commit(self, s: Session, *others: Any, arm: bool = True) -> list[Output]:
        """Save what was recorded, derive what to send from it, re-arm the deadline."""
        new_events = list(s.pending_events)
        self._ledger.save(s, *others)
        out = self._effects(s, new_events)
        if arm:
            self._arm(s)
        return out

    def _send(self, s: Session, frame: Frame) -> Send:
        return Send(s.peer_did, frame, s.transport)

    def _effects(self, s: Session, events: list[Any]) -> list[Output]:
        """What the recorded events ask to put on the wire."""
        out: list[Output] = []
        flush = False
        for e in events:
            name = type(e).__name__
            if name == "HandshakeInitiated" and s.role == "initiator":
                share = self._rng.randbytes(32)
                self._shares[s.id] = share
                out.append(self._send(s, HandshakeRequest(s.conversation, share, e.resuming)))
            elif name in ("HeartbeatSent", "ReestablishmentAttempted"):
                out.append(self._send(s, Heartbeat(s.conversation, e.counter)))
                flush = flush or name == "HeartbeatSent"  # retransmit what is unacked
            elif name == "HeartbeatMissed" and e.state == State.ESTABLISHED:
                log.warning(
                    "session %s: peer %s missed heartbeat %d of %d",
                    s.id, s.peer_did, e.missed, s.config.heartbeat_tolerance,
                )  # fmt: skip
            elif name == "RotationStarted" and e.trigger and s.role == "initiator":
                share = self._rng.randbytes(32)
                self._shares[s.id] = share
                out.append(self._send(s, RotationRequest(s.conversation, share)))
            elif name in ("Established", "HeartbeatAnswered", "TransportSwitched", "MessageQueued"):
                flush = True
            elif name == "MessagesAcknowledged":
                # Go-back-N: an ack that leaves a gap resends the rest at once, instead of
                # waiting for the next heartbeat.
                flush = True
        if flush:
            sent = {f.frame.seq for f in out if isinstance(f, Send) and isinstance(f.frame, Data)}
            for seq, payload in s.sendable():
                if seq not in sent:
                    out.append(self._send(s, Data(s.conversation, seq, payload)))
        return out
