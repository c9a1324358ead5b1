"""Messages travel as a transport carries them (decision 21): each sent once, sent again only
when its retransmission timer expires or the acknowledgements show it lost, acknowledged
cumulatively and a little late, and an acknowledgement costs the sender no save of its own.
Two managers on signed SQLite ledgers, a MockTransport (10 ms each way) and a manual clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from l2_session.domain.manager.transmit import MIN_RTO_US, UNSAVED_ACK_US
from l2_session.domain.session.commands import Data, DataAck, Frame, Heartbeat, HeartbeatAck
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import WindowFull
from l2_session.transports.mock import Simulation
from session_helpers import ALICE, BOB, SECOND
from test_manager import connect, payloads

MS = 1_000


class Wire:
    """Every frame each node sent, with when; ``drop`` loses the frames it answers True for
    (once each)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.sent: list[tuple[int, str, Frame]] = []
        self.drop: Callable[[str, Frame], bool] = lambda node, frame: False
        send = sim.transport.send

        def sending(src: str, dst: str, frame: Frame, transport: str = "quic") -> None:
            self.sent.append((sim.clock.wall_us(), src, frame))
            if not self.drop(src, frame):
                send(src, dst, frame, transport)

        sim.transport.send = sending  # type: ignore[method-assign]

    def frames(self, node: str, kind: type[Any], since: int = 0) -> list[tuple[int, Any]]:
        return [
            (at, f)
            for at, src, f in self.sent
            if src == node and isinstance(f, kind) and at >= since
        ]


def submit(sim: Simulation, sid: UUID, payload: bytes) -> list[Any]:
    outputs = sim.nodes[ALICE].submit(sid, payload, sim.clock.wall_us())
    sim.perform(ALICE, outputs)
    return outputs


def drop_once(seq: int) -> Callable[[str, Frame], bool]:
    dropped: list[int] = []

    def drop(node: str, frame: Frame) -> bool:
        if isinstance(frame, Data) and frame.seq == seq and not dropped:
            dropped.append(seq)
            return True
        return False

    return drop


def test_a_clean_link_sends_each_message_once_and_acknowledges_fewer(
    make_sim: Callable[..., Simulation],
) -> None:
    """1,024 messages, as many unacknowledged as the window takes: one Data frame each, no
    more; a submission sends its own message and nothing else; an acknowledgement covers two
    messages or more."""
    sim = make_sim()
    sid = connect(sim)
    wire = Wire(sim)
    alice = sim.nodes[ALICE]
    sent = [b"m%d" % n for n in range(1024)]
    queued = 0
    while queued < len(sent):
        while queued < len(sent) and alice.send_room(sid) > 0:
            outputs = submit(sim, sid, sent[queued])
            queued += 1
            assert [o.frame for o in outputs] == [
                Data(alice.session(sid).conversation, queued, sent[queued - 1])
            ]
        sim.run_for(0.001)
    sim.run_for(1)
    assert payloads(sim, BOB) == sent
    assert not alice.session(sid).outbox
    assert len(wire.frames(ALICE, Data)) == len(sent)  # 1.0 frame per message, exactly
    assert len(wire.frames(BOB, DataAck)) < len(sent) // 2 + 1


