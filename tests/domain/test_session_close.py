"""Decision 17: a session can be closed from any state; the close is recorded with a reason and
the messages it leaves unacknowledged, the peer is told and its side ends too ("closed by
peer"), and a lost close is resent, or answered again, while the closed session lingers.
Two managers over a MockTransport and a manual clock, on real signed SQLite ledgers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from l2_session.domain.session import timers
from l2_session.domain.session.commands import Close, CloseAck, HandshakeRequest, Send
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import InvalidState, SessionClosed
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import FINAL, TRANSITIONS, State, Trigger
from l2_session.transports.mock import Simulation
from session_helpers import (
    ALICE,
    BOB,
    PEER,
    SECOND,
    T0,
    degraded,
    established,
    failed_by_timeout,
    suspended,
)
from test_manager import connect, payloads
from test_restart import _handshake_initiated, _handshake_received, _rotating, event_names, settle

Sim = Callable[..., Simulation]


def closed_events(manager: Any, session_id: Any) -> list[Any]:
    return [e for e in manager.ledger.events.get(session_id) if type(e).__name__ == "Closed"]


def sent(outputs: list[Any], kind: type) -> list[Any]:
    return [o.frame for o in outputs if isinstance(o, Send) and isinstance(o.frame, kind)]


def connected(make_sim: Sim) -> tuple[Simulation, Any, Any, Any, Session]:
    """Alice and Bob with an established session: (sim, its id, alice, bob, Bob's session)."""
    sim = make_sim()
    sid = connect(sim)
    theirs = sim.nodes[BOB].session_for(sid)
    assert theirs is not None
    return sim, sid, sim.nodes[ALICE], sim.nodes[BOB], theirs


class Watch:
    """Every frame the simulation carries, by sender: the frames a test lost included."""

    def __init__(self, sim: Simulation) -> None:
        self.frames: list[tuple[str, Any]] = []
        original = sim.transport.send

        def send(src: str, dst: str, frame: Any, transport: str = "quic") -> None:
            self.frames.append((src, frame))
            original(src, dst, frame, transport)

        sim.transport.send = send  # type: ignore[method-assign]

    def count(self, src: str, kind: type) -> int:
        return sum(1 for s, f in self.frames if s == src and isinstance(f, kind))


# ---------------------------------------------------------------------- the table
@pytest.mark.parametrize(
    "build",
    [
        lambda: Session.open(PEER, "initiator", SessionConfig(), T0),
        _handshake_initiated,
        _handshake_received,
        established,
        lambda: degraded(established()),
        _rotating,
        lambda: suspended(established()),
        lambda: failed_by_timeout(retry_at_us=T0 + 9 * SECOND),
    ],
)
def test_close_ends_a_session_from_any_state(build: Any) -> None:
    s = build()
    s.submit_message(s.at_us, b"left behind")
    seq = s.next_seq - 1
    s.close(s.at_us + SECOND)
    closed = s.pending_events[-1]
    assert type(closed).__name__ == "Closed" and closed.trigger == "close()"
    assert closed.state == FINAL.value and s.closed
    assert closed.reason == "closed" and seq in closed.dropped_messages
    with pytest.raises(SessionClosed):
        s.close(s.at_us + 2 * SECOND)


def test_the_peers_close_is_taken_in_every_state_but_idle() -> None:
    for state, row in TRANSITIONS.items():
        assert row.get(Trigger.CLOSE) == FINAL, state
        assert (row.get(Trigger.RECEIVE_CLOSE) == FINAL) == (state != State.IDLE), state
    with pytest.raises(InvalidState):
        Session.open(PEER, "initiator", SessionConfig(), T0).receive_close(T0)


def test_a_closed_session_reserves_the_counters_of_its_close_frames() -> None:
    s = established()
    s.reserve_counters(s.at_us, 1024)
    s.close(s.at_us + SECOND)
    # Its close frames are sealed from 1024 on; nothing below is used again (decision 17).
    assert s.close_counters_from == 1024 and s.counters_reserved() == 1024 + 64
    keyless = Session.open(PEER, "initiator", SessionConfig(), T0)
    keyless.close(T0)
    assert keyless.pending_events[-1].counters_until == 0  # nothing to seal a close under


# ---------------------------------------------------------------------- both ends
def test_a_close_ends_both_ends_and_each_ledger_says_why(make_sim: Sim) -> None:
    sim, sid, alice, bob, theirs = connected(make_sim)
    outputs = alice.close(sid, sim.clock.wall_us())
    assert sent(outputs, Close) == [Close(sid)]
    assert alice.awaiting_close_acks() == 1
    sim.perform(ALICE, outputs)
    settle(sim, lambda: alice.awaiting_close_acks() == 0, 1)
    assert theirs.closed and closed_events(bob, theirs.id)[0].reason == "closed by peer"
    assert closed_events(alice, sid)[0].reason == "closed"
    assert event_names(alice, sid)[-1] == event_names(bob, theirs.id)[-1] == "Closed"
    sim.run_for(timers.close_linger(SessionConfig()) / SECOND)
    assert len(alice) == 0 and len(bob) == 0  # both left memory; the ledgers keep them
    assert alice.session(sid).closed and bob.session(theirs.id).closed
    sim.run_for(120)  # nothing more happens: no heartbeat, no retry
    assert event_names(alice, sid)[-1] == "Closed"


def test_messages_still_queued_at_close_are_recorded_not_sent(make_sim: Sim) -> None:
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    sim.transport.partition(ALICE, BOB)
    for payload in (b"one", b"two"):
        sim.perform(ALICE, alice.submit(sid, payload, sim.clock.wall_us()))
    sim.perform(ALICE, alice.close(sid, sim.clock.wall_us()))
    assert closed_events(alice, sid)[0].dropped_messages == [1, 2]
    sim.transport.heal(ALICE, BOB)
    sim.run_for(60)
    assert payloads(sim, BOB) == []


def test_a_close_in_a_handshake_before_there_are_keys_tells_the_peer_nothing(
    make_sim: Sim,
) -> None:
    sim = make_sim()
    sim.transport.isolate(BOB)
    alice = sim.nodes[ALICE]
    sid, outputs = alice.establish(BOB, sim.clock.wall_us())
    sim.perform(ALICE, outputs)
    outputs = alice.close(sid, sim.clock.wall_us())
    assert outputs == [] and len(alice) == 0  # nothing to seal a close under; no linger
    assert closed_events(alice, sid)[0].reason == "closed"


def test_close_all_closes_every_session_in_one_save(make_sim: Sim) -> None:
    sim = make_sim()
    first, second = connect(sim), connect(sim)
    alice = sim.nodes[ALICE]
    saves: list[Any] = []
    original = alice.ledger.save
    alice.ledger.save = lambda *objs, **kw: saves.append(objs) or original(*objs, **kw)  # type: ignore[method-assign]
    outputs = alice.close_all(sim.clock.wall_us())
    assert len(saves) == 1 and {o.id for o in saves[0]} == {first, second}
    assert {f.conversation for f in sent(outputs, Close)} == {first, second}
    sim.perform(ALICE, outputs)
    settle(sim, lambda: alice.awaiting_close_acks() == 0, 1)
    assert all(s.closed for s in sim.nodes[BOB]._sessions.values())


def test_both_ends_closing_at_once_end_with_one_close_each(make_sim: Sim) -> None:
    sim, sid, alice, bob, theirs = connected(make_sim)
    now = sim.clock.wall_us()
    sim.perform(ALICE, alice.close(sid, now))
    sim.perform(BOB, bob.close(theirs.id, now))
    settle(sim, lambda: alice.awaiting_close_acks() == bob.awaiting_close_acks() == 0, 1)
    assert [e.reason for e in closed_events(alice, sid)] == ["closed"]
    assert [e.reason for e in closed_events(bob, theirs.id)] == ["closed"]


# ---------------------------------------------------------------------- lost frames
def test_a_lost_close_is_resent_until_acknowledged(make_sim: Sim) -> None:
    sim, sid, alice, bob, theirs = connected(make_sim)
    watch = Watch(sim)
    sim.transport.partition(ALICE, BOB)
    sim.perform(ALICE, alice.close(sid, sim.clock.wall_us()))
    sim.run_for(1)
    sim.transport.heal(ALICE, BOB)
    assert theirs is not None and not theirs.closed  # the first close was lost
    settle(sim, lambda: theirs.closed and alice.awaiting_close_acks() == 0, 3)
    assert watch.count(ALICE, Close) == 2 and watch.count(BOB, CloseAck) == 1
    assert closed_events(bob, theirs.id)[0].reason == "closed by peer"


def test_a_lost_close_ack_is_answered_again_from_the_peers_linger(make_sim: Sim) -> None:
    sim, sid, alice, bob, theirs = connected(make_sim)
    watch = Watch(sim)
    sim.perform(ALICE, alice.close(sid, sim.clock.wall_us()))
    settle(sim, lambda: theirs.closed, 1)  # Bob has it; his ack is on its way ...
    sim.transport.partition(ALICE, BOB)  # ... and is lost
    sim.run_for(1)
    sim.transport.heal(ALICE, BOB)
    assert alice.awaiting_close_acks() == 1
    settle(sim, lambda: alice.awaiting_close_acks() == 0, 3)  # the resend is answered again
    assert watch.count(BOB, CloseAck) == 2
    assert len(closed_events(bob, theirs.id)) == 1  # recorded once


def test_when_every_close_is_lost_the_peers_next_heartbeat_is_answered_with_it(
    make_sim: Sim,
) -> None:
    sim, sid, alice, bob, theirs = connected(make_sim)
    sim.transport.partition(ALICE, BOB)
    sim.perform(ALICE, alice.close(sid, sim.clock.wall_us()))
    sim.run_for(15)  # the close and its resends at 2, 6 and 14 s are all lost
    sim.transport.heal(ALICE, BOB)
    assert not theirs.closed and alice.awaiting_close_acks() == 1
    # Bob's heartbeat (due 30 s after the last activity) comes within Alice's linger (32 s).
    settle(sim, lambda: theirs.closed, timers.close_linger(SessionConfig()) / SECOND)
    assert closed_events(bob, theirs.id)[0].reason == "closed by peer"


def test_a_handshake_retry_for_a_conversation_closed_here_is_answered_with_the_close(
    make_sim: Sim,
) -> None:
    sim, sid, alice, bob, theirs = connected(make_sim)
    # Bob closes; Alice, who missed it, asks to resume (after a restart, say): the request
    # is answered with the close, not with a new session.
    sim.transport.partition(ALICE, BOB)
    sim.perform(BOB, bob.close(theirs.id, sim.clock.wall_us()))
    sim.run_for(1)
    sim.transport.heal(ALICE, BOB)
    mine = alice.session(sid)
    assert mine.state == "established"
    request = HandshakeRequest(sid, b"x" * 32, resuming=True)
    outputs = bob.receive(ALICE, request, sim.clock.wall_us())
    assert sent(outputs, Close) == [Close(sid)] and bob.session_for(sid) is theirs
    # Anyone can send a handshake frame: each costs one of the close's reserved counters, so
    # they are answered once per resend interval (2 s), not once each.
    assert bob.receive(ALICE, request, sim.clock.wall_us()) == []
    later = sim.clock.wall_us() + timers.close_resend_after(SessionConfig(), 0)
    assert sent(bob.receive(ALICE, request, later), Close) == [Close(sid)]
    sim.perform(BOB, outputs)
    settle(sim, lambda: mine.closed, 1)
    assert closed_events(alice, sid)[0].reason == "closed by peer"


def test_after_its_linger_a_closed_session_leaves_memory_and_its_peer_learns_nothing_more(
    make_sim: Sim,
) -> None:
    sim, sid, alice, _, theirs = connected(make_sim)
    sim.transport.isolate(BOB)
    sim.perform(ALICE, alice.close(sid, sim.clock.wall_us()))
    sim.run_for(timers.close_linger(SessionConfig()) / SECOND)
    assert len(alice) == 0 and alice.next_wakeup_us() is None
    assert alice.awaiting_close_acks() == 0
    sim.transport.rejoin(BOB)
    assert not theirs.closed  # it ends by its own timers (decision 17)


def _alice_in(state: str, sim: Simulation) -> Any:
    """Alice's session with Bob, driven through the manager into ``state``; the link healed."""
    alice, now = sim.nodes[ALICE], sim.clock.wall_us
    if state == "handshake_initiated":
        sim.transport.isolate(BOB)
        sid, outputs = alice.establish(BOB, now())
        sim.perform(ALICE, outputs)
        return sid
    sid = connect(sim)
    session = alice.session(sid)
    if state in ("degraded", "suspended"):
        sim.transport.partition(ALICE, BOB)
        settle(sim, lambda: session.state == state, 300)
        sim.transport.heal(ALICE, BOB)
    elif state in ("rotating", "failed"):
        settle(sim, lambda: session.state == "rotating", 90)
        if state == "failed":  # the rotation's messages are lost: it fails, keys kept
            sim.transport.partition(ALICE, BOB)
            settle(sim, lambda: session.state == "failed", 10)
            sim.transport.heal(ALICE, BOB)
    assert session.state == state
    return sid


@pytest.mark.parametrize(
    "state",
    ["handshake_initiated", "established", "degraded", "rotating", "suspended", "failed"],
)
def test_close_through_the_manager_in_each_state_tells_the_peer_when_there_are_keys(
    make_sim: Sim, state: str
) -> None:
    rotates_soon = SessionConfig(ttl=120.0, rotation_window=60.0)
    sim = make_sim(config=rotates_soon if state in ("rotating", "failed") else None)
    sid = _alice_in(state, sim)
    alice, bob = sim.nodes[ALICE], sim.nodes[BOB]
    theirs = bob.session_for(sid)  # none: Bob never heard of a first handshake's session
    keys = alice.session(sid).key_id is not None
    outputs = alice.close(sid, sim.clock.wall_us())
    assert closed_events(alice, sid)[0].state == FINAL.value
    assert (sent(outputs, Close) == [Close(sid)]) == keys
    sim.transport.rejoin(BOB)
    sim.perform(ALICE, outputs)
    sim.run_for(timers.close_linger(SessionConfig()) / SECOND + 1)
    assert len(alice) == 0  # gone from memory after its linger (at once without keys)
    assert (theirs is not None) == keys
    if theirs is not None:
        assert theirs.closed and closed_events(bob, theirs.id)[0].reason == "closed by peer"
        assert len(bob) == 0
