"""The sans-I/O manager: timers from recorded events, restart, exactly-once delivery."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session import timers
from l2_session.domain.session.commands import Send
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import MessageTooLarge, UnknownSession, WindowFull
from l2_session.transports.mock import LinkProfile, Simulation
from session_helpers import ALICE, BOB, PREKEYS, SECOND, unconfirmed_summaries


def connect(sim: Simulation) -> Any:
    alice = sim.nodes[ALICE]
    sid, outputs = alice.establish(BOB, sim.clock.wall_us())
    sim.perform(ALICE, outputs)
    sim.run_for(1)
    assert alice.session(sid).state == "established"
    return sid


def payloads(sim: Simulation, node: str) -> list[bytes]:
    return [d.payload for d in sim.delivered[node]]


def test_messages_arrive_once_in_order_over_a_lossy_duplicating_reordering_link(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim(LinkProfile(loss=0.2, duplication=0.3, reordering=0.5), seed=11)
    sid = None
    while sid is None:  # the handshake itself may be lost; retries with backoff
        alice = sim.nodes[ALICE]
        s_id, outputs = alice.establish(BOB, sim.clock.wall_us())
        sim.perform(ALICE, outputs)
        sim.run_for(60)
        if alice.session(s_id).state == "established":
            sid = s_id
    sent = [f"m{i}".encode() for i in range(40)]
    for payload in sent:
        sim.perform(ALICE, sim.nodes[ALICE].submit(sid, payload, sim.clock.wall_us()))
        sim.run_for(0.3)
    sim.run_for(600)  # retransmission rides on heartbeats
    assert payloads(sim, BOB) == sent
    assert sim.nodes[ALICE].session(sid).unacknowledged() == []
    assert sim.transport.stats.lost > 0 and sim.transport.stats.duplicated > 0


def test_messages_submitted_while_partitioned_are_held_and_flushed_after_recovery(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    sim.transport.partition(ALICE, BOB)
    sim.run_for(100)
    assert alice.session(sid).state == "degraded"
    sim.perform(ALICE, alice.submit(sid, b"held", sim.clock.wall_us()))
    sim.transport.heal(ALICE, BOB)
    sim.perform(ALICE, alice.link_event(sid, "connectivity_restored", sim.clock.wall_us()))
    sim.run_for(1)
    assert alice.session(sid).state == "established"
    assert payloads(sim, BOB) == [b"held"]


def test_restart_rederives_deadlines_from_the_ledger(
    make_sim: Callable[..., Simulation], session_ledger_factory: Callable[..., Any]
) -> None:
    sim = make_sim()
    sid = connect(sim)
    sim.transport.partition(ALICE, BOB)
    before = sim.nodes[ALICE].session(sid)
    sim.perform(ALICE, sim.nodes[ALICE].submit(sid, b"queued", sim.clock.wall_us()))
    sim.run_for(40)  # one heartbeat out, unanswered
    expected = timers.deadlines(before)
    assert expected

    restarted = SessionManager(
        ALICE, session_ledger_factory("alice"), prekeys_of=PREKEYS.__getitem__, key_exchange="mock"
    )
    after = restarted.restore(sid)
    assert after == before  # replay rebuilds the identical session
    assert timers.deadlines(after) == expected
    assert after.unacknowledged() == [(1, b"queued")]
    # What was in flight is memory only: the message held unacknowledged goes out again at
    # the next tick, before any of the session's own deadlines.
    assert restarted.next_wakeup_us() == after.at_us < min(expected.values())


def test_tick_fires_only_due_sessions(
    make_sim: Callable[..., Simulation], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim()
    alice = sim.nodes[ALICE]
    now = sim.clock.wall_us()
    for n in range(200):
        alice.establish(f"did:key:z6MkPeer{n}", now)
    fired: list[Any] = []
    original = alice._fire_due
    monkeypatch.setattr(
        alice, "_fire_due", lambda s, *rest: fired.append(s.id) or original(s, *rest)
    )
    assert alice.tick(now + 4 * SECOND) == [] and fired == []  # nothing due: nothing touched
    outputs = alice.tick(now + 5 * SECOND)  # every handshake times out at 5 s
    assert len(fired) == 200 and outputs == []
    assert all(alice.session(sid).state == "failed" for sid in fired)


def test_bad_commands_raise_the_specific_error_and_record_nothing(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    with pytest.raises(UnknownSession, match="no session with id"):
        alice.submit(uuid4(), b"x", sim.clock.wall_us())
    version = alice.session(sid).version
    with pytest.raises(MessageTooLarge):
        alice.submit(sid, b"x" * (64 * 1024 + 1), sim.clock.wall_us())
    assert alice.session(sid).version == version


def test_frames_that_do_not_fit_are_dropped_and_counted(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    from l2_session.domain.session.commands import HeartbeatAck

    version = alice.session(sid).version
    conversation = alice.session(sid).conversation
    assert alice.receive(BOB, HeartbeatAck(conversation, 99), sim.clock.wall_us()) == []
    assert alice.receive("did:key:z6MkMallory", HeartbeatAck(conversation, 0), 0) == []
    assert alice.dropped_frames == 2 and alice.session(sid).version == version


def test_transport_fallback_is_transparent(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    sim.transport.fail_transport(ALICE, "quic")
    now = sim.clock.wall_us()
    sim.perform(ALICE, alice.link_event(sid, "transport_failed", now))
    sim.perform(ALICE, alice.submit(sid, b"over utcp", now))
    outputs = alice.link_event(sid, "transport_switched", now)
    assert {o.transport for o in outputs if isinstance(o, Send)} == {"utcp"}
    sim.perform(ALICE, outputs)
    sim.run_for(1)
    assert alice.session(sid).state == "established"
    assert payloads(sim, BOB) == [b"over utcp"]


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    duplication=st.sampled_from([0.0, 0.2, 0.5]),
    reordering=st.sampled_from([0.0, 0.3, 0.8]),
)
def test_any_faulty_link_delivers_every_message_exactly_once_in_order(
    make_sim: Callable[..., Simulation],
    seed: int,
    loss: float,
    duplication: float,
    reordering: float,
) -> None:
    sim = make_sim(LinkProfile(loss=loss, duplication=duplication, reordering=reordering), seed)
    alice = sim.nodes[ALICE]
    sid, outputs = alice.establish(BOB, sim.clock.wall_us())
    sim.perform(ALICE, outputs)
    sent = [b"msg %d" % n for n in range(15)]
    for payload in sent:  # queued from the start: held until established, then flushed
        sim.perform(ALICE, alice.submit(sid, payload, sim.clock.wall_us()))
        sim.run_for(0.2)
    for _ in range(40):
        if alice.session(sid).state == "established" and not alice.session(sid).outbox:
            break
        sim.run_for(60)
    assert alice.session(sid).unacknowledged() == []
    delivered = [d.payload for d in sim.delivered[BOB]]
    assert delivered == sent


def _lost_confirmation(sim: Simulation, *, responder_queues: bytes | None = None) -> Any:
    """Alice establishes and queues m1; Bob answers (and, if asked, queues a message of his
    own); Alice's key confirmation and m1 are lost. Returns (Alice's session id, the
    conversation, Bob's responder session)."""
    alice, bob = sim.nodes[ALICE], sim.nodes[BOB]
    now = sim.clock.wall_us()
    sid, (request,) = alice.establish(BOB, now)
    alice.submit(sid, b"m1", now)
    (response,) = bob.receive(ALICE, request.frame, now)  # type: ignore[union-attr]
    conversation = alice.session(sid).conversation
    responder = bob.session_for(conversation)
    assert responder is not None
    if responder_queues is not None:
        bob.submit(responder.id, responder_queues, now)
    lost = alice.receive(BOB, response.frame, now)  # type: ignore[union-attr]
    assert {type(o.frame).__name__ for o in lost} == {"HandshakeAck", "Data"}  # type: ignore[union-attr]
    return sid, conversation, responder