def test_a_lost_message_goes_again_when_its_timer_expires_not_before_and_alone(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim()
    sid = connect(sim)
    wire = Wire(sim)
    wire.drop = drop_once(2)
    start = sim.clock.wall_us()
    for payload in (b"one", b"two", b"three"):
        submit(sim, sid, payload)
    sim.run_for(0.1)
    # Bob acknowledged 1 at once when 3 came after a gap; one duplicate is not a loss signal.
    acks = wire.frames(BOB, DataAck)
    assert [a.up_to_seq for _, a in acks] == [1]
    acked_at = acks[0][0] + 10 * MS  # when Alice had it: the timer restarted then
    assert len(wire.frames(ALICE, Data)) == 3  # nothing sent again yet

    sim.run_until(acked_at + MIN_RTO_US - 1)
    assert len(wire.frames(ALICE, Data)) == 3  # not before the timeout
    sim.run_until(acked_at + MIN_RTO_US)
    again = wire.frames(ALICE, Data)[3:]
    assert [(at, f.seq) for at, f in again] == [(acked_at + MIN_RTO_US, 2)]  # it alone
    sim.run_for(1)
    assert payloads(sim, BOB) == [b"one", b"two", b"three"]
    assert len(wire.frames(ALICE, Data)) == 4 and start < acked_at


def test_three_duplicate_acknowledgements_send_the_lost_message_at_once(
    make_sim: Callable[..., Simulation],
) -> None:
    """Messages after a gap are held by the receiver, which acknowledges each at once: the
    third duplicate acknowledgement sends the lost one again, long before its timer, and
    the held ones are delivered behind it — the window is not sent again."""
    sim = make_sim()
    sid = connect(sim)
    wire = Wire(sim)
    wire.drop = drop_once(2)
    sent = [b"m%d" % n for n in range(1, 7)]
    start = sim.clock.wall_us()
    for payload in sent:
        submit(sim, sid, payload)
    sim.run_for(0.1)
    seqs = [f.seq for _, f in wire.frames(ALICE, Data)]
    assert seqs == [1, 2, 3, 4, 5, 6, 2]
    (at, _) = wire.frames(ALICE, Data)[-1]
    assert at - start == 20 * MS < MIN_RTO_US  # one round trip, not a timeout
    assert payloads(sim, BOB) == sent


def test_heartbeats_send_no_data(make_sim: Callable[..., Simulation]) -> None:
    """A message in flight goes again by its timer only — 0.2 s after it was sent, then
    doubling — not with a heartbeat sent, nor with one answered."""
    sim = make_sim()
    sid = connect(sim)
    wire = Wire(sim)
    wire.drop = lambda node, frame: isinstance(frame, Data)  # every copy of it is lost
    start = sim.clock.wall_us()
    submit(sim, sid, b"in flight")
    sim.run_for(40)
    (sent_at, _), *_ = wire.frames(ALICE, Heartbeat)
    assert wire.frames(BOB, HeartbeatAck)  # a heartbeat went out and was answered
    timeouts = [0, 200, 600, 1_400, 3_000, 6_200, 12_600, 25_400]
    assert [(at - start) // MS for at, _ in wire.frames(ALICE, Data)] == timeouts
    assert start + 25_400 * MS < sent_at < start + 40 * SECOND
    wire.drop = lambda node, frame: False
    sim.run_for(20)  # the next timeout, 51 s after it was first sent
    assert [(at - start) // MS for at, _ in wire.frames(ALICE, Data)][-1] == 51_000
    assert payloads(sim, BOB) == [b"in flight"]


def test_the_window_fills_and_acknowledgements_make_room(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim(config=SessionConfig(send_window=4))
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    for n in range(4):
        submit(sim, sid, b"m%d" % n)
    assert alice.send_room(sid) == 0
    with pytest.raises(WindowFull):
        alice.submit(sid, b"one too many", sim.clock.wall_us())
    sim.run_for(0.1)
    assert alice.send_room(sid) == 4
    submit(sim, sid, b"m4")
    sim.run_for(0.1)
    assert payloads(sim, BOB) == [b"m0", b"m1", b"m2", b"m3", b"m4"]


def test_a_lone_message_is_acknowledged_after_max_ack_delay(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim()
    sid = connect(sim)
    wire = Wire(sim)
    submit(sim, sid, b"alone")
    sent_at = sim.clock.wall_us()
    sim.run_for(0.1)
    [(at, ack)] = wire.frames(BOB, DataAck)
    assert ack.up_to_seq == 1 and at == sent_at + 10 * MS + 25 * MS  # arrival + max_ack_delay


def test_an_acknowledgement_is_saved_with_the_next_save_or_by_the_tick(
    make_sim: Callable[..., Simulation],
) -> None:
    """Receiving an acknowledgement records it without a save; it rides with the session's
    next save — or, if none comes, the tick's within a second."""
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    saves: list[tuple[Any, ...]] = []
    save = alice.ledger.save
    alice.ledger.save = lambda *objs, **kw: saves.append(objs) or save(*objs, **kw)  # type: ignore[method-assign]

    submit(sim, sid, b"one")
    submit(sim, sid, b"two")
    assert len(saves) == 2  # each message is saved before it leaves
    sim.run_for(0.05)  # Bob acknowledged both at once
    session = alice.session(sid)
    assert not session.outbox and len(saves) == 2  # no save for the acknowledgement
    assert [type(e).__name__ for e in session.pending_events] == ["MessagesAcknowledged"]
    stored = alice.ledger.repository.get(sid)
    assert stored.unacknowledged() == [(1, b"one"), (2, b"two")]

    submit(sim, sid, b"three")  # the next save carries it
    assert len(saves) == 3 and not session.pending_events
    assert alice.ledger.repository.get(sid).unacknowledged() == [(3, b"three")]

    sim.run_for(0.05)
    assert [type(e).__name__ for e in session.pending_events] == ["MessagesAcknowledged"]
    acked_at = session.at_us
    sim.run_until(acked_at + UNSAVED_ACK_US - 1)
    assert session.pending_events
    sim.run_until(acked_at + UNSAVED_ACK_US)
    assert not session.pending_events and len(saves) == 4
    assert alice.ledger.repository.get(sid).unacknowledged() == []


def test_a_crash_that_loses_an_unsaved_acknowledgement_only_sends_again(
    make_sim: Callable[..., Simulation], session_ledger_factory: Callable[..., Any]
) -> None:
    """The acknowledgement dies with the process before any save: the restarted sender
    holds the messages again and sends them once more; the receiver drops them as
    duplicates and acknowledges. Nothing is delivered twice."""
    from l2_session.domain.manager.manager import SessionManager
    from session_helpers import PREKEYS

    sim = make_sim()
    sid = connect(sim)
    submit(sim, sid, b"one")
    submit(sim, sid, b"two")
    sim.run_for(0.05)
    assert sim.nodes[ALICE].session(sid).pending_events  # acknowledged in memory only
    restarted = SessionManager(
        ALICE, session_ledger_factory("alice"), prekeys_of=PREKEYS.__getitem__,
        own_prekeys=PREKEYS[ALICE], key_exchange="mock",
    )  # fmt: skip
    sim.nodes[ALICE] = restarted
    sim.perform(ALICE, restarted.reconnected(BOB, sim.clock.wall_us()))
    assert restarted.session(sid).unacknowledged() == [(1, b"one"), (2, b"two")]
    sim.run_for(1)
    session = restarted.session(sid)
    assert session.state == "established" and not session.outbox
    assert payloads(sim, BOB) == [b"one", b"two"]
    assert sim.nodes[BOB].dropped_frames == 0  # duplicates are acknowledged, not errors
