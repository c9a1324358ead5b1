"""Restoring a session to resume it: a snapshot where resumption starts, and a cheap replay.

The ledger snapshots a session at the event that takes it into ``suspended`` or ``failed``
(``snapshot_when``, application.py), whatever ``snapshot_interval`` says, so a restore before
``resume`` starts from that snapshot and replays nothing; and it replays with
``replay_events``, which must rebuild exactly what eventsourcing's ``project_aggregate`` does.
"""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.application import ProgrammingError, project_aggregate
from l2_session.domain.session import timers
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.session import Session
from l2_session.domain.session.timers import Timer
from l2_session.infrastructure.ledger.application import (
    RESUMABLE_STATES,
    replay_events,
    snapshot_on_entering_resumable_state,
)
from ledger_aggregates import Conversation, state_of
from pgserver import open_raw

T0 = 1_767_225_600_000_000
KEY = bytes(range(32))
NEVER = 1_000_000  # an interval no test session reaches: only `snapshot_when` snapshots


def due(s: Session, timer: Timer) -> int:
    return timers.deadlines(s)[timer]


def established(ledger: Any) -> Session:
    s = Session.open("did:key:z6MkPeer", "initiator", SessionConfig(), T0)
    s.initiate_handshake(T0)
    ledger.save(s)
    s.receive_valid_response(T0 + 50_000, KEY, prekeys="prekeys-1")
    ledger.save(s)
    return s


def suspend(ledger: Any, s: Session) -> None:
    """Missed heartbeats to degraded, then the degraded timeout: saved step by step."""
    s.submit_message(s.at_us, b"queued before the silence")
    ledger.save(s)
    for _ in range(s.config.heartbeat_tolerance):
        s.heartbeat_due(due(s, Timer.SEND_HEARTBEAT))
        ledger.save(s)
        s.heartbeat_timed_out(due(s, Timer.HEARTBEAT_RESPONSE))
        ledger.save(s)
    s.degraded_timed_out(due(s, Timer.DEGRADED_TIMEOUT))
    ledger.save(s)
    assert s.state == "suspended"


def snapshot_versions(ledger: Any, sid: Any) -> list[int]:
    return [e.originator_version for e in ledger.snapshots.recorder.select_events(sid)]


def replay_reading(ledger: Any, sid: Any) -> tuple[Session, int | None, int]:
    """Replay ``sid``; the version it started after (the snapshot's) and the events read."""
    seen: dict[str, Any] = {}
    inner = ledger.events.get

    def spy(originator_id: Any, **kwargs: Any) -> Any:
        events = list(inner(originator_id, **kwargs))
        seen.update(gt=kwargs.get("gt"), read=len(events))
        return events

    ledger.events.get = spy
    try:
        return ledger.repository.get(sid), seen["gt"], seen["read"]
    finally:
        ledger.events.get = inner


def test_suspending_snapshots_at_exactly_that_version_and_restore_replays_nothing(
    ledger_factory,
):
    ledger = ledger_factory(snapshot_interval=NEVER)
    s = established(ledger)
    assert snapshot_versions(ledger, s.id) == []  # nothing resumable yet, no interval reached
    suspend(ledger, s)
    assert snapshot_versions(ledger, s.id) == [s.version]
    restored, after, read = replay_reading(ledger, s.id)
    assert (after, read) == (s.version, 0)
    assert vars(restored) == vars(s)
    restored.initiate_resumption(restored.at_us + 1, "prekeys-1")  # and it can resume from there


def test_messages_queued_while_suspended_add_no_snapshot(ledger_factory):
    ledger = ledger_factory(snapshot_interval=NEVER)
    s = established(ledger)
    suspend(ledger, s)
    at = s.version
    for i in range(3):
        s.submit_message(s.at_us + 1, b"m%d" % i)
        ledger.save(s)
    assert s.state == "suspended"
    assert snapshot_versions(ledger, s.id) == [at]
    restored, after, read = replay_reading(ledger, s.id)
    assert (after, read) == (at, 3)
    assert vars(restored) == vars(s)


