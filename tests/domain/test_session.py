"""The Session aggregate against SPEC-018 and the decisions in docs/spec-decisions.md."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from l2_session.domain.session import timers
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import (
    InvalidState,
    MessageTooLarge,
    NotDue,
    NothingToResume,
    SessionClosed,
    StaleFrame,
    TimeWentBackwards,
    TransportFailed,
)
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import State
from l2_session.domain.session.timers import Timer
from session_helpers import (
    KEY,
    PEER,
    SECOND,
    T0,
    degraded,
    due,
    established,
    failed_by_timeout,
    miss_heartbeat,
    states,
    suspended,
    triggers,
)

HOUR = 3600 * SECOND


# ---------------------------------------------------------------- §2.1 establishment
def test_establishment_records_handshake_then_established_with_24h_lease() -> None:
    s = established()
    assert states(s) == ["handshake_initiated", "established"]
    assert s.lease_expires_us - s.at_us == 24 * HOUR
    assert s.key_id is not None and s.keys_derived_us == s.at_us


def test_command_invalid_in_state_raises_and_records_nothing() -> None:
    s = Session.open(PEER, "initiator", SessionConfig(), T0)
    version = s.version
    with pytest.raises(InvalidState, match=r"'receive_valid_response\(\)' is not allowed in "
                       r"state 'idle'.*initiate_handshake\(\)"):  # fmt: skip
        s.receive_valid_response(T0, KEY)
    assert s.version == version and s.state == State.IDLE


def test_message_over_size_limit_is_refused_and_nothing_recorded() -> None:
    s = established(config=SessionConfig(max_message_size=8))
    version = s.version
    with pytest.raises(MessageTooLarge, match="9 bytes is over the limit of 8"):
        s.submit_message(s.at_us, b"123456789")
    assert s.version == version and s.unacknowledged() == []


def test_timer_command_before_its_deadline_is_not_due() -> None:
    s = Session.open(PEER, "initiator", SessionConfig(), T0)
    s.initiate_handshake(T0)
    with pytest.raises(NotDue):
        s.handshake_timed_out(T0 + 5 * SECOND - 1, None)
    assert s.state == State.HANDSHAKE_INITIATED
    s.handshake_timed_out(T0 + 5 * SECOND, None)
    assert s.state == State.FAILED and s.failure_reason == "timeout"


# ---------------------------------------------------------------- decision 1
def test_three_missed_heartbeats_degrade_then_suspend() -> None:
    s = established()
    miss_heartbeat(s)
    miss_heartbeat(s)
    assert s.state == State.ESTABLISHED
    miss_heartbeat(s)
    assert s.state == State.DEGRADED, "decision 1: the third miss degrades, it does not suspend"
    deadline = due(s, Timer.DEGRADED_TIMEOUT)
    assert deadline - s.state_since_us == 60 * SECOND
    with pytest.raises(NotDue):
        s.degraded_timed_out(deadline - 1)
    s.degraded_timed_out(deadline)
    assert s.state == State.SUSPENDED
    assert states(s)[-2:] == ["degraded", "suspended"]


# ---------------------------------------------------------------- decision 2
def test_single_missed_heartbeat_stays_established() -> None:
    s = established()
    miss_heartbeat(s)
    assert s.state == State.ESTABLISHED and s.missed_heartbeats == 1
    counter = s.heartbeat_due(due(s, Timer.SEND_HEARTBEAT))
    s.receive_heartbeat_ack(s.at_us + SECOND, counter)
    assert s.state == State.ESTABLISHED and s.missed_heartbeats == 0


def test_transport_partition_degrades_after_30s_not_before() -> None:
    s = established()
    lost_at = s.at_us + SECOND
    s.connectivity_lost(lost_at)
    with pytest.raises(NotDue):
        s.partition_detected(lost_at + 30 * SECOND - 1)
    # A link that comes back within 30 s cancels the partition timer.
    s.connectivity_restored(lost_at + 10 * SECOND)
    assert Timer.PARTITION not in timers.deadlines(s)
    s.connectivity_lost(lost_at + 11 * SECOND)
    s.partition_detected(lost_at + 41 * SECOND)
    assert s.state == State.DEGRADED


def test_stale_heartbeat_ack_is_refused() -> None:
    s = established()
    counter = s.heartbeat_due(due(s, Timer.SEND_HEARTBEAT))
    with pytest.raises(StaleFrame):
        s.receive_heartbeat_ack(s.at_us, counter - 1)  # §7.1 replay of an old counter


# ---------------------------------------------------------------- decision 3
def test_heartbeat_extends_lease_not_key_age() -> None:
    s = established()
    keys_at, rotation_at = s.keys_derived_us, due(s, Timer.ROTATION)
    assert rotation_at == keys_at + 23 * HOUR  # ttl - rotation_window
    counter = s.heartbeat_due(due(s, Timer.SEND_HEARTBEAT))
    answered = s.at_us + SECOND
    s.receive_heartbeat_ack(answered, counter)
    assert s.lease_expires_us == answered + 24 * HOUR
    assert s.keys_derived_us == keys_at and due(s, Timer.ROTATION) == rotation_at


def test_rotation_replaces_keys_and_restarts_key_age() -> None:
    s = established()
    old = s.key_id
    s.time_to_rotate(due(s, Timer.ROTATION))
    assert s.state == State.ROTATING
    s.submit_message(s.at_us, b"during rotation")
    assert s.sendable() == []  # held until the new keys are in place
    s.rotation_complete(s.at_us + SECOND, b"\x01" * 32)
    assert s.state == State.ESTABLISHED and s.key_id != old
    assert s.keys_derived_us == s.at_us and [p for _, p in s.sendable()] == [b"during rotation"]


# ---------------------------------------------------------------- decision 4
def test_resumption_reuses_keys_through_handshake_initiated() -> None:
    s = suspended(established())
    key_id, keys_at = s.key_id, s.keys_derived_us
    start = s.at_us + SECOND
    s.initiate_resumption(start, "prekeys-1")
    assert s.state == State.HANDSHAKE_INITIATED
    assert due(s, Timer.HANDSHAKE_TIMEOUT) == start + 100_000  # "within 100ms"
    s.receive_valid_response(start + 40_000)
    assert s.state == State.ESTABLISHED
    assert s.key_id == key_id and s.keys_derived_us == keys_at
    assert s.pending_events[-1].new_keys is False
    assert ("idle", "established") not in zip(states(s), states(s)[1:], strict=False)


def test_resumption_reply_after_100ms_is_a_timeout() -> None:
    s = suspended(established())
    start = s.at_us
    s.initiate_resumption(start, "prekeys-1")
    s.handshake_timed_out(start + 100_000, retry_at_us=None)
    assert s.state == State.FAILED and s.failure_reason == "timeout"
    with pytest.raises(InvalidState):
        s.receive_valid_response(start + 150_000)


def test_resumption_refused_when_prekeys_changed_or_no_keys() -> None:
    s = suspended(established())
    version = s.version
    with pytest.raises(NothingToResume, match="prekeys changed"):
        s.initiate_resumption(s.at_us, "prekeys-2")
    assert s.version == version
    with pytest.raises(NothingToResume, match="never derived keys"):
        failed_by_timeout().initiate_resumption(T0 + 10 * SECOND, "prekeys-1")


# ---------------------------------------------------------------- decision 5
def test_connectivity_restored_alone_stays_degraded() -> None:
    s = degraded(established())
    s.submit_message(s.at_us, b"held")
    assert s.sendable() == []
    counter = s.connectivity_restored(s.at_us + SECOND)
    assert s.state == State.DEGRADED and s.sendable() == []
    assert triggers(s)[-1] == "connectivity_restored"
    assert counter is not None
    s.receive_heartbeat_ack(s.at_us + SECOND, counter)
    assert s.state == State.ESTABLISHED
    assert triggers(s)[-1] == "connectivity_restored + reply"
    assert [p for _, p in s.sendable()] == [b"held"]


# ---------------------------------------------------------------- decision 6
def test_responder_established_only_on_ack() -> None:
    s = Session.open(PEER, "responder", SessionConfig(), T0)
    s.receive_handshake(T0)
    s.submit_message(T0, b"early")
    assert s.state == State.HANDSHAKE_RECEIVED and s.sendable() == [] and s.key_id is None
    s.receive_ack(T0 + 20_000, KEY)
    assert s.state == State.ESTABLISHED and [p for _, p in s.sendable()] == [b"early"]

    forged = Session.open(PEER, "responder", SessionConfig(), T0)
    forged.receive_handshake(T0)
    forged.receive_invalid_signature(T0 + 20_000, retry_at_us=None)
    assert forged.state == State.FAILED and forged.failure_reason == "authentication_failed"


# ---------------------------------------------------------------- decision 8
def test_cleanup_closes_but_keeps_history(session_ledger_factory) -> None:  # type: ignore[no-untyped-def]
    ledger = session_ledger_factory()
    s = failed_by_timeout()
    s.submit_message(s.at_us, b"never sent")
    s.cleanup(s.at_us + SECOND)
    assert s.closed and s.pending_events[-1].dropped_messages == [1]
    with pytest.raises(SessionClosed):
        s.retry_with_backoff(s.at_us + HOUR)
    ledger.save(s)
    stored = list(ledger.events.get(s.id))
    assert [type(e).__name__ for e in stored] == [
        "Opened", "HandshakeInitiated", "Failed", "MessageQueued", "CleanedUp",
    ]  # fmt: skip
    assert ledger.repository.get(s.id).closed


# ---------------------------------------------------------------- decision 9
def test_event_time_is_the_command_time() -> None:
    s = established()
    assert [e.timestamp for e in s.pending_events] == [
        datetime.fromtimestamp(t / SECOND, tz=UTC) for t in (T0, T0, T0 + 50_000)
    ]
    version = s.version
    with pytest.raises(TimeWentBackwards):
        s.submit_message(T0, b"from the past")
    assert s.version == version


def test_idle_session_keeps_under_30_attributes() -> None:
    """CPython shares instance-dict keys up to 29 attributes; beyond, an idle session costs
    ~1.3 KiB more and the issue-3 target of 2 KiB per idle session is lost."""
    s = established()
    s.collect_events()
    assert len(vars(s)) <= 29, sorted(vars(s))


def test_transport_fallback_keeps_state_and_holds_messages() -> None:
    s = established()
    assert s.transport_failed(s.at_us) == "utcp"
    s.submit_message(s.at_us, b"x")
    assert s.state == State.ESTABLISHED and s.sendable() == []
    s.transport_switched(s.at_us + SECOND)
    assert s.transport == "utcp" and [p for _, p in s.sendable()] == [b"x"]
    with pytest.raises(TransportFailed, match="no transport to fall back to from utcp"):
        s.transport_failed(s.at_us)


def test_a_session_records_the_transport_that_carries_it() -> None:
    # Decision 20: plain TCP is outside the spec's QUIC -> μTCP order: nothing to fall back to.
    s = Session.open(PEER, "initiator", SessionConfig(), T0, transport="tcp")
    assert s.transport == "tcp"
    assert Session.open(PEER, "initiator", SessionConfig(), T0).transport == "quic"
    s.initiate_handshake(T0)
    s.receive_valid_response(T0 + 1, KEY)
    with pytest.raises(TransportFailed, match=r"from tcp \(the fallback order is quic -> utcp\)"):
        s.transport_failed(T0 + 2)
    assert s.transport == "tcp" and not s.fallback_pending
    with pytest.raises(ValueError, match="transport 'websocket' is not one of quic, utcp, tcp"):
        Session.open(PEER, "initiator", SessionConfig(), T0, transport="websocket")
