"""Transmission: how a session's messages travel, as a real transport carries them.

Memory only, per session, made when a session has traffic and let go when it has had none for
a while. The ledger holds what must survive a crash — the messages queued (the outbox), the
messages delivered (``next_expected_seq``), the acknowledgements — and this holds what a
restart may forget: when each message in flight was sent, the round-trip time, the timers, the
messages that arrived ahead of a gap. A restarted or reloaded session has none of it, and
sends every unacknowledged message once more, which the peer drops as duplicates and
acknowledges (docs/spec-decisions.md, decision 21).

Sending. A message goes out once, when it is queued and the session can send (established, no
fallback pending); messages held meanwhile go out when it becomes able to (``Established``,
``TransportSwitched``, the reply that ends ``degraded``, ``LinkCameUp``) — and then, since
what was in flight before may be lost with the link or the keys, every unacknowledged message
goes out once. Nothing else sends data: not another message queued, not a heartbeat.

Retransmission, two ways (RFC 6298, RFC 5681, RFC 6582, RFC 9002 §6):
- the retransmission timeout (RTO; QUIC's probe timeout): ``smoothed_rtt + max(4·rttvar,
  granularity) + max_ack_delay``, doubled at each expiry, kept within [``MIN_RTO_US``,
  ``MAX_RTO_US``]. Armed when a message goes out and none was in flight, restarted when an
  acknowledgement covers new messages, stopped when nothing is in flight. When it expires the
  oldest unacknowledged message is sent again;
- fast retransmit: ``DUPLICATE_ACKS`` acknowledgements in a row that cover nothing new, while
  messages are in flight, mean the next one was lost: it is sent again at once.
After either, until everything then in flight is acknowledged (recovery), an acknowledgement
that covers some but not all of it sends the next unacknowledged message again at once
(NewReno's partial acknowledgement), so a burst of losses costs a round trip each, not a
timeout each.

Round-trip time (RFC 9002 §5, RFC 6298 §2): samples from acknowledgements whose newest
message was sent once only (Karn: a retransmitted one is ambiguous), smoothed with gains 1/8
and 1/4. Before the first sample: the handshake's round trip if the manager measured one (the
request's time to its answer, only if below the default), else QUIC's initial 333 ms.

Receiving. Messages are delivered in order, once: a message ahead of a gap is kept (at most
``send_window`` of them) and delivered when the gap is filled, so one loss does not make the
peer send the whole window again. Acknowledgements are cumulative and delayed a little
(RFC 9000 §13.2): at most one per session per batch of frames, after the batch's save; at once
for a second new message since the last acknowledgement, for a gap, a filled gap or a
duplicate (the sender's loss detection needs those); otherwise after ``max_ack_delay``.

Acknowledgements received are recorded (``MessagesAcknowledged``) without a save of their own:
they ride with the session's next save, and at most ``UNSAVED_ACK_US`` or ``UNSAVED_EVENTS``
later the manager's tick saves them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from l2_session.domain.manager.deadlines import DeadlineHeap
from l2_session.domain.session import timers
from l2_session.domain.session.commands import Data, DataAck
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import Trigger, is_allowed

INITIAL_RTT_US = 333_000  # RFC 9002 §6.2.2 kInitialRtt
GRANULARITY_US = 1_000  # RFC 9002 kGranularity
# Linux's TCP_RTO_MIN: a save at durability "full" can hold a receiver's event loop for tens of
# milliseconds; a floor well above that keeps such a stall from looking like a loss.
MIN_RTO_US = 200_000
MAX_RTO_US = 60_000_000  # RFC 6298 (2.5): a maximum of at least 60 s
DUPLICATE_ACKS = 3  # RFC 5681 §3.2
ACK_EVERY = 2  # RFC 9000 §13.2.2: acknowledge at least every second message at once
UNSAVED_ACK_US = 1_000_000  # acknowledgements wait at most this long for a save ...
UNSAVED_EVENTS = 64  # ... or until the session holds this many unsaved events
IDLE_US = 10_000_000  # state of a session without traffic this long is let go
REMEMBERED = 4096  # round-trip estimates kept for sessions whose state was let go

# Events after which the session may send again what it held, and what was in flight may be
# lost: every unacknowledged message goes (again) once.
_REOPENING = frozenset({"Established", "TransportSwitched", "LinkCameUp"})
_REESTABLISHED = Trigger.REESTABLISHMENT_CONFIRMED.value  # HeartbeatAnswered out of degraded


class RttEstimator:
    """RFC 9002 §5.3 (the smoothed RTT and its variation), without the peer's ack delay, which
    DataAck does not carry: samples include it, and so err on the long side."""

    __slots__ = ("latest_us", "min_us", "smoothed_us", "variation_us")

    def __init__(self, sampled: tuple[int, int] | None = None) -> None:
        """``sampled``: (smoothed, variation) from earlier samples; else the initial guess,
        which the first sample replaces."""
        self.min_us: int | None = None
        self.latest_us: int | None = None
        if sampled is None:
            self.smoothed_us, self.variation_us = INITIAL_RTT_US, INITIAL_RTT_US // 2
        else:
            self.smoothed_us, self.variation_us = sampled
            self.latest_us = self.smoothed_us

    def sample(self, rtt_us: int) -> None:
        rtt_us = max(rtt_us, 1)
        if self.latest_us is None:  # the first sample replaces the initial guess
            self.smoothed_us, self.variation_us = rtt_us, rtt_us // 2
        else:
            self.variation_us = (3 * self.variation_us + abs(self.smoothed_us - rtt_us)) // 4
            self.smoothed_us = (7 * self.smoothed_us + rtt_us) // 8
        self.latest_us = rtt_us
        self.min_us = rtt_us if self.min_us is None else min(self.min_us, rtt_us)

    def timeout_us(self, max_ack_delay_us: int, backoff: int) -> int:
        """The RTO (RFC 9002's PTO): doubled ``backoff`` times, within the floor and the cap."""
        base = self.smoothed_us + max(4 * self.variation_us, GRANULARITY_US) + max_ack_delay_us
        return min(MAX_RTO_US, max(MIN_RTO_US, base) << min(backoff, 16))


class Transmission:
    """One session's transmission state: the sending and the receiving half."""

    __slots__ = (
        "ack_at_us",
        "ack_now",
        "armed_at_us",
        "backoff",
        "duplicate_acks",
        "held",
        "idle_at_us",
        "new_since_ack",
        "pump_at_us",
        "recover_up_to",
        "retransmitted",
        "rto_at_us",
        "rtt",
        "save_at_us",
        "sent_at",
        "sent_up_to",
    )

    def __init__(self, s: Session, rtt: RttEstimator) -> None:
        self.rtt = rtt
        # Sending: each message in flight's first sending, those sent more than once.
        self.sent_up_to = s.acked_up_to  # nothing sent yet, as far as this state knows
        self.sent_at: dict[int, int] = {}
        self.retransmitted: set[int] = set()
        self.backoff = 0
        self.rto_at_us: int | None = None
        self.duplicate_acks = 0
        self.recover_up_to: int | None = None
        self.pump_at_us: int | None = None  # a reloaded session sends what it has, then
        # Receiving: messages ahead of a gap, and what the next acknowledgement owes.
        self.held: dict[int, bytes] = {}
        self.new_since_ack = 0
        self.ack_now = False
        self.ack_at_us: int | None = None
        self.save_at_us: int | None = None  # acknowledgements recorded, not saved
        self.idle_at_us: int | None = None
        self.armed_at_us: int | None = None

    def wake_at(self) -> int | None:
        wakes = (
            self.rto_at_us,
            self.ack_at_us,
            self.save_at_us,
            self.pump_at_us,
            self.idle_at_us,
        )
        return min((at for at in wakes if at is not None), default=None)

    def idle(self) -> bool:
        return not (self.sent_at or self.held or self.new_since_ack or self.ack_now) and (
            self.save_at_us is None and self.pump_at_us is None
        )

    # ---------------------------------------------------------------- sending
    def send_new(self, s: Session, up_to: int, now_us: int, max_ack_delay_us: int) -> list[Data]:
        """First sendings of the messages after ``sent_up_to``, up to ``up_to``."""
        first = max(self.sent_up_to, s.acked_up_to) + 1
        last = min(up_to, s.next_seq - 1)
        if last < first:
            return []
        base = s.acked_up_to + 1
        frames = [Data(s.conversation, seq, s.outbox[seq - base]) for seq in range(first, last + 1)]
        for seq in range(first, last + 1):
            self.sent_at[seq] = now_us
        self.sent_up_to = last
        if self.rto_at_us is None:
            self.rto_at_us = now_us + self.rtt.timeout_us(max_ack_delay_us, self.backoff)
        return frames

    def restart_sending(self, s: Session) -> None:
        """Everything unacknowledged goes once more: forget what was in flight."""
        self.sent_up_to = s.acked_up_to
        self.sent_at.clear()
        self.retransmitted.clear()
        self.backoff = self.duplicate_acks = 0
        self.rto_at_us = self.recover_up_to = self.pump_at_us = None

    def retransmit_oldest(self, s: Session, now_us: int, max_ack_delay_us: int) -> list[Data]:
        seq = s.acked_up_to + 1
        if seq > self.sent_up_to or not s.outbox:
            return []
        self.retransmitted.add(seq)
        self.rto_at_us = now_us + self.rtt.timeout_us(max_ack_delay_us, self.backoff)
        return [Data(s.conversation, seq, s.outbox[0])]

    def acknowledged(
        self, s: Session, before: int, now_us: int, max_ack_delay_us: int
    ) -> list[Data]:
        """``s`` recorded an acknowledgement of the messages after ``before``."""
        up_to = s.acked_up_to
        sent_at = self.sent_at.get(up_to)
        if sent_at is not None and up_to not in self.retransmitted:
            self.rtt.sample(now_us - sent_at)
        for seq in range(before + 1, up_to + 1):
            self.sent_at.pop(seq, None)
            self.retransmitted.discard(seq)
        self.backoff = self.duplicate_acks = 0
        out: list[Data] = []
        if self.recover_up_to is not None:
            if up_to >= self.recover_up_to:
                self.recover_up_to = None
            else:  # a partial acknowledgement: the next one was lost too (RFC 6582)
                out = self.retransmit_oldest(s, now_us, max_ack_delay_us)
        in_flight = self.sent_up_to > up_to
        if not in_flight:
            self.rto_at_us = None
        elif not out:
            self.rto_at_us = now_us + self.rtt.timeout_us(max_ack_delay_us, self.backoff)
        return out

    def duplicate_ack(self, s: Session, now_us: int, max_ack_delay_us: int) -> list[Data]:
        if self.sent_up_to <= s.acked_up_to:
            return []  # nothing in flight: not a sign of loss
        self.duplicate_acks += 1
        if self.duplicate_acks != DUPLICATE_ACKS or self.recover_up_to is not None:
            return []
        self.recover_up_to = self.sent_up_to
        return self.retransmit_oldest(s, now_us, max_ack_delay_us)

    def timed_out(self, s: Session, now_us: int, max_ack_delay_us: int) -> list[Data]:
        self.rto_at_us = None
        if not s.can_send or self.sent_up_to <= s.acked_up_to:
            return []  # what is in flight goes again when the session can send (_REOPENING)
        self.backoff += 1
        self.duplicate_acks = 0
        self.recover_up_to = self.sent_up_to
        return self.retransmit_oldest(s, now_us, max_ack_delay_us)

    # ---------------------------------------------------------------- receiving
    def received(self, s: Session, seq: int, payload: bytes, now_us: int) -> bool:
        """Deliver ``seq`` and what was held after it, or hold it; True if anything was
        delivered (recorded on ``s``, to be saved before any output of it)."""
        if not s.receive_message(now_us, seq, payload):
            if s.next_expected_seq < seq < s.next_expected_seq + s.config.send_window:
                self.held.setdefault(seq, payload)
            self.ack_now = True  # a gap or a duplicate: the sender learns of it at once
            return False
        delivered = 1
        if self.held:
            self.ack_now = True  # a gap filled
            while (waiting := self.held.pop(s.next_expected_seq, None)) is not None:
                s.receive_message(now_us, s.next_expected_seq, waiting)
                delivered += 1
        self.new_since_ack += delivered
        return True

    def deliverable(self, s: Session, seq: int) -> int:
        """How many messages a frame with ``seq`` would deliver now: it and those held after
        it, if it is the next one; none otherwise."""
        if seq != s.next_expected_seq:
            return 0
        count = 1
        while seq + count in self.held:
            count += 1
        return count

    def ack_due(self) -> bool:
        return self.ack_now or self.new_since_ack >= ACK_EVERY

    def ack(self, s: Session) -> DataAck:
        self.new_since_ack, self.ack_now, self.ack_at_us = 0, False, None
        return DataAck(s.conversation, s.next_expected_seq - 1)


class Transmissions:
    """The transmission state of every session with traffic, and its deadlines: one heap,
    one live entry per session (its earliest), like the sessions' own (deadlines.py)."""

    def __init__(self) -> None:
        self._states: dict[UUID, Transmission] = {}
        self._deadlines = DeadlineHeap()
        self._remembered: OrderedDict[UUID, tuple[int, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, sid: UUID) -> Transmission | None:
        return self._states.get(sid)

    def next_at(self) -> int | None:
        return self._deadlines.next_at()

    def pop_due(self, now_us: int) -> list[UUID]:
        due = self._deadlines.pop_due(now_us)
        for sid in due:
            t = self._states.get(sid)
            if t is not None:
                t.armed_at_us = None
        return due

    def rearm(self, sid: UUID) -> None:
        t = self._states.get(sid)
        if t is not None:
            wake = t.wake_at()
            if wake != t.armed_at_us:
                t.armed_at_us = wake
                self._deadlines.arm(sid, wake)

    # ---------------------------------------------------------------- lifetime
    def state(self, s: Session) -> Transmission:
        t = self._states.get(s.id)
        if t is None:
            rtt = RttEstimator(self._remembered.pop(s.id, None))
            t = self._states[s.id] = Transmission(s, rtt)
        return t

    def remember_rtt(self, sid: UUID, smoothed_us: int, variation_us: int) -> None:
        """An estimate for the session's next state (the handshake's round trip, or the
        estimate of a state let go); the oldest go beyond ``REMEMBERED``."""
        self._remembered[sid] = (smoothed_us, variation_us)
        self._remembered.move_to_end(sid)
        while len(self._remembered) > REMEMBERED:
            self._remembered.popitem(last=False)

    def handshake_rtt(self, sid: UUID, rtt_us: int) -> None:
        """The handshake's round trip (request to answer), a first sample; used only below
        the default, since a lost and repeated handshake frame makes it long."""
        if 0 < rtt_us < INITIAL_RTT_US and sid not in self._states:
            self.remember_rtt(sid, rtt_us, rtt_us // 2)

    def forget(self, sid: UUID) -> None:
        if self._states.pop(sid, None) is not None:
            self._deadlines.arm(sid, None)

    def replayed(self, s: Session, now_us: int) -> None:
        """``s`` was replayed from the ledger (a reload after a failed save): what was in
        flight is unknown, so what it holds unacknowledged goes once more, at the next tick."""
        self.forget(s.id)
        if s.outbox:
            self.state(s).pump_at_us = max(now_us, s.at_us)
            self.rearm(s.id)

    def _settle(self, s: Session, t: Transmission, now_us: int) -> None:
        """After any change: note when the state fell idle, and re-arm."""
        if t.idle():
            if t.idle_at_us is None:
                t.idle_at_us = now_us + IDLE_US
        else:
            t.idle_at_us = None
        self.rearm(s.id)

    # ---------------------------------------------------------------- the manager's calls
    def after_save(self, s: Session, events: Iterable[Any], now_us: int) -> list[Data]:
        """The data frames that saved ``events`` of ``s`` send: new messages, or everything
        unacknowledged once the session is able to send again."""
        reopened, newest = False, 0
        for e in events:
            name = type(e).__name__
            if name == "MessageQueued":
                newest = max(newest, e.seq)
            elif name in _REOPENING or (
                name == "HeartbeatAnswered" and e.trigger == _REESTABLISHED
            ):
                reopened = True
        if not (reopened or newest) or not s.can_send:
            return []
        t = self._states.get(s.id)
        if t is None and not s.outbox:
            return []
        t = t or self.state(s)
        if reopened:
            t.restart_sending(s)
            newest = s.next_seq - 1
        frames = t.send_new(s, newest, now_us, _max_ack_delay_us(s))
        self._settle(s, t, now_us)
        return frames

    def received(self, s: Session, seq: int, payload: bytes, now_us: int) -> bool:
        t = self.state(s)
        try:
            return t.received(s, seq, payload, now_us)
        finally:
            self._settle(s, t, now_us)

    def deliverable(self, s: Session, seq: int) -> int:
        """See ``Transmission.deliverable``."""
        t = self._states.get(s.id)
        if t is None:
            return 1 if seq == s.next_expected_seq else 0
        return t.deliverable(s, seq)

    def ack_after_save(self, s: Session, now_us: int) -> list[DataAck]:
        """What a batch's last data frame for ``s`` answers, once the batch is saved: an
        acknowledgement now, or a deadline for one."""
        t = self._states.get(s.id)
        if t is None or not _acknowledges(s):
            return []
        if t.ack_due():
            out = [t.ack(s)]
        else:
            if t.new_since_ack and t.ack_at_us is None:
                t.ack_at_us = now_us + _max_ack_delay_us(s)
            out = []
        self._settle(s, t, now_us)
        return out

    def acknowledgement(self, s: Session, up_to: int, now_us: int) -> list[Data]:
        """A DataAck: recorded on ``s`` if it covers new messages (saved later, with the
        session's next save); the messages to send again, if it shows a loss."""
        before = s.acked_up_to
        s.receive_message_ack(now_us, up_to)  # decides; records only what is new
        t = self._states.get(s.id)
        if s.acked_up_to > before:
            out = [] if t is None else t.acknowledged(s, before, now_us, _max_ack_delay_us(s))
            t = t or self.state(s)
            if len(s.pending_events) >= UNSAVED_EVENTS:
                t.save_at_us = now_us
            elif t.save_at_us is None:
                t.save_at_us = now_us + UNSAVED_ACK_US
        elif up_to == before and t is not None:
            out = t.duplicate_ack(s, now_us, _max_ack_delay_us(s))
        else:
            return []
        self._settle(s, t, now_us)
        return out

    def saved(self, sid: UUID) -> None:
        """The session's pending events went into the ledger."""
        t = self._states.get(sid)
        if t is not None and t.save_at_us is not None:
            t.save_at_us = None

    def needs_save(self, s: Session, now_us: int) -> bool:
        t = self._states.get(s.id)
        return (
            t is not None
            and t.save_at_us is not None
            and t.save_at_us <= now_us
            and bool(s.pending_events)
        )

    def fire(self, s: Session, now_us: int) -> list[Data | DataAck]:
        """What the due deadlines of ``s`` send: a retransmission, a delayed acknowledgement,
        what a reloaded session holds. Nothing here needs a save: the messages sent and the
        deliveries acknowledged are in the ledger already."""
        t = self._states.get(s.id)
        if t is None:
            return []
        delay = _max_ack_delay_us(s)
        out: list[Data | DataAck] = []
        if t.save_at_us is not None and t.save_at_us <= now_us:
            t.save_at_us = None  # saved by the tick (needs_save), or nothing was left
        if t.pump_at_us is not None and t.pump_at_us <= now_us:
            t.pump_at_us = None
            if s.can_send:
                t.restart_sending(s)
                out += t.send_new(s, s.next_seq - 1, now_us, delay)
        if t.rto_at_us is not None and t.rto_at_us <= now_us:
            out += t.timed_out(s, now_us, delay)
        if t.ack_at_us is not None and t.ack_at_us <= now_us:
            t.ack_at_us = None
            if t.new_since_ack and _acknowledges(s):
                out.append(t.ack(s))
        if t.idle_at_us is not None and t.idle_at_us <= now_us and t.idle():
            self.remember_rtt(s.id, t.rtt.smoothed_us, t.rtt.variation_us)
            self.forget(s.id)
            return out
        self._settle(s, t, now_us)
        return out


def _acknowledges(s: Session) -> bool:
    """Acknowledgements go where messages are received: not once the session is closed, or
    suspended, or in a new handshake (the peer's messages come again after it)."""
    return not s.closed and is_allowed(s.state, Trigger.RECEIVE_MESSAGE)


def _max_ack_delay_us(s: Session) -> int:
    return timers.us(s.config.max_ack_delay)
