"""``establish_many`` and ``receive_many``: many commands, one ``save`` (one group commit),
nothing sent before it returned — the same decisions ``establish`` and ``receive`` make one
at a time. On real signed SQLite ledgers; the last test with real PQxdh keys."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session.commands import (
    Data,
    DataAck,
    Deliver,
    HandshakeAck,
    HandshakeRequest,
    HandshakeResponse,
    Heartbeat,
    Output,
    Send,
)
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import SessionError
from l2_session.domain.session.peer import peer_id
from l2_session.domain.session.session import Session
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.ledger.verify import verify
from pqxdh_nodes import Nodes
from session_helpers import ALICE, BOB, SECOND, T0
from test_manager_tick import PEERS, RecordingKeyExchange, RecordingLedger

THREE = (*PEERS, "did:key:z6MkPeerThree")


@pytest.fixture
def node(session_ledger_factory: Callable[..., Any]) -> tuple[SessionManager, RecordingLedger]:
    log: list[tuple[str, Any]] = []
    ledger = RecordingLedger(session_ledger_factory("alice"), log)
    manager = SessionManager(ALICE, ledger, SessionConfig(), key_exchange=RecordingKeyExchange(log))
    return manager, ledger


def _sent(outputs: list[Output], kind: type) -> list[Any]:
    return [o.frame for o in outputs if isinstance(o, Send) and isinstance(o.frame, kind)]


def _responses(manager: SessionManager, requests: list[HandshakeRequest]) -> list[Any]:
    sessions = [manager.session_for(r.conversation) for r in requests]
    return [(s.peer_did, HandshakeResponse(s.conversation, b"\x01" * 32)) for s in sessions]


def test_establish_many_saves_once_then_derives_every_request(node) -> None:
    manager, ledger = node
    ids, outputs = manager.establish_many(THREE, T0)
    assert len(ledger.saves()) == 1
    assert {s.id for s in ledger.saves()[0] if isinstance(s, Session)} == set(ids)
    # Every handshake request is derived after the one save, in the order of the peers.
    assert [what for what, _ in ledger.log] == ["save", "initiate", "initiate", "initiate"]
    requests = _sent(outputs, HandshakeRequest)
    assert [manager.session_for(r.conversation).peer_did for r in requests] == list(THREE)
    for sid in ids:
        stored = ledger.repository.get(sid)
        assert stored.state == manager.session(sid).state == "handshake_initiated"
    assert manager.next_wakeup_us() is not None  # armed: their handshakes time out


def test_receive_many_saves_once_and_sends_after_it(node) -> None:
    manager, ledger = node
    _, outputs = manager.establish_many(THREE, T0)
    responses = _responses(manager, _sent(outputs, HandshakeRequest))
    saves = len(ledger.saves())
    acks = manager.receive_many(responses, T0 + SECOND)
    assert len(ledger.saves()) == saves + 1
    assert len(_sent(acks, HandshakeAck)) == 3
    for _, response in responses:
        session = manager.session_for(response.conversation)
        assert session.state == "established"
        assert ledger.repository.get(session.id).state == "established"


def test_one_bad_frame_is_dropped_and_the_rest_proceed(node) -> None:
    manager, _ = node
    _, outputs = manager.establish_many(THREE, T0)
    responses = _responses(manager, _sent(outputs, HandshakeRequest))
    stray = (PEERS[0], HandshakeResponse(responses[1][1].conversation, b"\x01" * 32))  # wrong peer
    dropped = manager.dropped_frames
    acks = manager.receive_many([responses[0], stray, responses[2]], T0 + SECOND)
    assert manager.dropped_frames == dropped + 1
    assert len(_sent(acks, HandshakeAck)) == 2
    states = [manager.session_for(r.conversation).state for _, r in responses]
    assert states == ["established", "handshake_initiated", "established"]


def test_two_frames_for_one_session_keep_their_own_outputs_in_order(node) -> None:
    manager, _ = node
    _, outputs = manager.establish_many(PEERS[:1], T0)
    [(peer_did, response)] = _responses(manager, _sent(outputs, HandshakeRequest))
    first, second = (Data(response.conversation, n, b"m%d" % n) for n in (1, 2))
    out = manager.receive_many(
        [(peer_did, response), (peer_did, first), (peer_did, second)], T0 + SECOND
    )
    kinds = [type(o.frame if isinstance(o, Send) else o).__name__ for o in out]
    # One acknowledgement for the session's two messages, after the last (decision 21).
    assert kinds == ["HandshakeAck", "Deliver", "Deliver", "DataAck"]
    assert [o.payload for o in out if isinstance(o, Deliver)] == [b"m1", b"m2"]
    assert _sent(out, DataAck)[0].up_to_seq == 2


def test_receive_each_keeps_each_frames_outputs_apart(node) -> None:
    manager, ledger = node
    _, outputs = manager.establish_many(PEERS, T0)
    responses = _responses(manager, _sent(outputs, HandshakeRequest))
    first = responses[0][1].conversation
    stray = (PEERS[1], HandshakeResponse(first, b"\x01" * 32))  # for PEERS[0]'s session
    data = (PEERS[0], Data(first, 1, b"hello"))
    saves = len(ledger.saves())
    groups = manager.receive_each([responses[0], stray, data, responses[1]], T0 + SECOND)
    assert len(ledger.saves()) == saves + 1
    kinds = [[type(o.frame if isinstance(o, Send) else o).__name__ for o in g] for g in groups]
    assert kinds == [["HandshakeAck"], [], ["Deliver"], ["HandshakeAck"]]
    acks = [g[0].frame for g in (groups[0], groups[3])]
    assert [a.conversation for a in acks] == [r.conversation for _, r in responses]
    # One message alone is acknowledged after max_ack_delay (25 ms), by the tick.
    assert manager.next_wakeup_us() == T0 + SECOND + 25_000
    assert _sent(manager.tick(T0 + SECOND + 25_000), DataAck) == [DataAck(first, 1)]


def test_receive_each_decides_a_frame_before_taking_the_next(node) -> None:
    """The contract tcp.py relies on: between two frames taken from a generator, the first
    has been decided (its session changed), and nothing has been saved yet."""
    manager, ledger = node
    _, outputs = manager.establish_many(PEERS, T0)
    responses = _responses(manager, _sent(outputs, HandshakeRequest))
    saves = len(ledger.saves())
    seen: list[tuple[str, int]] = []

    def frames() -> Any:
        for peer_did, response in responses:
            yield peer_did, response
            seen.append((manager.session_for(response.conversation).state, len(ledger.saves())))

    manager.receive_each(frames(), T0 + SECOND)
    assert seen == [("established", saves), ("established", saves)]
    assert len(ledger.saves()) == saves + 1


def test_a_failed_save_leaves_the_ledgers_state_and_sends_nothing(node) -> None:
    manager, ledger = node
    _, outputs = manager.establish_many(THREE, T0)
    responses = _responses(manager, _sent(outputs, HandshakeRequest))
    manager.receive_many(responses, T0 + 1)
    messages = [(peer, Data(r.conversation, 1, peer.encode())) for peer, r in responses]
    ledger.fail_next = True
    with pytest.raises(Exception, match="disk is full"):
        manager.receive_many(messages, T0 + SECOND)
    for _, message in messages:  # memory is what the ledger holds again
        assert manager.session_for(message.conversation).next_expected_seq == 1
    # The messages come again (no ack went out): each delivered now, exactly once.
    again = manager.receive_many(messages, T0 + 2 * SECOND)
    assert [o.payload for o in again if isinstance(o, Deliver)] == [p.encode() for p in THREE]
    assert not [
        o for o in manager.receive_many(messages, T0 + 3 * SECOND) if isinstance(o, Deliver)
    ]
    for _, message in messages:
        session = manager.session_for(message.conversation)
        assert ledger.repository.get(session.id).next_expected_seq == 2


def test_a_failed_first_save_forgets_the_new_sessions(node) -> None:
    manager, ledger = node
    ledger.fail_next = True
    with pytest.raises(Exception, match="disk is full"):
        manager.establish_many(THREE, T0)
    assert len(manager) == 0 and manager.next_wakeup_us() is None
    ids, _ = manager.establish_many(THREE, T0 + 1)  # and a second try opens them afresh
    assert len(manager) == 3 and all(ledger.repository.get(sid) for sid in ids)


def test_a_quarantined_peer_is_refused_alone(node) -> None:
    manager, _ = node
    peer = manager.peer(PEERS[1], T0)
    peer.authentication_failed(T0, 0.5)
    manager.ledger.save(peer)
    results, outputs = manager.establish_many(THREE, T0 + SECOND)
    assert isinstance(results[1], SessionError)
    assert [type(r).__name__ for r in results].count("UUID") == 2
    assert len(_sent(outputs, HandshakeRequest)) == 2


class FaultyKeyExchange(RecordingKeyExchange):
    """Its answer to one peer's request raises something that is no ``SessionError``, as a
    resolver or a bug would."""

    def respond(self, conversation: UUID, peer_did: str, request: bytes, now_us: int) -> bytes:
        if peer_did == PEERS[1]:
            raise RuntimeError("the resolver is down")
        return super().respond(conversation, peer_did, request, now_us)


def test_a_frame_whose_deciding_fails_loses_no_other_frame(session_ledger_factory) -> None:
    log: list[tuple[str, Any]] = []
    bob = SessionManager(BOB, session_ledger_factory("bob"), key_exchange=FaultyKeyExchange(log))
    requests = [(peer, HandshakeRequest(uuid4(), b"\x01" * 32)) for peer in THREE]
    groups = bob.receive_each(requests, T0)
    assert [[type(o.frame).__name__ for o in g] for g in groups] == [
        ["HandshakeResponse"],
        [],
        ["HandshakeResponse"],
    ]
    assert bob.failed_frames == 1 and bob.dropped_frames == 0
    states = [getattr(bob.session_for(r.conversation), "state", None) for _, r in requests]
    assert states == ["handshake_received", None, "handshake_received"]


class PeerReadFails:
    """A real ledger whose reads of one peer's standing fail, once ``failing`` names it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.failing = inner, None

    @property
    def repository(self) -> Any:
        inner, failing = self.inner.repository, self.failing

        class Repository:
            def get(self, aggregate_id: UUID, **kwargs: Any) -> Any:
                if aggregate_id == failing:
                    raise RuntimeError("cannot read the peer")
                return inner.get(aggregate_id, **kwargs)

        return Repository()

    def live_session_ids(self, *topics: Any) -> Any:
        return self.inner.live_session_ids(*topics)

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        return self.inner.save(*objs, **kwargs)


