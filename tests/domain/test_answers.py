"""A delivery and its answer in one save (decision 23): ``receive_each(..., answer=fn)``
queues what ``fn`` returns for a message on the same session, in the save that records the
delivery. Two managers on signed SQLite ledgers, a MockTransport and a manual clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.domain.session.commands import Data, Deliver, Send
from l2_session.domain.session.config import SessionConfig
from l2_session.transports.mock import LinkProfile, Simulation
from session_helpers import ALICE, BOB
from test_manager import connect


def counting_saves(manager: Any) -> list[int]:
    """The number of events of each save ``manager``'s ledger makes from now on."""
    counts: list[int] = []
    ledger = manager.ledger
    save = ledger.save

    def saving(*objs: Any, **kwargs: Any) -> Any:
        counts.append(sum(len(o.pending_events) for o in objs))
        return save(*objs, **kwargs)

    ledger.save = saving
    return counts


def request(sim: Simulation, sid: UUID, payload: bytes) -> Data:
    """Alice queues ``payload``; the Data frame she sends (not carried)."""
    outputs = sim.nodes[ALICE].submit(sid, payload, sim.clock.wall_us())
    (data,) = [o.frame for o in outputs if isinstance(o, Send) and isinstance(o.frame, Data)]
    return data


def bob_session(sim: Simulation) -> UUID:
    """Bob's side of the one conversation Alice opened."""
    (alice_side,) = sim.nodes[ALICE]._sessions.values()
    s = sim.nodes[BOB].session_for(alice_side.conversation)
    assert s is not None
    return s.id


