"""Decision 16: a node that starts again over its ledger records the restart for every session
that was live, suspends the live ones and fails the handshakes in flight, and resumes them
with fresh keys when it reaches the peer — found in the ledger, not listed by the caller.
Two managers over a MockTransport and a manual clock, on real signed SQLite ledgers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.recovery import FINAL_TOPICS, OPENED_TOPIC, live_in_notifications
from l2_session.domain.session import timers
from l2_session.domain.session.commands import Data, HandshakeRequest, Send
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import State, Trigger
from l2_session.domain.session.timers import Timer
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.transports.mock import Simulation
from session_helpers import (
    ALICE,
    BOB,
    KEY,
    PEER,
    PREKEYS,
    SECOND,
    T0,
    degraded,
    due,
    established,
    failed_by_timeout,
    suspended,
)
from test_manager import connect, payloads

Sim = Callable[..., Simulation]


def restart(sim: Simulation, did: str, open_ledger: Callable[..., Any], **options: Any) -> Any:
    """``did``'s process dies and starts again: a new manager over the same ledger file."""
    name = did.rsplit("z6Mk", 1)[1].lower()
    manager = SessionManager(
        did, open_ledger(name), options.pop("config", None) or SessionConfig(), seed=99,
        prekeys_of=PREKEYS.__getitem__, own_prekeys=PREKEYS[did], **options, key_exchange="mock",
    )  # fmt: skip
    return sim.add(manager)


def event_names(manager: SessionManager, session_id: Any) -> list[str]:
    return [type(e).__name__ for e in manager.ledger.events.get(session_id)]  # type: ignore[attr-defined]


def settle(sim: Simulation, condition: Callable[[], bool], limit_s: float = 30) -> None:
    waited = 0.0
    while not condition():
        assert waited < limit_s, f"not reached within {limit_s} s of manual time"
        sim.run_for(0.01)
        waited += 0.01


# ---------------------------------------------------------------------- the table
def _rotating() -> Session:
    s = established()
    s.time_to_rotate(due(s, Timer.ROTATION))
    return s


def _handshake_received() -> Session:
    s = Session.open(PEER, "responder", SessionConfig(), T0)
    s.receive_handshake(T0)
    return s


def _handshake_initiated() -> Session:
    s = Session.open(PEER, "initiator", SessionConfig(), T0)
    s.initiate_handshake(T0)
    return s


@pytest.mark.parametrize(
    ("build", "after"),
    [
        (lambda: Session.open(PEER, "initiator", SessionConfig(), T0), "idle"),
        (_handshake_initiated, "failed"),
        (_handshake_received, "failed"),
        (established, "suspended"),
        (lambda: degraded(established()), "suspended"),
        (_rotating, "suspended"),
        (lambda: suspended(established()), "suspended"),
        (lambda: failed_by_timeout(retry_at_us=T0 + 9 * SECOND), "failed"),
    ],
)
def test_a_restart_takes_each_state_where_the_table_says(build: Any, after: str) -> None:
    s = build()
    before_state, before_reason = s.state, s.failure_reason
    at = s.at_us + 7 * SECOND
    s.node_restarted(at, retry_at_us=at + 3 * SECOND)
    restart_event = s.pending_events[-1]
    assert type(restart_event).__name__ == "NodeRestarted"
    assert restart_event.trigger == Trigger.NODE_RESTARTED and s.state == after
    if after == "failed" and before_state != "failed":
        # The handshake's in-memory half is gone: it fails, and retries when the peer's
        # backoff says (an initiator); the reason names the restart.
        assert s.failure_reason == "node_restarted" and s.retry_at_us == at + 3 * SECOND
    else:  # a failed session keeps its own reason and retry
        assert s.failure_reason == before_reason
    assert s.heartbeat_sent_us is None  # no heartbeat of the dead process is awaited


def test_a_live_session_restarted_keeps_its_keys_to_resume_from() -> None:
    s = established()
    s.node_restarted(s.at_us + SECOND)
    assert s.state == State.SUSPENDED and s.key_material == KEY
    assert timers.deadlines(s)  # its timers go on: a full retry after 60 s if nothing else