def test_a_frame_that_fails_after_recording_fails_its_batch(session_ledger_factory) -> None:
    # Memory would no longer be the ledger plus the batch: the batch fails whole, as when its
    # save fails, and every session is what the ledger holds.
    ledger = PeerReadFails(session_ledger_factory("alice"))
    alice = SessionManager(ALICE, ledger, key_exchange=RecordingKeyExchange([]))
    _, outputs = alice.establish_many(THREE, T0)
    responses = _responses(alice, _sent(outputs, HandshakeRequest))
    alice._peers.pop(PEERS[1])  # read again, and failing, after the response is recorded
    ledger.failing = peer_id(PEERS[1])
    with pytest.raises(RuntimeError, match="cannot read the peer"):
        alice.receive_each(responses, T0 + SECOND)
    for _, response in responses:
        session = alice.session_for(response.conversation)
        assert session.state == ledger.repository.get(session.id).state == "handshake_initiated"


def test_batches_do_not_nest(node) -> None:
    manager, _ = node

    def inner() -> list[Any]:
        manager.establish_many(PEERS, T0)
        return []

    with pytest.raises(RuntimeError, match="cannot nest"):
        manager._in_one_save(inner)  # a key exchange or ledger calling back into a batch


def test_many_real_handshakes_in_three_saves(session_ledger_factory, manual_clock: ManualClock):
    # Real PQxdh keys and signed SQLite ledgers: four handshakes in flight between two nodes,
    # each round one call. The initiator saves twice (open, established), the responder once
    # (decision 14): three saves for the four handshakes, and both ledgers verify.
    nodes = Nodes(session_ledger_factory, manual_clock)
    alice, bob = nodes.manager(nodes.alice), nodes.manager(nodes.bob)
    saves = {did: _count_saves(nodes.manager(did)) for did in (nodes.alice, nodes.bob)}
    now = manual_clock.wall_us()
    ids, inits = alice.establish_many([nodes.bob] * 4, now)
    responses = bob.receive_many([(nodes.alice, s.frame) for s in inits], now + 1)
    acks = alice.receive_many([(nodes.bob, s.frame) for s in responses], now + 2)
    rest = bob.receive_many([(nodes.alice, s.frame) for s in acks], now + 3)
    assert [len(inits), len(responses), len(acks)] == [4, 4, 4] and rest == []
    assert {alice.session(sid).state for sid in ids} == {"established"}
    assert {bob.session_for(alice.session(sid).conversation).state for sid in ids} == {
        "established"
    }
    assert saves == {nodes.alice: [2], nodes.bob: [1]}
    for manager in (alice, bob):
        report = verify(manager.ledger)
        assert report.ok and report.events_checked >= 4 * 3