def test_retry_after_a_lost_confirmation_is_answered_by_a_new_session(
    make_sim: Callable[..., Simulation],
) -> None:
    """Decisions 15 and 18: the key confirmation (and the data behind it, and the data's
    retransmissions for 6 s) is lost; the responder's session, which never had keys nor a
    message, fails, leaves memory, and is never written — only counted in the next summary of
    unconfirmed handshakes. The initiator is established until its heartbeats fail, then
    retries; a new responder session answers (under the same derived id: nothing was stored
    under it), and the message arrives once."""
    sim = make_sim()
    alice, bob = sim.nodes[ALICE], sim.nodes[BOB]
    sid, conversation, first = _lost_confirmation(sim)
    sim.transport.partition(ALICE, BOB)
    sim.run_for(6)
    sim.transport.heal(ALICE, BOB)
    assert alice.session(sid).state == "established"
    assert bob.session_for(conversation) is None
    with pytest.raises(UnknownSession):
        bob.session(first.id)
    assert list(bob.ledger.events.get(first.id)) == []

    sim.run_for(400)
    assert alice.session(sid).state == "established"
    second = bob.session_for(conversation)
    assert second is not None and second is not first and second.state == "established"
    names = [type(e).__name__ for e in bob.ledger.events.get(second.id)]
    assert names[:3] == ["Opened", "HandshakeReceived", "Established"]
    assert [d.payload for d in sim.delivered[BOB]] == [b"m1"]
    assert unconfirmed_summaries(bob.ledger) == [{"timeout": 1}]