# ---------------------------------------------------------------------- finding them
def test_a_restarted_node_finds_the_sessions_that_were_live_without_being_told(
    make_sim: Sim, session_ledger_factory: Callable[..., Any]
) -> None:
    sim = make_sim()
    alice = sim.nodes[ALICE]
    live = connect(sim)
    sim.transport.isolate(BOB)
    ended, outputs = alice.establish(BOB, sim.clock.wall_us())
    sim.perform(ALICE, outputs)
    settle(sim, lambda: alice.session(ended).state == "failed", 6)
    alice.cleanup(ended, sim.clock.wall_us())  # a closed session is not live
    in_flight, outputs = alice.establish(BOB, sim.clock.wall_us())  # no answer comes
    sim.perform(ALICE, outputs)
    sim.perform(ALICE, alice.submit(live, b"queued before the crash", sim.clock.wall_us()))

    restarted = restart(sim, ALICE, session_ledger_factory)
    found = restarted.recover(sim.clock.wall_us())
    assert set(found) == {live, in_flight}
    assert restarted.session(live).state == "suspended"
    assert restarted.session(in_flight).state == "failed"
    assert restarted.session(in_flight).failure_reason == "node_restarted"
    assert event_names(restarted, live)[-1] == "NodeRestarted"
    assert event_names(restarted, ended)[-1] == "CleanedUp"  # left as it was
    assert restarted.recover(sim.clock.wall_us()) == []  # once per process
    # What was queued is still queued, to go out under the resumed keys.
    assert restarted.session(live).unacknowledged() == [(1, b"queued before the crash")]


def test_the_first_command_of_a_restarted_manager_records_the_restart_first(
    make_sim: Sim, session_ledger_factory: Callable[..., Any]
) -> None:
    """Without recovery, a restarted responder took data under the keys of before the crash
    and sent under them again, with nothing recorded."""
    sim = make_sim()
    sid = connect(sim)
    conversation = sim.nodes[ALICE].session(sid).conversation
    bob_before = sim.nodes[BOB].session_for(conversation)
    assert bob_before is not None
    restarted = restart(sim, BOB, session_ledger_factory)
    outputs = restarted.receive(ALICE, Data(conversation, 1, b"old keys"), sim.clock.wall_us())
    assert outputs == []  # not delivered, not acknowledged
    mine = restarted.session(bob_before.id)
    assert mine.state == "suspended" and event_names(restarted, mine.id)[-1] == "NodeRestarted"
    assert mine.next_expected_seq == 1


def test_the_documented_restore_then_resume_works_on_a_bare_manager(
    make_sim: Sim, session_ledger_factory: Callable[..., Any]
) -> None:
    """restart -> restore -> resume refused ``initiate_resumption()`` in ``established``."""
    sim = make_sim()
    sid = connect(sim)
    restarted = restart(sim, ALICE, session_ledger_factory)
    assert restarted.restore(sid).state == "established"  # as the ledger has it
    outputs = restarted.resume(sid, sim.clock.wall_us())
    request = [o.frame for o in outputs if isinstance(o, Send)]
    assert len(request) == 1 and isinstance(request[0], HandshakeRequest) and request[0].resuming
    assert event_names(restarted, sid)[-2:] == ["NodeRestarted", "HandshakeInitiated"]


# ---------------------------------------------------------------------- resuming
def test_a_restarted_responder_resumes_with_fresh_keys_and_loses_nothing(
    make_sim: Sim, session_ledger_factory: Callable[..., Any]
) -> None:
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    conversation = alice.session(sid).conversation
    keys_before = alice.session(sid).key_id
    restarted = restart(sim, BOB, session_ledger_factory)
    sim.perform(ALICE, alice.submit(sid, b"sent while bob was down", sim.clock.wall_us()))
    sim.run_for(0.05)  # it reaches the restarted node, which holds the session suspended
    assert payloads(sim, BOB) == []
    sim.perform(BOB, restarted.reconnected(ALICE, sim.clock.wall_us()))
    bob = restarted.session_for(conversation)
    settle(sim, lambda: bob.state == "established" and alice.session(sid).state == "established")
    assert bob.key_id == alice.session(sid).key_id != keys_before  # fresh keys, both ends
    settle(sim, lambda: payloads(sim, BOB) == [b"sent while bob was down"])
    sim.perform(BOB, restarted.submit(bob.id, b"and back", sim.clock.wall_us()))
    settle(sim, lambda: payloads(sim, ALICE) == [b"and back"])
    names = event_names(restarted, bob.id)
    at = names.index("NodeRestarted")
    assert names[at + 1 : at + 3] == ["HandshakeInitiated", "Established"]
    resumed = [e for e in restarted.ledger.events.get(bob.id) if type(e).__name__ == "Established"]
    assert resumed[-1].new_keys is False  # resumption: no KEM exchange (decision 4)
    sim.run_for(120)
    assert payloads(sim, BOB) == [b"sent while bob was down"]  # once


