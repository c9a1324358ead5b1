"""The session's life cycle: SPEC-018 §2.1–§2.3 and §3 as commands and recorded events.

``SessionCore`` holds establishment, heartbeats, rotation and cleanup; ``Session``
(session.py) adds the link (degradation, recovery, transport fallback) and the messages.

Read it beside the spec. Public methods are *commands*, named after the spec's triggers
(``initiate_handshake``, ``receive_valid_response``, ``heartbeat_due``, ``cleanup``, ...).
A command decides: it asks the transition table (``states.next_state``) whether its trigger
may happen now, checks its own preconditions, and then records one event. A command that may
not happen raises (``InvalidState`` or another ``SessionError``) and records nothing.

Private ``@event`` methods are named after what happened, in the past tense; their bodies only
change state, so replaying the stored events rebuilds the same session.

Time is a value: each command takes ``now_us`` (decision 9) and the session never reads a
clock. What to send and which deadline comes next are derived from the recorded state
(``domain/manager/manager.py``, ``timers.py``).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal, Self
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from l2_session.domain.session import timers
from l2_session.domain.session.config import (
    SessionConfig,
    config_fields,
    config_from_fields,
    shared_fields,
)
from l2_session.domain.session.errors import (
    FailureReason,
    NotDue,
    NothingToResume,
    SessionClosed,
    StaleFrame,
    TimeWentBackwards,
)
from l2_session.domain.session.states import FINAL, State, Target, Trigger, next_state

Role = Literal["initiator", "responder"]
TRANSPORTS = ("quic", "utcp")  # SPEC-018 §1.2: QUIC primary, μTCP fallback (in that order)
QUIC, UTCP = TRANSPORTS  # a node's QUIC links and its framed TCP connections (decision 24)
# Plain TCP, outside the fallback order: what sessions over the node's TCP recorded before its
# framed TCP became the spec's μTCP (decisions 20, 24); their ledgers still read.
TCP = "tcp"
KNOWN_TRANSPORTS = (*TRANSPORTS, TCP)


def key_id_of(key_material: bytes) -> str:
    """A public name for key material, so history can say "same keys" without the keys."""
    return hashlib.blake2b(key_material, digest_size=8).hexdigest()


# Its ledger topics are pinned in session.py, once Session is defined (topics.py: eventsourcing
# refuses to subclass an aggregate whose events already carry explicit topics).
class SessionCore(Aggregate):
    # ------------------------------------------------------------------ recorded events
    class Opened(Aggregate.Created):
        at_us: int
        peer_did: str
        role: str
        config: dict[str, Any]
        conversation: UUID | None
        transport: str = TRANSPORTS[0]  # absent from events recorded before it was

    class Event(Aggregate.Event):
        """Every event after ``Opened`` carries ``at_us``, ``trigger`` and ``state`` (the
        state it left the session in); this moves the session there after the event's own
        ``@event`` body has run."""

        def apply(self, aggregate: Any) -> None:
            state = getattr(self, "state", None)
            if state is None:  # Opened
                return
            if aggregate.state != state:
                aggregate.state_since_us = self.at_us  # type: ignore[attr-defined]
            aggregate.closed = state == FINAL
            if not aggregate.closed:
                aggregate.state = State(state)

    class Step(Event):
        at_us: int
        trigger: str
        state: str

    class Established(Step):
        secret_fields: ClassVar[tuple[str, ...]] = ("key_material",)
        key_material: bytes
        key_id: str
        new_keys: bool
        prekeys: str | None

    def __init__(
        self,
        at_us: int,
        peer_did: str,
        role: str,
        config: dict[str, Any],
        conversation: UUID | None,
        transport: str = TRANSPORTS[0],
    ) -> None:
        # Frames name the conversation by the initiator's session id (commands.py).
        self.conversation: UUID = conversation or self.id
        self.peer_did = peer_did
        self.role: Role = "initiator" if role == "initiator" else "responder"
        # Plain values, not a SessionConfig: the aggregate's __dict__ goes into snapshots.
        self.config_fields = shared_fields(config)
        self.state = State.IDLE
        self.state_since_us = at_us
        self.closed = False
        self.failure_reason: str | None = None
        self.retry_at_us: int | None = None
        self.resuming = False
        self.prekeys: str | None = None
        self.key_material: bytes | None = None
        self.keys_derived_us: int | None = None
        # Decision 3: the TTL is a liveness lease, extended by every answered heartbeat.
        self.lease_expires_us = at_us + timers.us(self.config.ttl)
        self.last_activity_us = at_us
        self.heartbeat_counter = 0
        self.heartbeat_sent_us: int | None = None
        self.missed_heartbeats = 0
        self.link_down_since_us: int | None = None
        self.transport = transport  # the transport that carries it (decision 20)
        self.next_seq = 1
        # Acks are cumulative and sequence numbers consecutive, so the unacknowledged
        # messages are always the last len(outbox) seqs before next_seq: a list is enough.
        self.outbox: list[bytes] = []
        self.next_expected_seq = 1

    # Class defaults, not __init__ attributes: set only by the events that change them, so
    # that an idle session does not pay for them. Not annotated: eventsourcing would take
    # annotated class attributes for Opened's fields.
    fallback_pending = False  # a transport fallback under way (session.py, §2.3)
    reserved_until = 0  # send counters reserved under the current keys (session.py)

    # Derived, not stored: an idle session must stay under 30 attributes, where CPython
    # still shares the keys of instance dicts (<= 2 KiB per idle session: a million in 2 GiB).
    @property
    def key_id(self) -> str | None:
        return None if self.key_material is None else key_id_of(self.key_material)

    @property
    def at_us(self) -> int:
        """When the last event happened: the aggregate's ``modified_on``, in µs."""
        return timers.micros_of(self.modified_on)

    @property
    def acked_up_to(self) -> int:
        return self.next_seq - 1 - len(self.outbox)

    @property
    def config(self) -> SessionConfig:
        return config_from_fields(self.config_fields)

    @classmethod
    def open(
        cls,
        peer_did: str,
        role: Role,
        config: SessionConfig,
        now_us: int,
        conversation: UUID | None = None,
        session_id: UUID | None = None,
        transport: str = TRANSPORTS[0],
    ) -> Self:
        """A new session in ``idle`` (SPEC-018 §3.1 "Initial state"), over ``transport``."""
        if transport not in KNOWN_TRANSPORTS:
            raise ValueError(f"transport {transport!r} is not one of {', '.join(KNOWN_TRANSPORTS)}")
        return cls._create(
            cls.Opened,
            id=session_id,
            conversation=conversation,
            timestamp=timers.timestamp_of(now_us),
            at_us=now_us,
            peer_did=peer_did,
            role=role,
            config=config_fields(config),
            transport=transport,
        )

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        # The event's timestamp is the command's time, never a clock reading.
        if kwargs.get("timestamp") is None and "at_us" in kwargs:
            kwargs["timestamp"] = timers.timestamp_of(kwargs["at_us"])
        super().trigger_event(event_class, **kwargs)

    # ------------------------------------------------------------------ deciding
    def _decide(self, trigger: Trigger, now_us: int) -> Target:
        """The one gate every command passes: closed? time order? table (§3.1)?"""
        if self.closed:
            raise SessionClosed(trigger)
        if now_us < self.at_us:
            raise TimeWentBackwards(now_us, self.at_us)
        return next_state(self.state, trigger)

    def _due(self, timer: timers.Timer, now_us: int) -> None:
        if not timers.is_due(self, timer, now_us):
            raise NotDue(timer.value, timers.DEADLINES[timer](self), now_us)

    def _step(self, trigger: Trigger, now_us: int, target: Target) -> dict[str, Any]:
        return {"at_us": now_us, "trigger": trigger.value, "state": target.value}

    # ------------------------------------------------------------------ §2.1 establishment
    def initiate_handshake(self, now_us: int) -> None:
        target = self._decide(Trigger.INITIATE_HANDSHAKE, now_us)
        self._handshake_initiated(
            resuming=False, **self._step(Trigger.INITIATE_HANDSHAKE, now_us, target)
        )

    def receive_handshake(self, now_us: int) -> None:
        """The responder's side: a request arrived and the response went out. The keys come
        with the initiator's confirmation (``receive_ack``, decision 6)."""
        target = self._decide(Trigger.RECEIVE_HANDSHAKE, now_us)
        self._handshake_received(**self._step(Trigger.RECEIVE_HANDSHAKE, now_us, target))

    def receive_valid_response(
        self, now_us: int, key_material: bytes | None = None, prekeys: str | None = None
    ) -> None:
        """The initiator's side. A resumption makes no new KEM exchange (decision 4): its
        keys, fresh ones derived from the stored secret or else the stored keys themselves,
        do not restart the key age, so rotation stays due 23 h after the last KEM exchange."""
        target = self._decide(Trigger.RECEIVE_VALID_RESPONSE, now_us)
        if self.resuming:
            assert self.key_material is not None  # initiate_resumption checked it
            key, new = key_material or self.key_material, False
        elif key_material is None:
            raise StaleFrame("a full handshake response must carry the derived key material")
        else:
            key, new = key_material, True
        step = self._step(Trigger.RECEIVE_VALID_RESPONSE, now_us, target)
        self._established(key, new, prekeys or self.prekeys, step)

    def receive_ack(self, now_us: int, key_material: bytes, prekeys: str | None = None) -> None:
        """Decision 6: the initiator's acknowledgement is the key confirmation; only with it
        does the responder hold keys it knows the initiator has too."""
        target = self._decide(Trigger.RECEIVE_ACK, now_us)
        step = self._step(Trigger.RECEIVE_ACK, now_us, target)
        self._established(key_material, True, prekeys, step)

    def receive_invalid_signature(self, now_us: int, retry_at_us: int | None) -> None:
        """§2.1 Authentication failure; the peer's quarantine is recorded on the ``Peer``."""
        target = self._decide(Trigger.INVALID_SIGNATURE, now_us)
        self._failed(
            reason=FailureReason.AUTHENTICATION_FAILED.value,
            retry_at_us=retry_at_us,
            **self._step(Trigger.INVALID_SIGNATURE, now_us, target),
        )

    def handshake_timed_out(self, now_us: int, retry_at_us: int | None) -> None:
        target = self._decide(Trigger.HANDSHAKE_TIMEOUT, now_us)
        self._due(timers.Timer.HANDSHAKE_TIMEOUT, now_us)
        self._failed(
            reason=FailureReason.TIMEOUT.value,
            retry_at_us=retry_at_us,
            **self._step(Trigger.HANDSHAKE_TIMEOUT, now_us, target),
        )

    def initiate_resumption(self, now_us: int, prekeys: str) -> None:
        """§2.1 Session resumption: reuse the keys if the peer's prekeys are unchanged."""
        target = self._decide(Trigger.INITIATE_RESUMPTION, now_us)
        if self.key_material is None or self.keys_derived_us is None:
            raise NothingToResume("this session never derived keys; use retry instead")
        if self.prekeys is not None and prekeys != self.prekeys:
            raise NothingToResume("the peer's prekeys changed; a full handshake is needed")
        if now_us >= self.keys_derived_us + timers.us(self.config.ttl):
            raise NothingToResume("the stored keys are past their ttl; use retry instead")
        self._handshake_initiated(
            resuming=True, **self._step(Trigger.INITIATE_RESUMPTION, now_us, target)
        )

    def retry(self, now_us: int) -> None:
        """§2.2 "recovery is attempted after 60s" from ``suspended``: a full handshake."""
        target = self._decide(Trigger.RETRY, now_us)
        self._due(timers.Timer.SUSPENDED_RECOVERY, now_us)
        self._handshake_initiated(resuming=False, **self._step(Trigger.RETRY, now_us, target))

    def retry_with_backoff(self, now_us: int) -> None:
        target = self._decide(Trigger.RETRY_WITH_BACKOFF, now_us)
        self._due(timers.Timer.RETRY_BACKOFF, now_us)
        self._handshake_initiated(
            resuming=False, **self._step(Trigger.RETRY_WITH_BACKOFF, now_us, target)
        )

    def cleanup(self, now_us: int) -> None:
        """Decision 8: close the session; nothing is deleted from the ledger."""
        target = self._decide(Trigger.CLEANUP, now_us)
        self._cleaned_up(
            dropped_messages=list(range(self.acked_up_to + 1, self.next_seq)),
            **self._step(Trigger.CLEANUP, now_us, target),
        )

    def _established(
        self, key: bytes, new: bool, prekeys: str | None, step: dict[str, Any]
    ) -> None:
        self._session_established(
            key_material=key, key_id=key_id_of(key), new_keys=new, prekeys=prekeys, **step
        )

    # ------------------------------------------------------------------ §2.2 maintenance
    def heartbeat_due(self, now_us: int) -> int:
        """Send a heartbeat; returns its counter (monotonic, §7.1 replay protection)."""
        target = self._decide(Trigger.HEARTBEAT_DUE, now_us)
        self._due(timers.Timer.SEND_HEARTBEAT, now_us)
        self._heartbeat_sent(
            counter=self.heartbeat_counter + 1, **self._step(Trigger.HEARTBEAT_DUE, now_us, target)
        )
        return self.heartbeat_counter

    def receive_heartbeat_ack(self, now_us: int, counter: int) -> None:
        if self.heartbeat_sent_us is None or counter != self.heartbeat_counter:
            raise StaleFrame(
                f"heartbeat ack {counter} does not answer the outstanding heartbeat "
                f"({self.heartbeat_counter if self.heartbeat_sent_us is not None else 'none'})"
            )
        # In degraded the reply is what confirms the re-establishment (decision 5).
        trigger = (
            Trigger.REESTABLISHMENT_CONFIRMED
            if self.state == State.DEGRADED
            else Trigger.HEARTBEAT_ANSWERED
        )
        target = self._decide(trigger, now_us)
        self._heartbeat_answered(**self._step(trigger, now_us, target))

    def heartbeat_timed_out(self, now_us: int) -> None:
        missed = self.missed_heartbeats + 1
        trigger = (
            Trigger.MISSED_HEARTBEATS
            if self.state == State.ESTABLISHED and missed >= self.config.heartbeat_tolerance
            else Trigger.HEARTBEAT_MISSED
        )
        target = self._decide(trigger, now_us)
        self._due(timers.Timer.HEARTBEAT_RESPONSE, now_us)
        self._heartbeat_missed(missed=missed, **self._step(trigger, now_us, target))

    def time_to_rotate(self, now_us: int, requested_by_peer: bool = False) -> None:
        """§2.2 Automatic key rotation. The responder rotates when the initiator asks."""
        target = self._decide(Trigger.TIME_TO_ROTATE, now_us)
        if not requested_by_peer:
            self._due(timers.Timer.ROTATION, now_us)
        self._rotation_started(**self._step(Trigger.TIME_TO_ROTATE, now_us, target))

    def rotation_complete(self, now_us: int, key_material: bytes) -> None:
        target = self._decide(Trigger.ROTATION_COMPLETE, now_us)
        if key_material == self.key_material:
            raise StaleFrame("a rotation must produce new key material")
        step = self._step(Trigger.ROTATION_COMPLETE, now_us, target)
        self._established(key_material, True, self.prekeys, step)

    def rotation_timed_out(self, now_us: int, retry_at_us: int | None) -> None:
        target = self._decide(Trigger.ROTATION_TIMEOUT, now_us)
        self._due(timers.Timer.ROTATION_TIMEOUT, now_us)
        self._failed(
            reason=FailureReason.KEY_ROTATION_FAILED.value,
            retry_at_us=retry_at_us,
            **self._step(Trigger.ROTATION_TIMEOUT, now_us, target),
        )

    # ------------------------------------------------------------------ what happened
    @event("HandshakeInitiated")
    def _handshake_initiated(self, at_us: int, trigger: str, state: str, resuming: bool) -> None:
        self.resuming = resuming
        self.failure_reason = None
        self.retry_at_us = None

    @event("HandshakeReceived")
    def _handshake_received(self, at_us: int, trigger: str, state: str) -> None:
        self.resuming = False
        self.failure_reason = None
        self.retry_at_us = None

    @event(Established)
    def _session_established(
        self,
        at_us: int,
        trigger: str,
        state: str,
        key_material: bytes,
        key_id: str,
        new_keys: bool,
        prekeys: str | None,
    ) -> None:
        if self.reserved_until and key_material != self.key_material:
            self.reserved_until = 0  # counters are per key: new keys have used none
        self.key_material = key_material
        self.prekeys = prekeys
        if new_keys:
            self.keys_derived_us = at_us
        self.resuming = False
        self._alive(at_us)
        self.link_down_since_us = None

    @event("Failed")
    def _failed(
        self, at_us: int, trigger: str, state: str, reason: str, retry_at_us: int | None
    ) -> None:
        self.failure_reason = reason
        self.retry_at_us = retry_at_us
        self.heartbeat_sent_us = None

    @event("CleanedUp")
    def _cleaned_up(
        self, at_us: int, trigger: str, state: str, dropped_messages: list[int]
    ) -> None:
        self.outbox = []
        self.key_material = None  # keys are forgotten in memory; sealed history remains

    @event("HeartbeatSent")
    def _heartbeat_sent(self, at_us: int, trigger: str, state: str, counter: int) -> None:
        self.heartbeat_counter = counter
        self.heartbeat_sent_us = at_us

    @event("HeartbeatAnswered")
    def _heartbeat_answered(self, at_us: int, trigger: str, state: str) -> None:
        self._alive(at_us)
        self.link_down_since_us = None

    @event("HeartbeatMissed")
    def _heartbeat_missed(self, at_us: int, trigger: str, state: str, missed: int) -> None:
        self.missed_heartbeats = missed
        # The next heartbeat is due one interval after the one that went unanswered.
        assert self.heartbeat_sent_us is not None
        self.last_activity_us = self.heartbeat_sent_us
        self.heartbeat_sent_us = None

    @event("RotationStarted")
    def _rotation_started(self, at_us: int, trigger: str, state: str) -> None:
        self.heartbeat_sent_us = None

    def _alive(self, at_us: int) -> None:
        """The peer proved it is there: reset heartbeats, extend the lease (decision 3)."""
        self.last_activity_us = at_us
        self.heartbeat_sent_us = None
        self.missed_heartbeats = 0
        self.lease_expires_us = at_us + timers.us(self.config.ttl)