def test_the_delivery_and_its_answer_are_one_save(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim()
    sid = connect(sim)
    bob = sim.nodes[BOB]
    seen: list[tuple[UUID, bytes]] = []

    def answer(session_id: UUID, payload: bytes) -> bytes:
        seen.append((session_id, payload))
        return payload.upper()

    saves = counting_saves(bob)
    (outputs,) = bob.receive_each(
        [(ALICE, request(sim, sid, b"ping"))], sim.clock.wall_us(), answer=answer
    )
    assert seen == [(bob_session(sim), b"ping")]
    assert saves == [2]  # MessageDelivered and MessageQueued, together
    delivered = [o for o in outputs if isinstance(o, Deliver)]
    assert delivered == [Deliver(bob_session(sim), 1, b"ping", answered=True)]
    answers = [o.frame for o in outputs if isinstance(o, Send) and isinstance(o.frame, Data)]
    assert [a.payload for a in answers] == [b"PING"]
    s = bob.session(bob_session(sim))
    assert [payload for _, payload in s.unacknowledged()] == [b"PING"]
    # The answer reaches Alice as any message does.
    sim.perform(BOB, outputs)
    sim.run_for(1)
    assert [d.payload for d in sim.delivered[ALICE]] == [b"PING"]


def test_a_message_answered_none_is_the_applications(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim()
    sid = connect(sim)
    bob = sim.nodes[BOB]
    saves = counting_saves(bob)
    (outputs,) = bob.receive_each(
        [(ALICE, request(sim, sid, b"note"))], sim.clock.wall_us(), answer=lambda s, p: None
    )
    assert saves == [1]
    assert [o for o in outputs if isinstance(o, Deliver)] == [
        Deliver(bob_session(sim), 1, b"note", answered=False)
    ]
    assert not [o for o in outputs if isinstance(o, Send) and isinstance(o.frame, Data)]


@pytest.mark.parametrize("answer", ["raises", "too large", "not bytes"])
def test_an_answer_that_fails_leaves_the_message_delivered_unanswered(
    make_sim: Callable[..., Simulation], answer: str
) -> None:
    sim = make_sim()
    sid = connect(sim)
    bob = sim.nodes[BOB]
    too_large = b"x" * (SessionConfig().max_message_size + 1)

    def failing(session_id: UUID, payload: bytes) -> Any:
        if answer == "raises":
            raise RuntimeError("the application failed")
        return too_large if answer == "too large" else "a str, not bytes"

    (outputs,) = bob.receive_each(
        [(ALICE, request(sim, sid, b"ping"))], sim.clock.wall_us(), answer=failing
    )
    assert bob.failed_answers == 1
    assert [o for o in outputs if isinstance(o, Deliver)] == [
        Deliver(bob_session(sim), 1, b"ping", answered=False)
    ]
    assert not bob.session(bob_session(sim)).outbox
    assert bob.session(bob_session(sim)).next_expected_seq == 2  # delivered, once


def test_without_room_for_the_answer_the_frame_waits_for_the_peer_to_send_it_again(
    make_sim: Callable[..., Simulation],
) -> None:
    """Bob's window is full of unacknowledged messages: a request he could not answer is
    not decided (nothing recorded, no acknowledgement), and Alice's retransmission brings it
    again once Bob has room; it is then delivered and answered once."""
    sim = make_sim(config=SessionConfig(send_window=2))
    sid = connect(sim)
    bob = sim.nodes[BOB]
    bsid = bob_session(sim)
    for n in range(2):  # Bob's window: two messages Alice has not acknowledged
        bob.submit(bsid, b"b%d" % n, sim.clock.wall_us())  # outputs dropped: never arrive
    assert bob.send_room(bsid) == 0
    answered: list[bytes] = []

    def answer(session_id: UUID, payload: bytes) -> bytes:
        answered.append(payload)
        return b"re:" + payload

    sim.answers[BOB] = answer
    frame = request(sim, sid, b"q")
    (outputs,) = bob.receive_each([(ALICE, frame)], sim.clock.wall_us(), answer=answer)
    assert outputs == [] and answered == [] and bob.held_for_answers == 1
    assert bob.session(bsid).next_expected_seq == 1  # nothing recorded
    # Bob's own messages go again by their timer, Alice acknowledges them, and her
    # retransmission of the request finds room.
    sim.run_for(10)
    assert answered == [b"q"]
    assert [d.payload for d in sim.delivered[ALICE]] == [b"b0", b"b1", b"re:q"]


def test_a_failed_save_loses_the_delivery_and_the_answer_and_the_retry_answers_once(
    make_sim: Callable[..., Simulation],
) -> None:
    """The answer runs before the save: if the save fails, neither the delivery nor the
    answer happened; the peer's retransmission is answered again, and Alice gets one."""
    sim = make_sim()
    sid = connect(sim)
    bob = sim.nodes[BOB]
    calls: list[bytes] = []

    def answer(session_id: UUID, payload: bytes) -> bytes:
        calls.append(payload)
        return b"re:" + payload

    ledger = bob.ledger
    save = ledger.save
    failures = [1]

    def failing_once(*objs: Any, **kwargs: Any) -> Any:
        if failures:
            failures.pop()
            raise OSError("disk full")
        return save(*objs, **kwargs)

    ledger.save = failing_once
    frame = request(sim, sid, b"q")
    with pytest.raises(OSError, match="disk full"):
        bob.receive_each([(ALICE, frame)], sim.clock.wall_us(), answer=answer)
    assert calls == [b"q"]
    s = bob.session(bob_session(sim))
    assert s.next_expected_seq == 1 and not s.outbox  # back to what the ledger holds
    sim.answers[BOB] = answer
    sim.transport.send(ALICE, BOB, frame)  # Alice's retransmission
    sim.run_for(5)
    assert calls == [b"q", b"q"]
    assert [d.payload for d in sim.delivered[ALICE]] == [b"re:q"]
    replayed = bob.ledger.repository.get(bob_session(sim))
    assert replayed.next_expected_seq == 2 and replayed.next_seq == 2  # one of each


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    loss=st.sampled_from([0.0, 0.1, 0.25]),
    duplication=st.sampled_from([0.0, 0.3]),
    reordering=st.sampled_from([0.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_every_request_gets_one_answer_in_order_over_a_bad_link(
    make_sim: Callable[..., Simulation],
    loss: float,
    duplication: float,
    reordering: float,
    seed: int,
) -> None:
    sim = make_sim(seed=seed)
    sid = connect(sim)
    sim.answers[BOB] = lambda session_id, payload: b"re:" + payload
    sim.transport.profile = LinkProfile(loss=loss, duplication=duplication, reordering=reordering)
    alice = sim.nodes[ALICE]
    requests = [b"q%d" % n for n in range(40)]
    for payload in requests:
        while alice.send_room(sid) == 0:
            sim.run_for(0.05)
        sim.perform(ALICE, alice.submit(sid, payload, sim.clock.wall_us()))
    sim.run_for(600)  # retransmission timers back off to a minute at most
    assert [d.payload for d in sim.delivered[ALICE]] == [b"re:" + p for p in requests]
    bob_delivered = sim.delivered[BOB]
    assert [d.payload for d in bob_delivered] == requests
    assert all(d.answered for d in bob_delivered)