def test_a_restarted_initiator_resumes_while_its_peer_is_still_established(
    make_sim: Sim, session_ledger_factory: Callable[..., Any]
) -> None:
    sim = make_sim()
    sid = connect(sim)
    sim.transport.partition(ALICE, BOB)
    sim.perform(ALICE, sim.nodes[ALICE].submit(sid, b"never acknowledged", sim.clock.wall_us()))
    sim.transport.heal(ALICE, BOB)
    bob = sim.nodes[BOB].session_for(sid)
    assert bob is not None and bob.state == "established"
    restarted = restart(sim, ALICE, session_ledger_factory)
    sim.perform(ALICE, restarted.reconnected(BOB, sim.clock.wall_us()))
    mine = restarted.session(sid)
    settle(sim, lambda: mine.state == "established" and bob.state == "established")
    assert mine.key_id == bob.key_id
    # Bob took the RESUME as a rotation it was asked for (decision 4).
    assert "RotationStarted" in event_names(sim.nodes[BOB], bob.id)
    settle(sim, lambda: payloads(sim, BOB) == [b"never acknowledged"])
    settle(sim, lambda: mine.unacknowledged() == [])


def test_both_ends_restarted_converge_on_the_larger_dids_resumption(
    make_sim: Sim, session_ledger_factory: Callable[..., Any]
) -> None:
    sim = make_sim()
    sid = connect(sim)
    alice = restart(sim, ALICE, session_ledger_factory)
    bob = restart(sim, BOB, session_ledger_factory)
    now = sim.clock.wall_us()
    both = alice.reconnected(BOB, now) + bob.reconnected(ALICE, now)
    sim.perform(ALICE, [o for o in both if o.peer_did == BOB])
    sim.perform(BOB, [o for o in both if o.peer_did == ALICE])
    assert sum(isinstance(o.frame, HandshakeRequest) for o in both) == 2  # both resume
    mine, theirs = alice.session(sid), bob.session_for(sid)
    settle(sim, lambda: mine.state == "established" and theirs.state == "established", 1)
    assert mine.key_id == theirs.key_id
    # "did:key:z6MkBob" > "did:key:z6MkAlice": Alice answered Bob's resumption.
    answered = [e.trigger for e in alice.ledger.events.get(sid) if hasattr(e, "trigger")]
    assert answered[-3:] == ["receive_handshake()", "send_response + ack", "reserve_counters"]
    sim.perform(ALICE, alice.submit(sid, b"after both restarts", sim.clock.wall_us()))
    settle(sim, lambda: payloads(sim, BOB) == [b"after both restarts"])


def test_a_handshake_in_flight_at_the_crash_fails_and_its_retry_establishes(
    make_sim: Sim, session_ledger_factory: Callable[..., Any]
) -> None:
    sim = make_sim()
    sim.transport.isolate(BOB)
    sid, outputs = sim.nodes[ALICE].establish(BOB, sim.clock.wall_us())
    sim.perform(ALICE, outputs)
    restarted = restart(sim, ALICE, session_ledger_factory)
    sim.transport.rejoin(BOB)
    restarted.recover(sim.clock.wall_us())
    mine = restarted.session(sid)
    assert mine.state == "failed" and mine.retry_at_us is not None
    settle(sim, lambda: mine.state == "established", 10)
    assert event_names(restarted, sid).count("HandshakeInitiated") == 2


