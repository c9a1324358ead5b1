"""Every deadline of SPEC-018, named once (after WireGuard's ``timers.c``).

A deadline is never stored as "a timer that was set": it is derived from what the session
has recorded (when the handshake started, when the last heartbeat went out, since when the
link is down, ...). Replaying a session's events after a restart therefore re-derives every
pending deadline, and the manager only has to ask ``deadlines(session)`` again.

Times are microseconds on the session timeline (decision 9 in docs/spec-decisions.md).
Each timer names the session command that fires when it is due.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.states import State

US = 1_000_000


def us(seconds: float) -> int:
    return round(seconds * US)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def timestamp_of(at_us: int) -> datetime:
    """An event's timestamp is the command's time (decision 9), never a clock reading.
    Integer arithmetic, so that ``micros_of(timestamp_of(t)) == t`` exactly."""
    return EPOCH + timedelta(microseconds=at_us)


def micros_of(timestamp: datetime) -> int:
    return (timestamp - EPOCH) // _ONE_US


class TimedSession(Protocol):
    """What the deadline rules read of a session: recorded state only. The ``Session``
    aggregate (core.py) has it all; the aggregate asks these rules, so they name no class."""

    @property
    def state(self) -> State: ...
    @property
    def config(self) -> SessionConfig: ...
    @property
    def role(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    @property
    def resuming(self) -> bool: ...
    @property
    def state_since_us(self) -> int: ...
    @property
    def last_activity_us(self) -> int: ...
    @property
    def heartbeat_sent_us(self) -> int | None: ...
    @property
    def link_down_since_us(self) -> int | None: ...
    @property
    def keys_derived_us(self) -> int | None: ...
    @property
    def retry_at_us(self) -> int | None: ...
    @property
    def lease_expires_us(self) -> int: ...
    @property
    def key_material(self) -> bytes | None: ...
    @property
    def next_seq(self) -> int: ...
    @property
    def next_expected_seq(self) -> int: ...


class Timer(StrEnum):
    """The value is the name of the ``Session`` command the timer fires."""

    HANDSHAKE_TIMEOUT = "handshake_timed_out"
    """§2.1 "no response within 5 seconds" (100 ms for a resumption, decision 4)."""
    SEND_HEARTBEAT = "heartbeat_due"
    """§2.2 "30 seconds pass without activity"."""
    HEARTBEAT_RESPONSE = "heartbeat_timed_out"
    """§2.2 "peer responds within 2 seconds"."""
    PARTITION = "partition_detected"
    """§2.3 "connectivity lost for >30s"."""
    DEGRADED_TIMEOUT = "degraded_timed_out"
    """§3.2 ``degraded --> suspended: timeout(60s)``."""
    SUSPENDED_RECOVERY = "retry"
    """§2.2 "recovery is attempted after 60s"."""
    ROTATION = "time_to_rotate"
    """§2.2 rotation window: key age reaches ttl - rotation_window (decision 3)."""
    ROTATION_TIMEOUT = "rotation_timed_out"
    """§3.2 ``rotating --> failed: rotation_timeout``."""
    RETRY_BACKOFF = "retry_with_backoff"
    """§2.1 "retry is scheduled with exponential backoff" (the peer decides when)."""
    LEASE_EXPIRY = "cleanup"
    """§3.1 ``[cleanup]`` of a suspended or failed session whose lease ran out (decision 8)."""


def handshake_timeout(s: TimedSession) -> int | None:
    if s.state in (State.HANDSHAKE_INITIATED, State.HANDSHAKE_RECEIVED):
        limit = s.config.resumption_timeout if s.resuming else s.config.handshake_timeout
        return s.state_since_us + us(limit)
    return None


def send_heartbeat(s: TimedSession) -> int | None:
    if s.state in (State.ESTABLISHED, State.DEGRADED) and s.heartbeat_sent_us is None:
        return s.last_activity_us + us(s.config.heartbeat_interval)
    return None


def heartbeat_response(s: TimedSession) -> int | None:
    if s.state in (State.ESTABLISHED, State.DEGRADED) and s.heartbeat_sent_us is not None:
        return s.heartbeat_sent_us + us(s.config.heartbeat_response_timeout)
    return None


def partition(s: TimedSession) -> int | None:
    if s.state == State.ESTABLISHED and s.link_down_since_us is not None:
        return s.link_down_since_us + us(s.config.partition_threshold)
    return None


def degraded_timeout(s: TimedSession) -> int | None:
    if s.state == State.DEGRADED:
        return s.state_since_us + us(s.config.degraded_timeout)
    return None


def suspended_recovery(s: TimedSession) -> int | None:
    if s.state == State.SUSPENDED:
        return s.state_since_us + us(s.config.suspended_recovery)
    return None


def rotation(s: TimedSession) -> int | None:
    # Only the initiator starts a rotation, so the two ends never race (decision 3).
    if s.state == State.ESTABLISHED and s.role == "initiator" and s.keys_derived_us is not None:
        return s.keys_derived_us + us(s.config.ttl - s.config.rotation_window)
    return None


def rotation_timeout(s: TimedSession) -> int | None:
    if s.state == State.ROTATING:
        return s.state_since_us + us(s.config.rotation_timeout)
    return None


def retry_backoff(s: TimedSession) -> int | None:
    if s.state == State.FAILED and s.retry_at_us is not None:
        return s.retry_at_us
    return None


def lease_expiry(s: TimedSession) -> int | None:
    if s.state == State.FAILED and holds_nothing(s):
        return s.state_since_us  # decision 15: nothing for a lease to keep; clean up now
    if s.state in (State.SUSPENDED, State.FAILED):
        return s.lease_expires_us
    return None


def holds_nothing(s: TimedSession) -> bool:
    """A responder's session that never had keys and never took a message: its handshake
    failed before it began, so there is nothing to resume, nothing to deliver and no state a
    retry needs (a new session answers it the same way). Decision 15: it is cleaned up when
    it fails, instead of staying for the lease (24 h) — under a handshake flood, sessions in
    memory are then bounded by the admission rate × the handshake timeout."""
    return (
        s.role == "responder"
        and s.key_material is None
        and s.next_seq == 1
        and s.next_expected_seq == 1
    )


DEADLINES = {
    Timer.HANDSHAKE_TIMEOUT: handshake_timeout,
    Timer.SEND_HEARTBEAT: send_heartbeat,
    Timer.HEARTBEAT_RESPONSE: heartbeat_response,
    Timer.PARTITION: partition,
    Timer.DEGRADED_TIMEOUT: degraded_timeout,
    Timer.SUSPENDED_RECOVERY: suspended_recovery,
    Timer.ROTATION: rotation,
    Timer.ROTATION_TIMEOUT: rotation_timeout,
    Timer.RETRY_BACKOFF: retry_backoff,
    Timer.LEASE_EXPIRY: lease_expiry,
}


_T = Timer
PENDING_IN: dict[State, frozenset[Timer]] = {
    State.IDLE: frozenset(),
    State.HANDSHAKE_INITIATED: frozenset({_T.HANDSHAKE_TIMEOUT}),
    State.HANDSHAKE_RECEIVED: frozenset({_T.HANDSHAKE_TIMEOUT}),
    State.ESTABLISHED: frozenset(
        {_T.SEND_HEARTBEAT, _T.HEARTBEAT_RESPONSE, _T.PARTITION, _T.ROTATION}
    ),
    State.DEGRADED: frozenset({_T.SEND_HEARTBEAT, _T.HEARTBEAT_RESPONSE, _T.DEGRADED_TIMEOUT}),
    State.ROTATING: frozenset({_T.ROTATION_TIMEOUT}),
    State.SUSPENDED: frozenset({_T.SUSPENDED_RECOVERY, _T.LEASE_EXPIRY}),
    State.FAILED: frozenset({_T.RETRY_BACKOFF, _T.LEASE_EXPIRY}),
}
"""The timers each state can have pending (each rule above still checks for itself). Only
``next_deadline``, which runs after every command, reads it, to ask 1-4 rules instead of
all; the hypothesis state machine checks it never hides a deadline the rules report."""

_RULES = tuple(DEADLINES.items())
_RULES_IN = {
    state: tuple((timer, rule) for timer, rule in _RULES if timer in pending)
    for state, pending in PENDING_IN.items()
}


def deadlines(s: TimedSession) -> dict[Timer, int]:
    """Every deadline pending for ``s``; empty once it is closed."""
    if s.closed:
        return {}
    found = {timer: rule(s) for timer, rule in _RULES}
    return {timer: at for timer, at in found.items() if at is not None}


def next_deadline(s: TimedSession) -> tuple[int, Timer] | None:
    """The earliest pending deadline of ``s`` (on a tie, the timer listed first above).
    The manager asks after every command, so this builds no collection: one pass over the
    rules of the session's state."""
    if s.closed:
        return None
    best: tuple[int, Timer] | None = None
    for timer, rule in _RULES_IN[s.state]:
        at = rule(s)
        if at is not None and (best is None or at < best[0]):
            best = (at, timer)
    return best


def is_due(s: TimedSession, timer: Timer, now_us: int) -> bool:
    at = DEADLINES[timer](s)
    return at is not None and not s.closed and at <= now_us


# ---------------------------------------------------------------------- after a close
# A closed session has no deadlines of its own; while the manager lets it linger (decision 17)
# these two say when its close is sent again and when it leaves memory. Memory only: a close
# is recorded once, its resends are not.


def close_resend_after(config: SessionConfig, resends: int) -> int:
    """How long after the close's previous sending it goes again, unacknowledged: the
    heartbeat's response time (§2.2 "peer responds within 2 seconds"), doubling each time."""
    return us(config.heartbeat_response_timeout * 2**resends)


def close_linger(config: SessionConfig) -> int:
    """How long a closed session stays to resend and answer its close: one heartbeat interval
    and its response time, so that a peer that missed every close has sent a heartbeat (which
    is answered with the close) before the linger ends."""
    return us(config.heartbeat_interval + config.heartbeat_response_timeout)