def test_a_handshake_timeout_snapshots_the_failed_session(ledger_factory):
    ledger = ledger_factory(snapshot_interval=NEVER)
    s = Session.open("did:key:z6MkPeer", "initiator", SessionConfig(), T0)
    s.initiate_handshake(T0)
    ledger.save(s)
    s.handshake_timed_out(due(s, Timer.HANDSHAKE_TIMEOUT), None)
    ledger.save(s)
    assert s.state == "failed"
    assert snapshot_versions(ledger, s.id) == [s.version]
    restored, after, read = replay_reading(ledger, s.id)
    assert (after, read) == (s.version, 0)
    assert vars(restored) == vars(s)


def test_snapshot_when_none_keeps_interval_snapshots_only(ledger_factory):
    ledger = ledger_factory(snapshot_interval=NEVER, snapshot_when=None)
    s = established(ledger)
    suspend(ledger, s)
    assert snapshot_versions(ledger, s.id) == []
    restored, after, read = replay_reading(ledger, s.id)
    assert (after, read) == (None, s.version)
    assert vars(restored) == vars(s)


def test_a_custom_predicate_snapshots_other_aggregates(ledger_factory, clock):
    ledger = ledger_factory(
        snapshot_interval=NEVER, snapshot_when=lambda e: type(e).__name__ == "KeyStored"
    )
    c = Conversation(peer="p")
    c.note(text="a")
    c.store_key(b"\x07" * 32)  # version 3
    c.note(text="b")
    ledger.save(c)
    # The save with a KeyStored in it snapshots the conversation as the save left it.
    assert snapshot_versions(ledger, c.id) == [c.version] == [4]
    c.note(text="c")
    ledger.save(c)
    assert snapshot_versions(ledger, c.id) == [4]  # nothing the predicate takes
    assert state_of(ledger.repository.get(c.id)) == state_of(c)


def test_a_tampered_suspension_snapshot_is_skipped(ledger_factory, ledger_location):
    ledger = ledger_factory(snapshot_interval=4)
    s = established(ledger)
    suspend(ledger, s)
    at = s.version
    assert at % 4 and snapshot_versions(ledger, s.id)[-1] == at
    db = open_raw(ledger_location)
    db.execute("UPDATE ledger_snapshots SET state = ? WHERE version = ?", (b"\x00" * 64, at))
    db.commit()
    restored, after, read = replay_reading(ledger, s.id)
    assert ledger.snapshots.recorder.rejected == 1
    assert after == at - at % 4 and read == at % 4  # from the interval snapshot before it
    assert vars(restored) == vars(s)


def test_the_default_predicate_is_the_resumable_states_entry():
    assert {"suspended", "failed"} == RESUMABLE_STATES
    s = Session.open("did:key:z6MkPeer", "initiator", SessionConfig(), T0)
    s.initiate_handshake(T0)
    s.handshake_timed_out(due(s, Timer.HANDSHAKE_TIMEOUT), None)
    s.submit_message(s.at_us + 1, b"queued while failed")
    chosen = [snapshot_on_entering_resumable_state(e) for e in s.pending_events]
    assert chosen == [False, False, True, False]
    assert not snapshot_on_entering_resumable_state(Conversation(peer="p").pending_events[0])


def test_replay_events_equals_project_aggregate_for_a_session_history(ledger_factory):
    ledger = ledger_factory(snapshot_interval=None)
    s = established(ledger)
    suspend(ledger, s)
    s.initiate_resumption(s.at_us + 1, "prekeys-1")
    ledger.save(s)
    for version in range(1, s.version + 1):
        fast = ledger.repository.get(s.id, version=version)
        slow = ledger.repository.get(s.id, version=version, projector_func=project_aggregate)
        assert vars(fast) == vars(slow)
    assert vars(ledger.repository.get(s.id)) == vars(s)


def test_replay_events_names_an_event_that_cannot_mutate():
    class NotAnEvent:
        pass

    with pytest.raises(ProgrammingError, match="NotAnEvent"):
        replay_events(None, [NotAnEvent()])
