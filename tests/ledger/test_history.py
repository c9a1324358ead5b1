"""Time travel (projections/history.py): a session replayed to any position is the session the
node had in memory just after that position was appended; a time finds the last position
appended by then; the timeline lists every event once, in ledger order, as transitions."""

from __future__ import annotations

import copy
import itertools
import random
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import SessionError
from l2_session.domain.session.session import Session
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.projections.history import HistoryError, LedgerHistory, iso, parse_time

SECOND = 1_000_000
COMMANDS = [
    "initiate_handshake", "heartbeat_due", "heartbeat_timed_out", "connectivity_lost",
    "partition_detected", "connectivity_restored", "degraded_timed_out", "retry",
    "time_to_rotate", "transport_failed", "transport_switched", "cleanup",
    "receive_invalid_signature", "handshake_timed_out", "respond", "message",
]  # fmt: skip


def drive(session: Session, command: str, now: int, rng: random.Random) -> None:
    """One command, refused or not (a refused one records nothing)."""
    try:
        if command == "respond":
            session.receive_valid_response(now, key_material=rng.randbytes(32), prekeys="p1")
        elif command == "message":
            session.submit_message(now, rng.randbytes(8))
        elif command in ("receive_invalid_signature", "handshake_timed_out"):
            getattr(session, command)(now, rng.choice([None, now + 5 * SECOND]))
        else:
            getattr(session, command)(now)
    except SessionError:
        pass


def live_state(session: Session) -> dict[str, Any]:
    return copy.deepcopy(session.__dict__ | {"_pending_events": []})


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    saves=st.integers(1, 12),
    snapshot_interval=st.sampled_from([None, 3]),
)
def test_a_session_replayed_to_any_position_is_the_live_one_then(
    new_ledger_location, identity, storage_key, clock, seed, saves, snapshot_interval
):
    rng = random.Random(seed)
    ledger = SessionLedger(
        new_ledger_location(), identity=identity, storage_key=storage_key, clock=clock,
        snapshot_interval=snapshot_interval,
    )  # fmt: skip
    try:
        now = clock.wall_us()
        sessions = [Session.open(f"did:key:z6MkPeer{i}", "initiator", SessionConfig(), now)
                    for i in range(3)]  # fmt: skip
        seen: list[tuple[int, dict[Any, dict[str, Any]]]] = []
        for _ in range(saves):
            for _ in range(rng.randint(1, 6)):
                now += rng.choice([0, 1_000, 2 * SECOND, 31 * SECOND])
                drive(rng.choice(sessions), rng.choice(COMMANDS), now, rng)
            clock.set_wall_us(max(clock.wall_us(), now))
            ledger.save(*sessions)
            head = ledger.ledger_recorder.head()[0]
            seen.append((head, {s.id: live_state(s) for s in sessions}))
        history = LedgerHistory(ledger)
        for head, states in seen:
            replayed = {r.aggregate_id: r for r in history.states_at(head)}
            assert set(replayed) == set(states)
            for sid, state in states.items():
                one = history.state_at(sid, head)
                assert one.aggregate.__dict__ == state
                assert replayed[sid].aggregate.__dict__ == state
                assert one.version == state["_version"]
    finally:
        ledger.close()


def test_a_time_finds_the_last_position_appended_by_then(ledger_factory, clock):
    ledger = ledger_factory()
    now = clock.wall_us()
    stamps = []
    for i in range(40):
        if i % 3:  # some saves share a timestamp
            clock.advance(0.25)
        session = Session.open(f"did:key:z6MkPeer{i}", "initiator", SessionConfig(), now)
        ledger.save(session)
        stamps.append(clock.wall_us())
    history = LedgerHistory(ledger)
    for probe in [*stamps, *(t + 1 for t in stamps), stamps[-1] + 10**9]:
        expected = max(p for p, t in enumerate(stamps, start=1) if t <= probe)
        assert history.position_at(probe) == expected
    with pytest.raises(HistoryError, match="before the ledger"):
        history.position_at(stamps[0] - 1)
    assert parse_time(iso(stamps[7])) == stamps[7]


def test_the_timeline_lists_every_event_once_as_transitions(ledger_factory, clock):
    ledger = ledger_factory()
    rng = random.Random(3)
    now = clock.wall_us()
    sessions = [Session.open(f"did:key:z6MkPeer{i}", "initiator", SessionConfig(), now)
                for i in range(4)]  # fmt: skip
    for _ in range(10):
        for s in sessions:
            now += 2 * SECOND
            drive(s, rng.choice(COMMANDS), now, rng)
        clock.set_wall_us(now)
        ledger.save(*sessions)
    history = LedgerHistory(ledger)
    steps = list(history.timeline())
    assert [s.position for s in steps] == list(range(1, history.head() + 1))
    for s in sessions:
        own = list(history.timeline(s.id))
        assert own == [t for t in steps if t.aggregate_id == s.id]
        assert [t.version for t in own] == list(range(1, s.version + 1))
        for before, after in itertools.pairwise(own):
            assert after.state_before == before.state  # each step starts where the last ended
        final = "closed" if s.closed else s.state.value
        assert own[-1].state == final
        assert own[0].event == "Opened" and own[0].state == "idle"


def test_what_the_ledger_does_not_hold_is_named(ledger_factory, clock):
    ledger = ledger_factory()
    session = Session.open("did:key:z6MkPeer", "initiator", SessionConfig(), clock.wall_us())
    ledger.save(session)
    history = LedgerHistory(ledger)
    with pytest.raises(HistoryError, match="holds no session"):
        history.state_at(uuid4())
    with pytest.raises(HistoryError, match=r"position 9 is not in the ledger \(positions 1..1\)"):
        history.state_at(session.id, 9)
    with pytest.raises(HistoryError, match="not a session id"):
        history.state_at("nonsense")
    with pytest.raises(HistoryError, match="holds no session"):
        list(history.timeline(uuid4()))