def test_a_restart_mid_rotation_resumes_from_the_keys_in_use(
    make_sim: Sim, session_ledger_factory: Callable[..., Any]
) -> None:
    config = SessionConfig(ttl=120.0, rotation_window=60.0)
    sim = make_sim(config=config)
    sid = connect(sim)
    mine = sim.nodes[ALICE].session(sid)
    bob = sim.nodes[BOB].session_for(sid)
    keys = mine.key_id
    settle(sim, lambda: bob.state == "rotating", 90)
    sim.transport.partition(ALICE, BOB)  # Alice dies before the rotation's reply comes
    assert mine.state == "rotating"
    restarted = restart(sim, ALICE, session_ledger_factory, config=config)
    restarted.recover(sim.clock.wall_us())
    assert restarted.session(sid).state == "suspended"
    assert restarted.session(sid).key_id == keys  # the keys in use before the rotation
    sim.transport.heal(ALICE, BOB)
    sim.perform(ALICE, restarted.reconnected(BOB, sim.clock.wall_us()))
    mine = restarted.session(sid)
    # The rotation's reply reaches the restarted Alice late, and is dropped; Bob is answering
    # a rotation that died with her, and answers her RESUME instead.
    settle(sim, lambda: mine.state == "established" and bob.state == "established", 1)
    assert mine.key_id == bob.key_id != keys


def test_a_peer_that_degraded_meanwhile_answers_the_resumption(
    make_sim: Sim, session_ledger_factory: Callable[..., Any]
) -> None:
    sim = make_sim()
    sid = connect(sim)
    sim.transport.isolate(BOB)  # Bob's process is down for a while
    bob = sim.nodes[BOB].session_for(sid)
    mine = sim.nodes[ALICE].session(sid)
    settle(sim, lambda: mine.state == "degraded", 200)
    sim.transport.rejoin(BOB)
    restarted = restart(sim, BOB, session_ledger_factory)
    sim.perform(BOB, restarted.reconnected(ALICE, sim.clock.wall_us()))
    bob = restarted.session_for(sid)
    settle(sim, lambda: mine.state == "established" and bob.state == "established", 1)
    assert mine.key_id == bob.key_id
    moves = [e.state for e in sim.nodes[ALICE].ledger.events.get(sid) if hasattr(e, "state")]
    assert moves[-3:] == ["handshake_received", "established", "established"]  # and reserved


# ---------------------------------------------------------------------- the ledger's answer
def test_the_ledger_names_the_live_sessions_without_replaying_and_the_log_scan_agrees(
    make_sim: Sim, tmp_path: Any
) -> None:
    sim = make_sim()
    alice = sim.nodes[ALICE]
    live, closed = connect(sim), connect(sim)
    sim.perform(ALICE, alice.close(closed, sim.clock.wall_us()))
    sim.transport.isolate(BOB)
    cleaned, outputs = alice.establish(BOB, sim.clock.wall_us())
    sim.perform(ALICE, outputs)
    settle(sim, lambda: alice.session(cleaned).state == "failed", 6)
    alice.cleanup(cleaned, sim.clock.wall_us())
    ledger = alice.ledger
    named = ledger.live_session_ids(OPENED_TOPIC, FINAL_TOPICS)  # type: ignore[attr-defined]
    assert named == [live]  # not the closed one, not the cleaned-up one, not Alice's Peer
    scanned = live_in_notifications(ledger.recorder, OPENED_TOPIC, FINAL_TOPICS)  # type: ignore[attr-defined]
    assert scanned == named


def test_the_ledger_names_only_the_sessions_its_own_node_opened(tmp_path: Any) -> None:
    """Nodes sharing a ledger (PostgreSQL) each recover their own sessions: by signer."""
    key = b"k" * 32
    mine, theirs = NodeIdentity.generate(), NodeIdentity.generate()
    path = tmp_path / "shared.sqlite3"
    for identity, peer in ((mine, PEER), (theirs, PEER + "2")):
        ledger = SessionLedger(path, identity=identity, storage_key=key)
        s = Session.open(peer, "initiator", SessionConfig(), T0)
        s.initiate_handshake(T0)
        ledger.save(s)
        ledger.close()
    for identity, peer in ((mine, PEER), (theirs, PEER + "2")):
        ledger = SessionLedger(path, identity=identity, storage_key=key)
        (found,) = ledger.live_session_ids(OPENED_TOPIC, FINAL_TOPICS)
        assert ledger.repository.get(found).peer_did == peer
        ledger.close()
