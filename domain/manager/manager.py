"""The session manager: SPEC-018 §5.2 ``establish`` / ``resume`` / ``accept`` / ``tick``
(``accept`` is ``receive`` of a ``HandshakeRequest``).

Sans-I/O. Every entry point takes ``now_us`` and returns the outputs to perform (``Send``
a frame, ``Deliver`` a message); it never touches a socket or a clock. Frames and deadlines
become ``Session`` / ``Peer`` commands; the aggregates decide; the manager saves what they
recorded to the ledger and re-arms the session's next deadline.

Answering a peer's handshake or resumption request is answering.py's; starting again
over an existing ledger (decision 16) recovery.py's; closing a session and the linger
after it (decision 17) closing.py's.

Deadlines live in one binary heap (deadlines.py), one live entry per session, so ``tick``
costs O(due timers · log n), not O(sessions). ``tick`` is also where time passes for what
the manager holds besides sessions: the key exchange's handshakes in progress, the peers in
memory (peer_table.py) and the count of handshakes never confirmed (unconfirmed.py), each
bounded and let go on the clock, not on unrelated activity.

Keys come from a ``KeyExchange`` (keyexchange.py): by default the deterministic
``MockKeyExchange`` for simulations; ``PqxdhKeyExchange`` (pqxdh.py) for real
keys — full handshakes, rotations and resumptions from the key material sealed in the ledger.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Literal, NamedTuple
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from l2_session.domain.manager.answering import HandshakeAnswering
from l2_session.domain.manager.closing import Closing
from l2_session.domain.manager.deadlines import DeadlineHeap
from l2_session.domain.manager.keyexchange import KeyExchange, MockKeyExchange
from l2_session.domain.manager.ledger import Ledger
from l2_session.domain.manager.outbound import outputs_for, send
from l2_session.domain.manager.peer_table import PeerTable, holds_unsaved
from l2_session.domain.manager.recovery import Recovery
from l2_session.domain.manager.reservations import reserve_with_keys
from l2_session.domain.manager.transmit import Transmissions
from l2_session.domain.manager.unconfirmed import (
    UnconfirmedTally,
    goes_unwritten,
    never_saved_answer,
)
from l2_session.domain.session import timers
from l2_session.domain.session.commands import (
    Close,
    CloseAck,
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
    RotationConfirm,
    RotationRequest,
    RotationResponse,
    Send,
)
from l2_session.domain.session.config import DEFAULT_CONFIG, SessionConfig
from l2_session.domain.session.errors import (
    AuthenticationFailed,
    SessionError,
    StaleFrame,
    UnknownSession,
)
from l2_session.domain.session.peer import Peer, peer_id
from l2_session.domain.session.session import KNOWN_TRANSPORTS, TRANSPORTS, Session
from l2_session.domain.session.states import State, Trigger, is_allowed

log = logging.getLogger("l2_session.session")

MAX_PEERS = 10_000  # peers in memory; the rest are read from the ledger when needed
PEER_IDLE_US = 600 * timers.US  # a peer unused this long leaves memory
SUMMARY_INTERVAL_US = 60 * timers.US  # a summary of unconfirmed handshakes, at most this often


class _Fired(NamedTuple):
    """What one tick did to one session: the events its timers recorded, in order, and
    when to wake it next (None: no deadline pending)."""

    session: Session
    events: list[Any]
    wake_at_us: int | None


class _AfterSave(NamedTuple):
    """In a batch: the outputs of ``events`` (one command's), derived once the batch is saved."""

    session: Session
    events: list[Any]


class _AckPoint:
    """Where a data frame's acknowledgement may go, once what it delivered is saved. In a
    batch only the last one of each session answers: one acknowledgement per session."""

    __slots__ = ("now_us", "session")

    def __init__(self, session: Session, now_us: int) -> None:
        self.session, self.now_us = session, now_us


# ``receive_each``'s ``answer``: a message delivered (session id, payload) -> the answer to
# queue on that session in the same save, or None.
Answer = Callable[[UUID, bytes], "bytes | None"]


class _Batch:
    """What the commands of one ``receive_many`` / ``establish_many`` recorded, saved at once."""

    def __init__(self) -> None:
        self.sessions: dict[UUID, Session] = {}
        self.peers: dict[UUID, Peer] = {}
        self.claimed: dict[UUID, int] = {}  # per session: pending events already claimed
        self.arm: set[UUID] = set()
        self.ack_points: dict[UUID, _AckPoint] = {}  # per session: the last one
        self.answer: Answer | None = None  # receive_each's: answers ride with deliveries
        self.answered: set[tuple[UUID, int]] = set()  # (session, seq) the answer took

    def forget(self, session_id: UUID) -> None:
        """A session the batch must not save after all (decision 18)."""
        self.sessions.pop(session_id, None)
        self.claimed.pop(session_id, None)
        self.arm.discard(session_id)

    def add(self, s: Session, others: tuple[Any, ...], arm: bool) -> _AfterSave:
        self.sessions[s.id] = s
        for other in others:
            self.peers[other.id] = other
        if arm:
            self.arm.add(s.id)
        pending = s.pending_events
        start, self.claimed[s.id] = self.claimed.get(s.id, 0), len(pending)
        return _AfterSave(s, list(pending[start:]))


_HANDSHAKING = frozenset({State.HANDSHAKE_INITIATED, State.HANDSHAKE_RECEIVED})
# States in which a session's last handshake frame is never answered again (it is dropped).
_FORGET_HANDSHAKE_FRAME_IN = frozenset({State.FAILED, State.SUSPENDED})


def _check_key_exchange_outlasts_replies(kx: KeyExchange, config: SessionConfig) -> None:
    """The key exchange forgets a handshake after its own timeout (``expire``, on every
    tick); a config that waits longer for a reply would see the reply dropped as stale."""
    kept = kx.timeout_us
    waits_us = round(max(config.handshake_timeout, config.rotation_timeout) * 1e6)
    if kept is not None and kept < waits_us:
        raise ValueError(
            f"the key exchange keeps a handshake {kept / 1e6:g} s, but the config waits "
            f"{waits_us / 1e6:g} s for a reply (handshake_timeout / rotation_timeout): give "
            "the handshake engine a timeout_us at least that long, or shorten the config"
        )


class SessionManager(HandshakeAnswering, Recovery, Closing):
    """The sans-I/O session manager of SPEC-018 §5.2 (``establish``, ``resume``, ``accept``
    as ``receive``, ``tick``): every call takes the time and returns outputs — frames to send,
    messages to deliver — after its events are saved in ``ledger``. No I/O, no clock, no
    thread: a caller that runs its own loop drives it (``transports.tcp.TcpNode`` does, under
    ``l2_session.Node``); docs/session-manager.md says how.

    ``key_exchange`` is required: a ``PqxdhKeyExchange`` (real X25519 + ML-KEM-768 keys), or
    ``"mock"`` — the deterministic stand-in of simulations and tests, only when named.
    """

    def __init__(
        self,
        local_did: str,
        ledger: Ledger,
        config: SessionConfig = DEFAULT_CONFIG,
        *,
        seed: int = 0,
        prekeys_of: Callable[[str], str] = lambda did: "",
        own_prekeys: str = "",
        key_exchange: KeyExchange | Literal["mock"] | None = None,
        transport: str = TRANSPORTS[0],
        max_peers: int = MAX_PEERS,
        peer_idle_us: int = PEER_IDLE_US,
        summary_interval_us: int = SUMMARY_INTERVAL_US,
    ) -> None:
        for name, value in (
            ("max_peers", max_peers),
            ("peer_idle_us", peer_idle_us),
            ("summary_interval_us", summary_interval_us),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if transport not in KNOWN_TRANSPORTS:
            raise ValueError(f"transport {transport!r} is not one of {', '.join(KNOWN_TRANSPORTS)}")
        # The transport new sessions record (decision 20); a transport adapter sets its own.
        self.transport = transport
        self.local_did = local_did
        self.config = config
        self._ledger = ledger
        self._rng = random.Random(seed)  # backoff jitter; seeded for simulations
        if key_exchange is None:
            raise TypeError(
                "SessionManager needs key_exchange: a PqxdhKeyExchange for real keys "
                "(l2_session.Node makes one from a key store), or key_exchange='mock' for "
                "the deterministic stand-in of simulations and tests"
            )
        if isinstance(key_exchange, str) and key_exchange != "mock":
            raise ValueError(f"key_exchange {key_exchange!r}: a KeyExchange, or 'mock'")
        self._kx: KeyExchange = MockKeyExchange(seed) if key_exchange == "mock" else key_exchange
        _check_key_exchange_outlasts_replies(self._kx, config)
        self._prekeys_of = prekeys_of
        self._own_prekeys = own_prekeys
        self._sessions: dict[UUID, Session] = {}
        # The sessions in memory by peer: what a connection to a peer concerns (transport_found)
        # without a scan of every session. A list: one session per peer is the common case.
        self._by_peer: dict[str, list[UUID]] = {}
        self._conversations: dict[UUID, UUID] = {}
        self._peers = PeerTable(max_peers, peer_idle_us)
        self._unconfirmed = UnconfirmedTally(local_did, summary_interval_us)
        self._deadlines = DeadlineHeap()
        # How messages travel: in flight, timers, acknowledgements owed (transmit.py). Memory.
        self._transmit = Transmissions()
        self._now_us = 0  # the latest time an entry point was given
        # The last handshake frame sent per conversation, to answer again if the peer shows
        # it was lost (a lost key confirmation strands the responder). Memory only.
        self._last_handshake_frame: dict[UUID, Frame] = {}
        # The request each of those answers, if one: a new request is told from a duplicate
        # by it (answering.py). Memory only, kept and let go with the frame.
        self._answered_request: dict[UUID, bytes] = {}
        self.dropped_frames = 0
        self.failed_frames = 0  # frames of a batch whose deciding raised, each dropped alone
        self.held_for_answers = 0  # data frames left undecided: no room for their answers
        self.failed_answers = 0  # answers that raised or could not be queued
        self._batch: _Batch | None = None  # inside receive_many / establish_many
        # Decision 16: the restart is recorded once, before anything else touches a session.
        self._recovered = False
        self._awaiting_peer = {}  # peer -> sessions resumed when it is reachable again
        # Decision 17: closed sessions kept for their close exchange, and when each wakes.
        self._lingering = {}
        self._linger_deadlines = DeadlineHeap()

    # ------------------------------------------------------------------ lookups
    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def session(self, session_id: UUID) -> Session:
        """A live session; or a closed one, read from the ledger (closed sessions leave
        memory: ``_settle``, after their linger, decision 17). Any other session not in memory
        is ``UnknownSession`` (after a restart, ``recover`` loads the live ones)."""
        found = self._sessions.get(session_id)
        if found is not None:
            return found
        try:
            stored = self._ledger.repository.get(session_id)
        except AggregateNotFoundError:
            raise UnknownSession(session_id) from None
        if isinstance(stored, Session) and stored.closed:
            return stored
        raise UnknownSession(session_id)

    def session_for(self, conversation: UUID) -> Session | None:
        sid = self._conversations.get(conversation)
        return None if sid is None else self._sessions[sid]

    def peer(self, peer_did: str, now_us: int = 0) -> Peer:
        """The peer's standing (decision 7), from memory, the ledger, or new at ``now_us``."""
        self._peers.now_us = max(self._peers.now_us, now_us)
        found = self._peers.get(peer_did)
        if found is None:
            try:
                found = self._ledger.repository.get(peer_id(peer_did))
            except AggregateNotFoundError:  # a peer never seen before
                found = Peer.register(peer_did, self.config, now_us)
            self._peers[peer_did] = found
        return found

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions_with(self, peer_did: str) -> list[Session]:
        """The sessions in memory with ``peer_did`` (none of them closed)."""
        return [self._sessions[sid] for sid in self._by_peer.get(peer_did, ())]

    def sessions(self) -> list[Session]:
        """The sessions in memory: every one not closed (``session`` reads a closed one back
        from the ledger)."""
        return list(self._sessions.values())

    # ------------------------------------------------------------------ §5.2 API
    def _begin(self, now_us: int) -> None:
        """Every entry point given a time: note it, and record a restart first (decision 16)."""
        self._now_us = max(self._now_us, now_us)
        self._recover_once(now_us)

    def establish(self, peer_did: str, now_us: int) -> tuple[UUID, list[Output]]:
        self._begin(now_us)
        peer = self.peer(peer_did, now_us)
        peer.check_admissible(now_us)
        session = Session.open(peer_did, "initiator", self.config, now_us, transport=self.transport)
        session.initiate_handshake(now_us)
        self._add(session)
        return session.id, self._commit(session, peer)

    def establish_many(
        self, peer_dids: Iterable[str], now_us: int
    ) -> tuple[list[UUID | SessionError], list[Output]]:
        """``establish`` with each peer, every session's first events saved in one ``save``
        (one group commit); then the handshake requests, in order. Per peer: the new
        session's id, or the ``SessionError`` that refused it (a quarantined peer, say) —
        one refusal does not stop the others."""
        results: list[UUID | SessionError] = []
        self._begin(now_us)

        def each() -> list[list[Output | _AfterSave]]:
            out: list[list[Output | _AfterSave]] = []
            for peer_did in peer_dids:
                try:
                    sid, outputs = self.establish(peer_did, now_us)
                except SessionError as error:
                    results.append(error)
                    continue
                results.append(sid)
                out.append(list(outputs))  # inside a batch: an _AfterSave (_commit)
            return out

        return results, [o for group in self._in_one_save(each) for o in group]

    def _find(self, conversation: UUID) -> Session | None:
        """The session for ``conversation``: in memory, or else replayed from the ledger
        after a restart — as initiator (the conversation is its id) or as first responder."""
        found = self.session_for(conversation)
        if found is not None:
            return found
        for candidate in (conversation, uuid5(conversation, self.local_did)):
            stored = self._stored(candidate, conversation)
            if stored is None:
                continue
            if stored.role == "responder":
                stored = self._newest_answer(stored)
            if not stored.closed:  # a closed one is only read (it stays out of memory)
                self._add(stored)
                self._arm(stored)
                self._transmit.replayed(stored, self._now_us)
            return stored
        return None

    def _stored(self, session_id: UUID, conversation: UUID) -> Session | None:
        try:
            stored = self._ledger.repository.get(session_id)
        except AggregateNotFoundError:
            return None
        return (
            stored if isinstance(stored, Session) and stored.conversation == conversation else None
        )

    def _newest_answer(self, first: Session) -> Session:
        """A conversation answered again after its session closed has a new responder session
        (answering.py: id from the closed one's); the newest is the one that counts."""
        newest = first
        while newest.closed:
            following = uuid5(newest.conversation, f"{self.local_did}#{newest.id}")
            found = self._stored(following, newest.conversation)
            if found is None:
                break
            newest = found
        return newest

    def restore(self, session_id: UUID) -> Session:
        """Replay the session from the ledger and re-arm its deadlines. After a restart there
        is no need: ``recover`` (which every entry point given a time calls first) has found
        and loaded every session that was live, and recorded the restart (decision 16)."""
        session: Session = self._ledger.repository.get(session_id)
        self._add(session)
        self._arm(session)
        self._transmit.replayed(session, self._now_us)  # in flight is unknown: send again
        return session

    def resume(self, session_id: UUID, now_us: int) -> list[Output]:
        self._begin(now_us)  # a session live before a restart is suspended first
        session = self.session(session_id)
        peer = self.peer(session.peer_did)
        peer.check_admissible(now_us)
        session.initiate_resumption(now_us, self._prekeys_of(session.peer_did))
        return self._commit(session, peer)

    def submit(self, session_id: UUID, payload: bytes, now_us: int) -> list[Output]:
        self._begin(now_us)
        session = self.session(session_id)
        session.submit_message(now_us, payload)
        return self._commit(session)

    def submit_many(
        self, messages: Iterable[tuple[UUID, bytes]], now_us: int
    ) -> list[list[Output] | SessionError]:
        """``submit`` of each ``(session_id, payload)``, everything they recorded saved in one
        ``save`` (one group commit), then each message's outputs, in order. Per message: its
        outputs, or the ``SessionError`` that refused it (``WindowFull``, say) — one refusal
        does not stop the others. If the save fails, nothing was queued and it raises."""
        self._begin(now_us)
        results: list[SessionError | None] = []

        def each() -> list[list[Output | _AfterSave]]:
            out: list[list[Output | _AfterSave]] = []
            for session_id, payload in messages:
                try:
                    out.append(list(self.submit(session_id, payload, now_us)))
                except SessionError as error:
                    results.append(error)
                    continue
                results.append(None)
            return out

        groups = iter(self._in_one_save(each))
        return [next(groups) if refused is None else refused for refused in results]

    def send_room(self, session_id: UUID) -> int:
        """How many more messages ``session_id`` takes before ``WindowFull``."""
        return self.session(session_id).send_room

    def cleanup(self, session_id: UUID, now_us: int) -> list[Output]:
        self._begin(now_us)
        session = self.session(session_id)
        session.cleanup(now_us)
        return self._commit(session)

    def link_event(self, session_id: UUID, what: str, now_us: int) -> list[Output]:
        """Transport signals: ``connectivity_lost``, ``connectivity_restored``,
        ``transport_failed``, ``transport_switched`` (§2.3)."""
        self._begin(now_us)
        session = self.session(session_id)
        command = {
            "connectivity_lost": session.connectivity_lost,
            "connectivity_restored": session.connectivity_restored,
            "transport_failed": session.transport_failed,
            "transport_switched": session.transport_switched,
        }[what]
        command(now_us)
        return self._commit(session)

    def transport_lost(self, peer_did: str, transport: str, now_us: int) -> list[Output]:
        """SPEC-018 §2.3: the ``transport`` connection to ``peer_did`` died. Every live
        session with the peer over it that can fall back records ``transport_failed`` — its
        transport becomes the next in the order (QUIC → μTCP) and its messages are held —
        in one save; the others are left to their heartbeats."""
        return self._transport_step(peer_did, transport, now_us, lost=True)

    def transport_found(self, peer_did: str, transport: str, now_us: int) -> list[Output]:
        """A ``transport`` connection to ``peer_did`` is up: every session with the peer
        whose fallback to that transport is pending records ``transport_switched`` (one
        save), and sends what it held. A μTCP connection also moves the peer's live
        sessions still over QUIC — the peer fell back (its end saw QUIC fail): each records
        the fallback and the switch at once."""
        fallen: list[Output] = []
        if transport == TRANSPORTS[-1]:
            fallen = self._transport_step(peer_did, TRANSPORTS[0], now_us, lost=True)
        return fallen + self._transport_step(peer_did, transport, now_us, lost=False)

    def transport_proven(self, peer_did: str, transport: str, now_us: int) -> list[Output]:
        """A ``transport`` link to ``peer_did`` carried, both ways, frames sealed under its
        sessions' keys (decision 24: QUIC works again). Every live session with the peer over
        a transport later in the order, and no fallback pending, moves back to it
        (``transport_switched``, one save) and sends again what was in flight."""
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
        rank = TRANSPORTS.index(transport)

        def later(s: Session) -> bool:
            return (
                not s.fallback_pending
                and s.transport in TRANSPORTS
                and TRANSPORTS.index(s.transport) > rank
            )

        return self._each_on_link(
            peer_did, now_us, Trigger.TRANSPORT_SWITCHED, later,
            lambda s: s.transport_switched(now_us, transport),
        )  # fmt: skip

    def _transport_step(
        self, peer_did: str, transport: str, now_us: int, *, lost: bool
    ) -> list[Output]:
        if lost and transport not in TRANSPORTS[:-1]:
            self._begin(now_us)
            return []  # the last in the order: nothing to fall back to
        if lost:
            return self._each_on_link(
                peer_did, now_us, Trigger.TRANSPORT_FAILED,
                lambda s: s.transport == transport and not s.fallback_pending,
                lambda s: s.transport_failed(now_us),
            )  # fmt: skip
        return self._each_on_link(
            peer_did, now_us, Trigger.TRANSPORT_SWITCHED,
            lambda s: s.transport == transport and s.fallback_pending,
            lambda s: s.transport_switched(now_us),
        )  # fmt: skip

    def _each_on_link(
        self,
        peer_did: str,
        now_us: int,
        trigger: Trigger,
        chosen: Callable[[Session], bool],
        command: Callable[[Session], object],
    ) -> list[Output]:
        """``command`` on every live session with ``peer_did`` that is ``chosen`` and whose
        state takes ``trigger``, all in one save."""
        self._begin(now_us)

        def each() -> list[list[Output | _AfterSave]]:
            out: list[list[Output | _AfterSave]] = []
            for sid in list(self._by_peer.get(peer_did, ())):
                s = self._sessions[sid]
                if s.closed or not chosen(s) or not is_allowed(s.state, trigger):
                    continue
                command(s)
                out.append(list(self._commit(s)))
            return out

        return [o for group in self._in_one_save(each) for o in group]

    # ------------------------------------------------------------------ frames
    def receive(self, peer_did: str, frame: Frame, now_us: int) -> list[Output]:
        """A frame from ``peer_did``. Frames that do not fit the session's state (late,
        duplicated, replayed) are dropped and counted: the network is not trusted."""
        self._begin(now_us)
        return self._answer_acks(self._receive(peer_did, frame, now_us))

    def _answer_acks(self, planned: list[Any], batch: _Batch | None = None) -> list[Output]:
        """A command's outputs once what it recorded is saved, with the acknowledgements its
        data frames owe (transmit.py): in a batch, only the last data frame of each session
        answers."""
        out: list[Output] = []
        for item in planned:
            if not isinstance(item, _AckPoint):
                out.append(item)
            elif batch is None or batch.ack_points.get(item.session.id) is item:
                s = item.session
                out += [self._send(s, ack) for ack in self._transmit.ack_after_save(s, item.now_us)]
        return out

    def receive_many(self, frames: Iterable[tuple[str, Frame]], now_us: int) -> list[Output]:
        """Several frames at once — what a transport read in one go — each decided as
        ``receive`` decides it, and everything they recorded saved in one ``save``: one group
        commit (and one batch of signatures, on both cores) for the lot, as ``tick`` does
        for timers. Nothing is sent before that save returned; the outputs come in the order
        of the frames. If the save fails, every session and peer the frames touched goes back
        to what the ledger holds and the error is raised: the frames are lost, as on a lossy
        network, and the peers' retries bring them again."""
        return [o for group in self.receive_each(frames, now_us) for o in group]

    def receive_each(
        self, frames: Iterable[tuple[str, Frame]], now_us: int, *, answer: Answer | None = None
    ) -> list[list[Output]]:
        """``receive_many``, with the outputs kept per frame: the i-th list is what the i-th
        frame asks to send (a transport answers each on the connection it came in on).

        ``answer`` (decision 23): called with each message the frames deliver, in order,
        before anything is saved; a payload it returns is queued on the same session, in the
        same save as the delivery, so that a delivery and its answer commit together — one
        save on a request's way through, not two. Its ``Deliver`` says ``answered``; a
        message it returns None for is the application's, as without an ``answer``. A data
        frame whose messages the session has no send room to answer is left undecided
        (``held_for_answers``): the peer sends it again. An ``answer`` that raises, or
        returns what cannot be queued (too large), is logged and counted
        (``failed_answers``); the message stays delivered, unanswered, for the application.
        Should the save fail (or the node die before it), neither the delivery nor the
        answer happened, and the message comes again: ``answer`` may see a message more than
        once, and its answer is sent once.

        ``frames`` is consumed one at a time, in order: each frame is decided before the next
        is taken from it, so a generator may note, between two frames, what the previous one
        did to its session (transports/tcp.py tells which connection proved a peer that way).
        Nothing is saved or sent before the last frame is taken.

        A frame whose deciding raises something other than a ``SessionError`` (a bug, a
        resolver failing) is dropped alone, counted in ``failed_frames``, if it recorded
        nothing before it failed; the others are decided and saved. If it had recorded
        something, memory is no longer the ledger plus the batch, and the batch fails as a
        whole — as it does when its save fails."""

        def each() -> list[list[Output | _AfterSave]]:
            out: list[list[Output | _AfterSave]] = []
            for peer_did, frame in frames:
                before = self._unsaved_of(peer_did, frame)
                try:
                    out.append(self._receive(peer_did, frame, now_us))
                except Exception:
                    if self._unsaved_of(peer_did, frame) != before:
                        self._reload_with_batch(peer_did, frame)
                        raise
                    self.failed_frames += 1
                    log.exception("%s from %s could not be decided", type(frame).__name__, peer_did)
                    out.append([])
            return out

        self._begin(now_us)
        return self._in_one_save(each, answer)

    def _reload_with_batch(self, peer_did: str, frame: Frame) -> None:
        """What a failing frame recorded goes back to the ledger's state with the batch's."""
        assert self._batch is not None
        s, peer = self.session_for(frame.conversation), self._peers.get(peer_did)
        if s is not None:
            self._batch.sessions.setdefault(s.id, s)
        if peer is not None:
            self._batch.peers.setdefault(peer.id, peer)

    def _unsaved_of(self, peer_did: str, frame: Frame) -> tuple[Any, ...]:
        """What a frame can have recorded: its session's and its peer's unsaved events (a
        peer's registration alone records nothing: peer_table.py)."""
        s, peer = self.session_for(frame.conversation), self._peers.get(peer_did)
        return (
            None if s is None else (s.id, len(s.pending_events)),
            peer is not None and holds_unsaved(peer) and len(peer.pending_events),
        )

    def _in_one_save(
        self, commands: Callable[[], list[list[Output | _AfterSave]]], answer: Answer | None = None
    ) -> list[list[Output]]:
        """Run ``commands`` (each command's planned outputs, a list per command), save what
        they recorded in one ``save``, then derive each command's outputs."""
        if self._batch is not None:
            raise RuntimeError("receive_many / establish_many cannot nest")
        batch = self._batch = _Batch()
        batch.answer = answer
        try:
            planned = commands()
            objects = [*batch.sessions.values(), *batch.peers.values()]
            if objects:
                self._ledger.save(*objects)
        except BaseException:
            self._reload(list(batch.sessions), batch.peers)
            raise
        finally:
            self._batch = None
        for sid in batch.sessions:
            self._transmit.saved(sid)
        for sid in batch.arm:
            self._settle(batch.sessions[sid])
        return [self._derive(group, batch) for group in planned]

    def _derive(self, planned: list[Output | _AfterSave], batch: _Batch) -> list[Output]:
        """One command's outputs in a batch, once the batch is saved."""
        out: list[Any] = []
        for item in planned:
            if not isinstance(item, _AfterSave):
                out.append(item)
                continue
            try:
                out.extend(self._outputs_after_save(item.session, item.events, tolerate=False))
            except SessionError as error:  # as receive would: this frame's outputs only
                self.dropped_frames += 1
                log.debug("nothing sent for session %s: %s", item.session.id, error)
        if batch.answered:
            out = [
                replace(o, answered=True)
                if isinstance(o, Deliver) and (o.session_id, o.seq) in batch.answered
                else o
                for o in out
            ]
        return self._answer_acks(out, batch)

    def _receive(self, peer_did: str, frame: Frame, now_us: int) -> list[Any]:
        try:
            lingering = self._lingering_for(frame.conversation, peer_did)
            if lingering is not None:  # closed here, its close exchange under way
                return self._on_lingering(lingering, frame, now_us)
            if isinstance(frame, HandshakeRequest):
                return self._on_request(peer_did, frame, now_us)
            session = self._find(frame.conversation)
            if session is None or session.peer_did != peer_did:
                raise UnknownSession(frame.conversation)
            return self._on_frame(session, frame, now_us)
        except SessionError as error:
            self.dropped_frames += 1
            log.debug("dropped %s from %s: %s", type(frame).__name__, peer_did, error)
            return []

    def _on_frame(self, s: Session, frame: Frame, now_us: int) -> list[Output]:
        out: list[Output] = []
        touched: list[Any] = []
        if isinstance(frame, Close | CloseAck):
            return self._on_close_frame(s, frame, now_us)
        if isinstance(frame, HandshakeResponse) and s.state != State.HANDSHAKE_INITIATED:
            # Our confirmation was lost: the responder asks again. Only a confirmation answers
            # it: two ends that each answered the other's request (a duplicate resumption
            # request answered late) would otherwise send responses to each other for ever.
            last = self._last_handshake_frame.get(s.conversation)
            return self._resend(s) if isinstance(last, HandshakeAck) else []
        if isinstance(frame, Heartbeat | Data) and s.state == State.HANDSHAKE_RECEIVED:
            return self._resend(s)  # the initiator is established: our response got through
        if isinstance(frame, HeartbeatAck | Heartbeat | Data | DataAck):
            self._forget_handshake_frame(s.conversation)  # the peer is established
        if isinstance(frame, Data):
            return self._on_data(s, frame, now_us)
        if isinstance(frame, DataAck):
            # No save of its own: it rides with the session's next (decision 21).
            retransmit = self._transmit.acknowledgement(s, frame.up_to_seq, now_us)
            return [self._send(s, data) for data in retransmit]
        keys_before = s.key_material
        handshaking_since = s.state_since_us if s.state in _HANDSHAKING else None
        # A resumption answered while established completes in rotating (_on_resumption).
        if isinstance(frame, HandshakeAck) and s.state not in (
            State.HANDSHAKE_RECEIVED,
            State.ROTATING,
        ):
            raise StaleFrame("a key confirmation for a handshake that is over (a duplicate)")
        if isinstance(frame, RotationConfirm | RotationResponse) and s.state != State.ROTATING:
            # Late (the rotation died with a restart, decision 16) or a duplicate: it must not
            # reach the key exchange, which may be running another handshake for the session.
            raise StaleFrame(f"a {type(frame).__name__} outside a rotation")
        authentic, key, confirmation = getattr(frame, "authentic", True), b"", b""
        try:
            if not authentic:
                pass
            elif isinstance(frame, HandshakeAck | RotationConfirm):
                key = self._kx.confirm(s.conversation, frame.confirmation, now_us)
            elif isinstance(frame, RotationResponse | HandshakeResponse):
                confirmation, key = self._kx.complete(s.conversation, frame.key_share, now_us)
        except AuthenticationFailed:
            authentic = False
        if not authentic:
            # §2.1 "invalid signature received": fail, and quarantine the peer — only if
            # the session is where such a failure counts (a stray frame quarantines no one).
            if not is_allowed(s.state, Trigger.INVALID_SIGNATURE) or s.closed:
                raise StaleFrame(f"an unauthentic {type(frame).__name__} in {s.state}")
            if never_saved_answer(s):
                # Decision 18: a confirmation that fails proves no one sent the request; the
                # key exchange holds off its (identity, source), nothing goes to the ledger.
                s.receive_invalid_signature(now_us, None)
            else:
                peer = self.peer(s.peer_did)
                retry_at = peer.authentication_failed(now_us, self._rng.random())
                s.receive_invalid_signature(now_us, retry_at if s.role == "initiator" else None)
                touched.append(peer)
        elif isinstance(frame, HandshakeResponse):
            s.receive_valid_response(now_us, key, frame.prekeys or None)
            ack = HandshakeAck(s.conversation, confirmation)
            self._last_handshake_frame[s.conversation] = ack
            out.append(self._send(s, ack))
            touched.append(self._peer_succeeded(s, now_us))
        elif isinstance(frame, HandshakeAck):
            if s.state == State.ROTATING:
                s.rotation_complete(now_us, key)
            else:
                s.receive_ack(now_us, key)
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
        elif isinstance(frame, RotationRequest):
            response = self._kx.respond(s.conversation, s.peer_did, frame.key_share, now_us)
            s.time_to_rotate(now_us, requested_by_peer=True)
            out.append(self._send(s, RotationResponse(s.conversation, response)))
        elif isinstance(frame, RotationResponse):
            s.rotation_complete(now_us, key)
            out.append(self._send(s, RotationConfirm(s.conversation, confirmation)))
        else:  # RotationConfirm, confirmed above
            s.rotation_complete(now_us, key)
        if s.key_material is not keys_before and s.key_material is not None:
            # New keys: their first send counters are reserved in the save that records
            # them, so that sealing the first frame does not save (reservations.py).
            reserve_with_keys(s, now_us)
            if handshaking_since is not None:
                self._transmit.handshake_rtt(s.id, now_us - handshaking_since)
        # Direct replies first: the handshake ack must reach the peer before flushed data.
        return [*out, *self._commit(s, *touched)]

    def _on_data(self, s: Session, frame: Data, now_us: int) -> list[Any]:
        """A message: delivered in order (with any held after it) once saved, or held ahead
        of a gap, or a duplicate; the acknowledgement is decided after the save."""
        answer = None if self._batch is None else self._batch.answer
        if answer is not None and self._transmit.deliverable(s, frame.seq) > s.send_room:
            self.held_for_answers += 1  # no room for the answers: it comes again
            return []
        recorded = len(s.pending_events)
        delivered = self._transmit.received(s, frame.seq, frame.payload, now_us)
        point = _AckPoint(s, now_us)
        if self._batch is not None:
            self._batch.ack_points[s.id] = point
        if not delivered:
            return [point]  # nothing recorded: nothing to save
        if answer is not None:
            assert self._batch is not None
            for event in s.pending_events[recorded:]:
                if isinstance(event, Session.MessageDelivered) and self._answer(
                    s, event.payload, answer, now_us
                ):
                    self._batch.answered.add((s.id, event.seq))
        return [*self._commit(s), point]  # Deliver outputs come from MessageDelivered

    def _answer(self, s: Session, payload: bytes, answer: Answer, now_us: int) -> bool:
        """Queue ``answer``'s reply to a message just delivered on ``s`` (unsaved yet);
        whether it answered (None: the message is the application's, as any other)."""
        try:
            reply = answer(s.id, payload)
            if reply is None:
                return False
            s.submit_message(now_us, bytes(reply))
        except Exception:  # the application's: the delivery stands, unanswered
            self.failed_answers += 1
            log.exception("no answer queued to a message on session %s", s.id)
            return False
        return True

    def _peer_succeeded(self, s: Session, now_us: int) -> Peer:
        peer = self.peer(s.peer_did)
        peer.succeeded(now_us)
        return peer

    # ------------------------------------------------------------------ timers
    def tick(self, now_us: int) -> list[Output]:
        """SPEC-018 §5.2 ``tick``: fire every deadline that is due, O(due · log n).

        Everything the due timers record is saved in one ``save`` — one group commit per
        tick, not one per session. What to send is derived only after that save returned,
        per session from its new events in order, so nothing leaves before its events are
        in the ledger. If firing or saving raises, nothing is sent and the due sessions go
        back to what the ledger holds, re-armed, so their timers fire again.

        The transmission deadlines (transmit.py) fire here too: retransmissions and delayed
        acknowledgements, which need no save (what they send or acknowledge is in the ledger
        already), and the save of acknowledgements received that waited long enough for
        one, which joins the tick's save."""
        self._begin(now_us)
        self._kx.expire(now_us)  # handshakes in progress time out on the clock
        self._peers.expire(now_us)
        closing = self._tick_closing(now_us) if self._lingering else []
        due = self._deadlines.pop_due(now_us)
        moving = [sid for sid in self._transmit.pop_due(now_us) if sid in self._sessions]
        if not due and not moving and not self._unconfirmed.is_due(now_us):
            return closing  # most ticks: touch nothing else
        firing = set(due)
        flushing = [
            sid
            for sid in moving
            if sid not in firing and self._transmit.needs_save(self._sessions[sid], now_us)
        ]
        peers: dict[UUID, Peer] = {}
        try:
            fired = [self._fire_due(self._sessions[sid], now_us, peers) for sid in due]
            fired += [self._fire_due(self._sessions[sid], now_us, peers) for sid in flushing]
            fired = [f for f in fired if not self._forget_unconfirmed(f.session, now_us)]
            summary = self._unconfirmed.due(now_us)
            self._save_fired(fired, peers, *(() if summary is None else (summary,)))
        except BaseException:
            self._reload([*due, *flushing], peers)
            for sid in moving:
                self._transmit.rearm(sid)
            raise
        if summary is not None:
            self._unconfirmed.saved()
        for f in fired:  # re-armed first: one session's outputs failing must not strand others
            self._transmit.saved(f.session.id)
            if f.session.closed:
                self._drop(f.session.id)  # its lease ran out (cleanup): see _settle
            else:
                self._deadlines.arm(f.session.id, f.wake_at_us)
        out: list[Output] = closing
        for f in fired:
            out.extend(self._outputs_after_save(f.session, f.events, tolerate=True))
        for sid in moving:
            s = self._sessions.get(sid)
            if s is not None:
                out += [self._send(s, frame) for frame in self._transmit.fire(s, now_us)]
        return out

    def next_wakeup_us(self) -> int | None:
        wakes = [
            self._deadlines.next_at(),
            self._linger_deadlines.next_at(),
            self._transmit.next_at(),
        ]
        return min((at for at in wakes if at is not None), default=None)

    def _fire_due(self, s: Session, now_us: int, peers: dict[UUID, Peer]) -> _Fired:
        """Fire each of ``s``'s due timers in deadline order (one may make the next due);
        save nothing yet. ``peers`` collects the peers the timers touched."""
        while (due := timers.next_deadline(s)) is not None and due[0] <= now_us:
            timer = due[1]
            try:
                self._fire(s, timer, now_us, peers)
            except SessionError as error:
                # The deadline stays (it is derived from the session); wake up again when it
                # can fire, not at once, or tick would spin on it.
                not_before = getattr(error, "until_us", now_us + timers.US)
                log.info("timer %s of session %s deferred: %s", timer, s.id, error)
                return _Fired(s, list(s.pending_events), max(due[0], not_before))
        # ``due`` is the next deadline of the session as it is now: arm it after the save.
        return _Fired(s, list(s.pending_events), None if due is None else due[0])

    def _save_fired(self, fired: list[_Fired], peers: dict[UUID, Peer], *others: Any) -> None:
        """One ``save`` of every session that recorded something, of each peer touched, and
        of ``others`` (a summary of unconfirmed handshakes)."""
        changed = [f.session for f in fired if f.events]
        if changed or others or any(p.pending_events for p in peers.values()):
            self._ledger.save(*changed, *peers.values(), *others)

    def _forget_unconfirmed(self, s: Session, now_us: int) -> bool:
        """Decision 18: a responder's session never saved that failed holding nothing is not
        written; it leaves memory, and only its outcome is counted for the next summary."""
        if not goes_unwritten(s):
            return False
        self._unconfirmed.count(s.failure_reason or "failed", now_us)
        self._drop(s.id)
        if self._batch is not None:
            self._batch.forget(s.id)
        return True

    def _reload(self, session_ids: list[UUID], peers: dict[UUID, Peer]) -> None:
        """After a failed save memory is ahead of the ledger: drop what was not saved, so
        that the sessions are what the ledger holds (re-armed) and a frame or timer that
        comes again is decided afresh — not dropped as a duplicate of something the ledger
        never recorded."""
        for peer in peers.values():
            self._peers.pop(peer.peer_did, None)  # read again from the ledger when needed
        for sid in session_ids:
            try:
                self.restore(sid)
            except AggregateNotFoundError:  # never saved (decision 14's responder, a new one)
                log.debug("session %s was never saved: dropped after a failed save", sid)
                self._drop(sid)
            except Exception:  # the ledger cannot be read either: a frame finds it later
                log.exception("session %s could not be reloaded after a failed save", sid)
                self._drop(sid)

    def _drop(self, sid: UUID) -> None:
        dropped = self._sessions.pop(sid, None)
        self._deadlines.arm(sid, None)
        self._transmit.forget(sid)
        if dropped is not None:
            same_peer = self._by_peer.get(dropped.peer_did, [])
            if sid in same_peer:
                same_peer.remove(sid)
            if not same_peer:
                self._by_peer.pop(dropped.peer_did, None)
        if dropped is None or self._conversations.get(dropped.conversation) != sid:
            return  # the conversation has moved on to a newer session: leave it be
        del self._conversations[dropped.conversation]
        self._forget_handshake_frame(dropped.conversation)

    def _forget_handshake_frame(self, conversation: UUID) -> None:
        self._last_handshake_frame.pop(conversation, None)
        self._answered_request.pop(conversation, None)

    def _fire(self, s: Session, timer: timers.Timer, now_us: int, peers: dict[UUID, Peer]) -> None:
        T = timers.Timer
        if timer in (T.HANDSHAKE_TIMEOUT, T.ROTATION_TIMEOUT):
            retry_at = None
            if s.role == "initiator":
                peer = self.peer(s.peer_did)
                peers[peer.id] = peer
                retry_at = peer.schedule_retry(now_us, self._rng.random())
            if timer is T.HANDSHAKE_TIMEOUT:
                s.handshake_timed_out(now_us, retry_at)
            else:
                s.rotation_timed_out(now_us, retry_at)
        elif timer is T.SEND_HEARTBEAT:
            s.heartbeat_due(now_us)
        elif timer is T.HEARTBEAT_RESPONSE:
            s.heartbeat_timed_out(now_us)
        elif timer in (T.SUSPENDED_RECOVERY, T.RETRY_BACKOFF):
            self.peer(s.peer_did).check_admissible(now_us)
            (s.retry if timer is T.SUSPENDED_RECOVERY else s.retry_with_backoff)(now_us)
        elif timer is T.PARTITION:
            s.partition_detected(now_us)
        elif timer is T.DEGRADED_TIMEOUT:
            s.degraded_timed_out(now_us)
        elif timer is T.ROTATION:
            s.time_to_rotate(now_us)
        else:  # LEASE_EXPIRY
            s.cleanup(now_us)

    # ------------------------------------------------------------------ bookkeeping
    def _add(self, session: Session) -> None:
        if session.id not in self._sessions:
            self._by_peer.setdefault(session.peer_did, []).append(session.id)
        self._sessions[session.id] = session
        self._conversations[session.conversation] = session.id

    def _settle(self, s: Session) -> None:
        """After a save: arm ``s``'s next deadline — or, if it is closed (§3.1 ``[*]``:
        nothing can happen to it any more), let it go from memory, so that a long-running
        node holds only sessions that can still change. The ledger keeps it: ``session``
        reads it back, and a frame for its conversation finds it there (``_find``)."""
        if s.closed:
            self._transmit.forget(s.id)  # nothing travels any more but its close
            if self._linger(s):  # decision 17: it stays for its close exchange
                self._deadlines.arm(s.id, None)
            else:
                self._drop(s.id)
        else:
            self._arm(s)

    def _arm(self, s: Session, not_before_us: int = 0) -> None:
        due = timers.next_deadline(s)
        self._deadlines.arm(s.id, None if due is None else max(due[0], not_before_us))

    def _commit(self, s: Session, *others: Any, arm: bool = True) -> list[Output]:
        """Save what was recorded, re-arm the deadline, derive what to send. If the save
        raises, the session and peers go back to what the ledger holds and nothing is sent."""
        if not others and self._forget_unconfirmed(s, s.at_us):
            return []
        if self._batch is not None:  # saved with the rest of the batch (_in_one_save)
            return [self._batch.add(s, others, arm)]  # type: ignore[list-item]
        new_events = list(s.pending_events)
        try:
            self._ledger.save(s, *others)
        except BaseException:
            self._reload([s.id], {o.id: o for o in others if isinstance(o, Peer)})
            raise
        self._transmit.saved(s.id)
        if arm:
            self._settle(s)
        return self._outputs_after_save(s, new_events, tolerate=False)

    def _outputs_after_save(self, s: Session, events: list[Any], *, tolerate: bool) -> list[Output]:
        """What the saved ``events`` ask to send. With ``tolerate`` (a tick: nobody to tell),
        a frame that cannot be made (the peer's prekeys expired, say) is logged and not sent;
        the events are in the ledger and the session's timers recover it (a handshake times
        out and is retried). Otherwise the caller gets the error."""
        if (
            s.closed
            or s.state in _FORGET_HANDSHAKE_FRAME_IN
            or (s.role == "responder" and s.state == State.ESTABLISHED)
        ):
            # Nothing will ask for the last handshake frame again: it stops taking memory.
            self._forget_handshake_frame(s.conversation)
        # Data first: if a frame below cannot be made, these are as good as lost on the
        # network, and their retransmission timer is running.
        data: list[Output] = [
            self._send(s, frame) for frame in self._transmit.after_save(s, events, s.at_us)
        ]
        try:
            return [*outputs_for(s, events, self._kx), *data]
        except SessionError as error:
            if not tolerate:
                raise
            log.warning("session %s: nothing sent after %d events: %s", s.id, len(events), error)
            return data

    def _send(self, s: Session, frame: Frame) -> Send:
        return send(s, frame)