def _count_saves(manager: SessionManager) -> list[int]:
    count = [0]
    inner = manager.ledger.save

    def counting(*objs: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return inner(*objs, **kwargs)

    manager.ledger.save = counting  # type: ignore[method-assign]
    return count


# -- receive_many decides as receive does ----------------------------------------------------
# A scenario is batches of frames from Bob to Alice's sessions, each batch at one time: the
# same frames go to one manager frame by frame (``receive``) and to another batch by batch
# (``receive_many``); both end in the same states, the same ledger events and the same
# deliveries. (Sends may differ: a batch derives its resends after all of its frames.)
_FRAME = st.one_of(
    st.tuples(st.just("response"), st.integers(0, 2)),
    st.tuples(st.just("data"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.just("ack"), st.integers(0, 2), st.integers(0, 4)),
    st.tuples(st.just("heartbeat"), st.integers(0, 2), st.integers(0, 3)),
    st.tuples(st.just("stray"), st.integers(0, 2)),
)
_EXAMPLE = [
    [("response", 0), ("data", 0, 1), ("data", 0, 2), ("response", 1), ("data", 1, 2)],
    [("data", 1, 1), ("data", 0, 2), ("stray", 1), ("heartbeat", 0, 1), ("ack", 0, 0)],
    [("response", 0), ("data", 1, 3), ("data", 1, 2), ("data", 1, 3)],
]
_EXAMPLES = itertools.count()
_SCENARIO = st.lists(st.lists(_FRAME, min_size=1, max_size=6), min_size=1, max_size=5)


def _frame(kind: tuple[Any, ...], conversations: list[Any]) -> tuple[str, Any]:
    conversation = conversations[kind[1]]
    if kind[0] == "response":
        return BOB, HandshakeResponse(conversation, b"\x01" * 32)
    if kind[0] == "data":
        return BOB, Data(conversation, kind[2], b"m%d" % kind[2])
    if kind[0] == "ack":
        return BOB, DataAck(conversation, kind[2])
    if kind[0] == "heartbeat":
        return BOB, Heartbeat(conversation, kind[2])
    return PEERS[0], Data(conversation, 1, b"from someone else")  # not the session's peer


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenario=_SCENARIO)
@example(scenario=_EXAMPLE)
def test_receive_many_ends_where_receive_one_by_one_does(session_ledger_factory, scenario):
    example = next(_EXAMPLES)  # each example its own pair of ledger files
    one, many = (
        SessionManager(
            ALICE,
            session_ledger_factory(f"{name}-{example}"),
            SessionConfig(),
            seed=1,
            key_exchange="mock",
        )
        for name in ("one", "many")
    )
    ids_one, _ = one.establish_many([BOB] * 3, T0)
    ids_many = [r for r in many.establish_many([BOB] * 3, T0)[0] if isinstance(r, UUID)]
    conv_one = [one.session(sid).conversation for sid in ids_one]
    conv_many = [many.session(sid).conversation for sid in ids_many]
    delivered_one: list[tuple[int, int, bytes]] = []
    delivered_many: list[tuple[int, int, bytes]] = []
    for n, batch in enumerate(scenario):
        now = T0 + (n + 1) * 100_000
        for kind in batch:
            for o in one.receive(*_frame(kind, conv_one), now):
                if isinstance(o, Deliver):
                    delivered_one.append((ids_one.index(o.session_id), o.seq, o.payload))
        outputs = many.receive_many([_frame(kind, conv_many) for kind in batch], now)
        delivered_many += [
            (ids_many.index(o.session_id), o.seq, o.payload)
            for o in outputs
            if isinstance(o, Deliver)
        ]
    assert delivered_many == delivered_one
    if scenario == _EXAMPLE:  # the explicit example reaches what the property is about
        assert len(delivered_one) == 5 and one.dropped_frames == 1
    assert many.dropped_frames == one.dropped_frames
    for a, b in zip(ids_one, ids_many, strict=True):
        s_one, s_many = one.session(a), many.session(b)
        assert (s_many.state, s_many.version, s_many.next_expected_seq) == (
            s_one.state, s_one.version, s_one.next_expected_seq,
        )  # fmt: skip
        names = [[type(e).__name__ for e in m.ledger.events.get(sid)] for m, sid in
                 ((one, a), (many, b))]  # fmt: skip
        assert names[0] == names[1]