def test_retry_after_a_lost_confirmation_continues_a_responder_session_holding_a_message(
    make_sim: Callable[..., Simulation],
) -> None:
    """Decision 10: a responder's session that holds something — here a message its node
    queued while the handshake ran — keeps its lease when it fails; the initiator's retry
    takes the same session, and both messages arrive exactly once."""
    sim = make_sim()
    alice, bob = sim.nodes[ALICE], sim.nodes[BOB]
    sid, conversation, responder = _lost_confirmation(sim, responder_queues=b"r1")
    sim.transport.partition(ALICE, BOB)  # m1's retransmissions are lost too, for 6 s
    sim.run_for(6)
    sim.transport.heal(ALICE, BOB)
    assert responder.state == "failed" and alice.session(sid).state == "established"
    assert bob.session_for(conversation) is responder

    sim.run_for(400)
    assert alice.session(sid).state == "established"
    assert bob.session_for(conversation) is responder and responder.state == "established"
    states = [e.state for e in bob.ledger.events.get(responder.id) if hasattr(e, "state")]
    moves = [state for state, _ in itertools.groupby(states)]  # MessageQueued stays put
    assert moves[:3] == ["handshake_received", "failed", "handshake_received"]
    assert [d.payload for d in sim.delivered[BOB]] == [b"m1"]
    assert [d.payload for d in sim.delivered[ALICE]] == [b"r1"]


def test_resumption_for_an_unknown_conversation_is_dropped_not_quarantined(
    make_sim: Callable[..., Simulation],
) -> None:
    from l2_session.domain.session.commands import HandshakeRequest

    sim = make_sim()
    bob = sim.nodes[BOB]
    now = sim.clock.wall_us()
    assert bob.receive(ALICE, HandshakeRequest(uuid4(), b"", resuming=True), now) == []
    assert bob.dropped_frames == 1 and not bob.peer(ALICE).is_quarantined(now)


def test_a_full_send_window_refuses_the_next_message_and_records_nothing(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim(config=SessionConfig(send_window=3))
    sid = connect(sim)
    sim.transport.partition(ALICE, BOB)  # nothing is acknowledged
    alice = sim.nodes[ALICE]
    for i in range(3):
        assert alice.send_room(sid) == 3 - i
        sim.perform(ALICE, alice.submit(sid, b"m%d" % i, sim.clock.wall_us()))
    assert alice.send_room(sid) == 0
    version = alice.session(sid).version
    with pytest.raises(WindowFull, match="3 messages are not yet acknowledged"):
        alice.submit(sid, b"m3", sim.clock.wall_us())
    assert alice.session(sid).version == version
    assert alice.ledger.repository.get(sid).version == version


def test_submit_many_saves_once_and_reports_each_refusal_in_its_place(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim(config=SessionConfig(send_window=2))
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    saves: list[int] = []
    save = alice.ledger.save
    alice.ledger.save = lambda *objs, **kw: saves.append(len(objs)) or save(*objs, **kw)  # type: ignore[method-assign]
    results = alice.submit_many(
        [(sid, b"a"), (uuid4(), b"x"), (sid, b"b"), (sid, b"c")], sim.clock.wall_us()
    )
    assert saves == [1]
    assert isinstance(results[1], UnknownSession) and isinstance(results[3], WindowFull)
    sent = [
        o.frame.payload
        for r in results
        if isinstance(r, list)
        for o in r
        if hasattr(o.frame, "payload")
    ]
    assert b"a" in sent and b"b" in sent and b"c" not in sent
    for r in results:
        if isinstance(r, list):
            sim.perform(ALICE, r)
    sim.run_for(2)
    assert payloads(sim, BOB) == [b"a", b"b"]
