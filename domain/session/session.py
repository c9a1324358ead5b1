"""The ``Session`` aggregate: a ``SessionCore`` (handshake, heartbeats, rotation, cleanup;
core.py) plus the link and what travels over it — degradation and recovery and the
QUIC → μTCP fallback (SPEC-018 §2.3), and the message queue with sequence numbers,
acknowledgements and de-duplication (§2.2-§2.3 "queued messages", "no messages are lost").

Messages submitted while the session is not established are recorded (``MessageQueued``) and
held; they go out, in order, once it is (``can_send``). Acks are cumulative. The session
delivers only the next expected sequence number (``receive_message``), so the application
sees each message once, in order; how messages travel — sent once, sent again on a timeout,
held by the receiver when they arrive ahead of a gap — is the manager's, in memory
(domain/manager/transmit.py, decision 21).

The link ends in two more ways: the node's process dies (``node_restarted``, recorded when it
starts again, decision 16), or a side closes the session (``close`` / ``receive_close``,
decision 17), which records the messages it leaves unacknowledged.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from eventsourcing.domain import event
from l2_session.domain.session import timers
from l2_session.domain.session.core import (
    KNOWN_TRANSPORTS,
    QUIC,
    TCP,
    TRANSPORTS,
    UTCP,
    SessionCore,
    key_id_of,
)
from l2_session.domain.session.errors import (
    CloseReason,
    FailureReason,
    MessageTooLarge,
    StaleFrame,
    TransportFailed,
    WindowFull,
)
from l2_session.domain.session.states import State, Trigger
from l2_session.domain.session.topics import pin_topics

__all__ = [
    "CLOSE_COUNTERS", "KNOWN_TRANSPORTS", "QUIC", "TCP", "TRANSPORTS", "UTCP", "Session",
    "key_id_of",
]  # fmt: skip

# Send counters the Closed event reserves for the close frames sent after it (decision 17):
# a closed session records nothing more, so these cannot be reserved later. Enough for every
# resend of a close in its linger and the answers to the peer's frames meanwhile.
CLOSE_COUNTERS = 64


class Session(SessionCore):
    class MessageQueued(SessionCore.Step):
        secret_fields: ClassVar[tuple[str, ...]] = ("payload",)
        seq: int
        payload: bytes

    class Closed(SessionCore.Step):
        """Decision 17: why, the messages left unacknowledged, and the send counters its
        close frames may use (none without keys)."""

        reason: str
        dropped_messages: list[int]
        counters_from: int
        counters_until: int

    class MessageDelivered(SessionCore.Step):
        secret_fields: ClassVar[tuple[str, ...]] = ("payload",)
        seq: int
        payload: bytes

    # ------------------------------------------------------------------ §2.3 degradation
    def connectivity_lost(self, now_us: int) -> None:
        target = self._decide(Trigger.CONNECTIVITY_LOST, now_us)
        if self.link_down_since_us is None:
            self._link_went_down(**self._step(Trigger.CONNECTIVITY_LOST, now_us, target))

    def partition_detected(self, now_us: int) -> None:
        target = self._decide(Trigger.PARTITION_DETECTED, now_us)
        self._due(timers.Timer.PARTITION, now_us)
        self._partition_detected(**self._step(Trigger.PARTITION_DETECTED, now_us, target))

    def connectivity_restored(self, now_us: int) -> int | None:
        """In ``degraded`` this attempts re-establishment: a probe the peer must answer
        (decision 5). Returns the probe's heartbeat counter, if one was sent."""
        target = self._decide(Trigger.CONNECTIVITY_RESTORED, now_us)
        step = self._step(Trigger.CONNECTIVITY_RESTORED, now_us, target)
        if self.state == State.DEGRADED:
            self._reestablishment_attempted(counter=self.heartbeat_counter + 1, **step)
            return self.heartbeat_counter
        if self.link_down_since_us is not None:
            self._link_came_up(**step)
        return None

    def degraded_timed_out(self, now_us: int) -> None:
        target = self._decide(Trigger.DEGRADED_TIMEOUT, now_us)
        self._due(timers.Timer.DEGRADED_TIMEOUT, now_us)
        self._suspended(**self._step(Trigger.DEGRADED_TIMEOUT, now_us, target))

    def transport_failed(self, now_us: int) -> str:
        """§2.3 Transport fallback: QUIC failed, try μTCP; the state does not change. A
        transport outside the spec's order (plain TCP, decision 20) has none to fall back to."""
        target = self._decide(Trigger.TRANSPORT_FAILED, now_us)
        index = TRANSPORTS.index(self.transport) if self.transport in TRANSPORTS else None
        if index is None or index + 1 >= len(TRANSPORTS):
            raise TransportFailed(
                f"no transport to fall back to from {self.transport} "
                f"(the fallback order is {' -> '.join(TRANSPORTS)})"
            )
        fallback = TRANSPORTS[index + 1]
        self._fallback_attempted(
            transport=fallback, **self._step(Trigger.TRANSPORT_FAILED, now_us, target)
        )
        return fallback

    def transport_switched(self, now_us: int, transport: str | None = None) -> None:
        """§2.3: the session's frames now go over a working link. With a fallback pending,
        over the transport it fell back to (``transport`` omitted, or that one). Without one,
        ``transport`` earlier in the order than the session's own moves it back there — QUIC
        works again (decision 24) — and any other is a ``ValueError``; the state does not
        change either way."""
        target = self._decide(Trigger.TRANSPORT_SWITCHED, now_us)
        if self.fallback_pending:
            if transport not in (None, self.transport):
                raise ValueError(
                    f"a fallback to {self.transport} is pending: cannot switch to {transport}"
                )
            step = self._step(Trigger.TRANSPORT_SWITCHED, now_us, target)
            self._transport_switched(transport=self.transport, **step)
        elif transport is not None and transport != self.transport:
            if not (
                transport in TRANSPORTS
                and self.transport in TRANSPORTS
                and TRANSPORTS.index(transport) < TRANSPORTS.index(self.transport)
            ):
                raise ValueError(
                    f"a session over {self.transport} moves back only to a transport earlier "
                    f"in the order {' -> '.join(TRANSPORTS)}, not to {transport}"
                )
            step = self._step(Trigger.TRANSPORT_SWITCHED, now_us, target)
            self._transport_switched(transport=transport, **step)

    def submit_message(self, now_us: int, payload: bytes) -> int:
        """Queue a message for the peer; returns its sequence number."""
        if len(payload) > self.config.max_message_size:
            raise MessageTooLarge(len(payload), self.config.max_message_size)
        if not self.send_room:
            raise WindowFull(len(self.outbox), self.config.send_window)
        target = self._decide(Trigger.SUBMIT_MESSAGE, now_us)
        seq = self.next_seq
        self._message_queued(
            seq=seq, payload=payload, **self._step(Trigger.SUBMIT_MESSAGE, now_us, target)
        )
        return seq

    def receive_message(self, now_us: int, seq: int, payload: bytes) -> bool:
        """Deliver ``seq`` if it is the next one (True); anything else records nothing
        (False): a duplicate, or a message ahead of a gap, which the caller may hold until
        the gap is filled. So the application sees each message once, in order."""
        target = self._decide(Trigger.RECEIVE_MESSAGE, now_us)
        if seq != self.next_expected_seq:
            return False
        self._message_delivered(
            seq=seq, payload=payload, **self._step(Trigger.RECEIVE_MESSAGE, now_us, target)
        )
        return True

    def receive_message_ack(self, now_us: int, up_to_seq: int) -> None:
        """Cumulative acknowledgement from the peer."""
        target = self._decide(Trigger.RECEIVE_MESSAGE_ACK, now_us)
        if self.acked_up_to < up_to_seq < self.next_seq:
            self._messages_acknowledged(
                up_to_seq=up_to_seq, **self._step(Trigger.RECEIVE_MESSAGE_ACK, now_us, target)
            )

    # ------------------------------------------------------------------ restart (decision 16)
    def node_restarted(self, now_us: int, retry_at_us: int | None = None) -> None:
        """This node's process died while the session was live, and has started again: what
        was only in memory (its connection, a handshake's or rotation's ephemeral half) is
        gone. Live sessions are suspended (to resume with fresh keys), handshakes in flight
        fail (``retry_at_us``: when an initiator retries); others only record the restart."""
        target = self._decide(Trigger.NODE_RESTARTED, now_us)
        fails_now = target == State.FAILED and self.state != State.FAILED
        self._node_restarted(
            reason=FailureReason.NODE_RESTARTED.value if fails_now else None,
            retry_at_us=retry_at_us if fails_now else None,
            **self._step(Trigger.NODE_RESTARTED, now_us, target),
        )

    # ------------------------------------------------------------------ close (decision 17)
    # Class defaults, set only by ``Closed`` (see core.py for why).
    close_reason = cast("str | None", None)
    close_counters_from = 0

    def close(self, now_us: int) -> None:
        """The application ends the session, in any state: recorded, the session is closed
        (FINAL), and a close goes to the peer if there are keys to seal it under."""
        target = self._decide(Trigger.CLOSE, now_us)
        self._close(CloseReason.CLOSED, self._step(Trigger.CLOSE, now_us, target))

    def receive_close(self, now_us: int) -> None:
        """The peer's close arrived (sealed under the session keys): the session ends here too."""
        target = self._decide(Trigger.RECEIVE_CLOSE, now_us)
        self._close(CloseReason.CLOSED_BY_PEER, self._step(Trigger.RECEIVE_CLOSE, now_us, target))

    def _close(self, reason: CloseReason, step: dict[str, Any]) -> None:
        start = self.counters_reserved()
        self._closed(
            reason=reason.value,
            dropped_messages=[seq for seq, _ in self.unacknowledged()],
            counters_from=start,
            counters_until=start + CLOSE_COUNTERS if self.key_material is not None else 0,
            **step,
        )

    # ------------------------------------------------------------------ nonce reservations
    def counters_reserved(self) -> int:
        """Where sending under the current keys may resume after a restart: every counter
        below this may have been used, so that no (key, nonce) pair ever repeats. New keys
        start from 0 (``Established`` resets it when the key material changes)."""
        return self.reserved_until

    def reserve_counters(self, now_us: int, until: int) -> None:
        """Record, before any of them is used, that send counters below ``until`` may be used
        under the current keys. Counters are sent in clear, so the event is not sealed."""
        target = self._decide(Trigger.RESERVE_COUNTERS, now_us)
        key_id = self.key_id
        if key_id is None:
            raise StaleFrame("no keys to reserve counters for")
        if until <= self.counters_reserved():
            raise ValueError(
                f"reservation must move forward: {until} <= {self.counters_reserved()} already "
                f"reserved for key {self.key_id}"
            )
        self._counters_reserved(
            key_id=key_id, until=until, **self._step(Trigger.RESERVE_COUNTERS, now_us, target)
        )

    @property
    def send_room(self) -> int:
        """How many more messages ``submit_message`` takes before ``WindowFull``."""
        return max(0, self.config.send_window - len(self.outbox))

    @property
    def accepts_traffic(self) -> bool:
        return not self.closed and self.state in (State.ESTABLISHED, State.ROTATING)

    @property
    def can_send(self) -> bool:
        """Messages may go out now: established, no transport fallback pending."""
        return not self.closed and self.state == State.ESTABLISHED and not self.fallback_pending

    def sendable(self) -> list[tuple[int, bytes]]:
        """Queued messages that may go out now, in order (held unless ``can_send``)."""
        return self.unacknowledged() if self.can_send else []

    def unacknowledged(self) -> list[tuple[int, bytes]]:
        return [(self.acked_up_to + 1 + i, p) for i, p in enumerate(self.outbox)]

    @event("FallbackAttempted")
    def _fallback_attempted(self, at_us: int, trigger: str, state: str, transport: str) -> None:
        self.transport = transport
        self.fallback_pending = True

    @event("TransportSwitched")
    def _transport_switched(
        self, at_us: int, trigger: str, state: str, transport: str | None = None
    ) -> None:
        # ``transport``: the one the session is now over (absent from events recorded before
        # it was, which all completed a fallback: the transport FallbackAttempted set).
        self.fallback_pending = False
        if transport is not None:
            self.transport = transport
        self.last_activity_us = at_us

    @event(MessageQueued)
    def _message_queued(
        self, at_us: int, trigger: str, state: str, seq: int, payload: bytes
    ) -> None:
        self.outbox.append(payload)
        self.next_seq = seq + 1

    @event(MessageDelivered)
    def _message_delivered(
        self, at_us: int, trigger: str, state: str, seq: int, payload: bytes
    ) -> None:
        self.next_expected_seq = seq + 1
        self.last_activity_us = at_us

    @event("MessagesAcknowledged")
    def _messages_acknowledged(self, at_us: int, trigger: str, state: str, up_to_seq: int) -> None:
        del self.outbox[: up_to_seq - self.acked_up_to]
        self.last_activity_us = at_us

    @event("CountersReserved")
    def _counters_reserved(
        self, at_us: int, trigger: str, state: str, key_id: str, until: int
    ) -> None:
        self.reserved_until = until

    @event("NodeRestarted")
    def _node_restarted(
        self, at_us: int, trigger: str, state: str, reason: str | None, retry_at_us: int | None
    ) -> None:
        self.heartbeat_sent_us = None
        self.link_down_since_us = None
        if reason is not None:
            self.failure_reason = reason
            self.retry_at_us = retry_at_us

    @event(Closed)
    def _closed(
        self,
        at_us: int,
        trigger: str,
        state: str,
        reason: str,
        dropped_messages: list[int],
        counters_from: int,
        counters_until: int,
    ) -> None:
        # Unlike CleanedUp, the keys stay on this object: the close frames are sealed under
        # them while the manager lets the session linger; then the object leaves memory.
        self.outbox = []
        self.close_reason = reason
        if counters_until:
            self.close_counters_from = counters_from
            self.reserved_until = counters_until

    @event("LinkWentDown")
    def _link_went_down(self, at_us: int, trigger: str, state: str) -> None:
        self.link_down_since_us = at_us

    @event("LinkCameUp")
    def _link_came_up(self, at_us: int, trigger: str, state: str) -> None:
        self.link_down_since_us = None

    @event("PartitionDetected")
    def _partition_detected(self, at_us: int, trigger: str, state: str) -> None:
        pass

    @event("ReestablishmentAttempted")
    def _reestablishment_attempted(
        self, at_us: int, trigger: str, state: str, counter: int
    ) -> None:
        self.link_down_since_us = None
        self.heartbeat_counter = counter
        self.heartbeat_sent_us = at_us

    @event("Suspended")
    def _suspended(self, at_us: int, trigger: str, state: str) -> None:
        self.heartbeat_sent_us = None


pin_topics(SessionCore, Session)  # the ledger's names for them (topics.py), here: after both
