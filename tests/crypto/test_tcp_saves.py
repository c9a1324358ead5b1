"""TcpNode's saves run on its worker thread, off the event loop (transports/tcp.py,
transports/tcp_worker.py): nothing leaves before the save it depends on has returned, a save
that fails sends nothing, the loop keeps serving every connection while a save is in flight,
sends made together share one save, a send beyond the session's window waits for an
acknowledgement, and a cancelled send is queued whole or not at all. Real keys, signed SQLite
ledgers on disk at both durabilities, loopback TCP, the on-path relay of tcp_support."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import UnknownSession
from l2_session.infrastructure.ledger.application import Durability
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports import tcp
from tcp_support import (
    WAIT_S,
    Pair,
    Side,
    VirtualTime,
    acknowledged,
    established,
    established_pair,
    fresh_did,
    hello,
    is_sealed,
    make_side,
    unread_bytes,
    until,
)
from test_tcp_batches import Batches

DURABILITIES = pytest.mark.parametrize("durability", ["normal", "full"])
HOLD_S = 0.2  # how long a test watches for something that must not happen while a save waits


class SaveGate:
    """A ledger whose saves (made on the node's worker thread) wait at a gate while it is
    closed; it counts the saves that went through and the events in each."""

    def __init__(self, side: Side) -> None:
        self.waiting = threading.Event()  # a save is held at the gate
        self._open = threading.Event()
        self._open.set()
        self.events: list[int] = []  # per save that went through: how many events it saved
        save = side.ledger.save

        def gated(*objs: Any, **kwargs: Any) -> Any:
            if not self._open.is_set():
                self.waiting.set()
                self._open.wait()
            self.events.append(sum(len(getattr(o, "pending_events", ())) for o in objs))
            return save(*objs, **kwargs)

        side.ledger.save = gated  # type: ignore[method-assign]

    def close(self) -> None:
        self.waiting.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()


def _run(
    tmp_path: Path,
    test: Callable[[Pair], Awaitable[None]],
    config: SessionConfig | None = None,
    durability: Durability = "full",
) -> None:
    async def main() -> None:
        pair = await established_pair(tmp_path, config or SessionConfig(), durability=durability)
        try:
            await test(pair)
        finally:
            await pair.close()

    asyncio.run(main())


def _delivered(side: Side) -> list[bytes]:
    return [d.payload for d in side.node.delivered]


def _sealed_to_bob(pair: Pair) -> int:
    return sum(map(is_sealed, pair.relay.to_server))


# ------------------------------------------------------------------ outputs after saves
@DURABILITIES
def test_a_receivers_answer_and_delivery_wait_for_its_save(
    tmp_path: Path, durability: Durability
) -> None:
    """Bob's save of the delivery is held: he neither acknowledges the message nor hands it
    to his application until it returns."""

    async def test(pair: Pair) -> None:
        gate = SaveGate(pair.bob)
        answers = len(pair.relay.to_client)
        gate.close()
        try:
            await pair.alice.node.send(pair.conversation, b"held at Bob's save")
            await until(gate.waiting.is_set)  # Bob's worker is in the save
            await asyncio.sleep(HOLD_S)
            assert len(pair.relay.to_client) == answers and not pair.bob.node.delivered
        finally:
            gate.release()
        await until(lambda: _delivered(pair.bob) == [b"held at Bob's save"])
        await acknowledged(pair)  # the ack, after the save (delayed: Bob's timer)
        assert len(pair.relay.to_client) > answers

    _run(tmp_path, test, durability=durability)


@DURABILITIES
def test_a_senders_message_waits_for_its_save(tmp_path: Path, durability: Durability) -> None:
    """Alice's save of the queued message is held: ``send`` has not returned and nothing of
    it is on the wire until the save returns."""

    async def test(pair: Pair) -> None:
        gate = SaveGate(pair.alice)
        sealed = _sealed_to_bob(pair)
        gate.close()
        try:
            sending = asyncio.ensure_future(pair.alice.node.send(pair.conversation, b"later"))
            await until(gate.waiting.is_set)
            await asyncio.sleep(HOLD_S)
            assert not sending.done() and _sealed_to_bob(pair) == sealed
        finally:
            gate.release()
        await sending
        await until(lambda: _delivered(pair.bob) == [b"later"])

    _run(tmp_path, test, durability=durability)


def test_a_send_whose_save_fails_sends_nothing_and_says_why(tmp_path: Path) -> None:
    async def test(pair: Pair) -> None:
        save, failed = pair.alice.ledger.save, []

        def failing_once(*objs: Any, **kwargs: Any) -> Any:
            if not failed:
                failed.append(True)
                raise sqlite3.OperationalError("disk I/O error")
            return save(*objs, **kwargs)

        pair.alice.ledger.save = failing_once  # type: ignore[method-assign]
        sealed = _sealed_to_bob(pair)
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            await pair.alice.node.send(pair.conversation, b"never queued")
        assert _sealed_to_bob(pair) == sealed
        await pair.alice.node.send(pair.conversation, b"queued")
        await until(lambda: _delivered(pair.bob) == [b"queued"])

    _run(tmp_path, test)


# ------------------------------------------------------------------ the loop goes on
def test_a_save_in_flight_stops_no_connection(tmp_path: Path) -> None:
    """While Bob's worker is held in a save for Alice's message, his event loop still reads
    Carol's connection to the end of what she sent, and accepts and cuts connections; once
    the save returns, what Carol sent meanwhile is decided in one batch (one save), in order."""

    async def test(pair: Pair) -> None:
        carol = make_side(tmp_path, "carol", pair.directory, pair.clock)
        port = pair.server.sockets[0].getsockname()[1]
        try:
            await carol.node.connect(pair.bob.did, "127.0.0.1", port)
            sid = await carol.node.establish(pair.bob.did)
            await established(carol, sid)
            await established(pair.bob, sid)
            gate = SaveGate(pair.bob)
            batches = Batches(pair.bob)  # counts the saves that pass the gate
            gate.close()
            try:
                await pair.alice.node.send(pair.conversation, b"from alice")
                await until(gate.waiting.is_set)
                for n in range(3):
                    await carol.node.send(sid, b"from carol %d" % n)
                frames = carol.node.outputs["Data"]  # each a sealed frame Carol wrote
                # Read off the socket by the loop, waiting for the next batch.
                await until(
                    lambda: (
                        len(pair.bob.node.connections.frames) == frames and not unread_bytes(port)
                    )
                )
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(hello("did:key:") + hello(fresh_did()))  # a hello that is no DID
                assert await reader.read() == b""  # cut by the loop meanwhile
                writer.close()
                assert not pair.bob.node.delivered
            finally:
                gate.release()
            expected = [b"from alice", *(b"from carol %d" % n for n in range(3))]
            await until(lambda: _delivered(pair.bob) == expected)
            assert batches.calls[:2] == [(1, 1), (frames, 1)]  # Alice's, then all of Carol's
        finally:
            await carol.node.close()
            carol.ledger.close()

    _run(tmp_path, test)


def test_frames_waiting_for_a_busy_worker_stay_within_max_batch(tmp_path: Path) -> None:
    """While Bob's worker is held in a save, the frames his loop reads and has not handed
    over stay within ``max_batch`` (plus the one a connection was reading): beyond it his
    connections stop reading (asyncio's reader, then TCP, push back on the peer), and none
    of them is cut for the wait. Released, everything is decided, in order."""

    async def test(pair: Pair) -> None:
        gate, node = SaveGate(pair.bob), pair.bob.node
        node.max_batch = 2
        gate.close()
        try:
            await pair.alice.node.send(pair.conversation, b"first")
            await until(gate.waiting.is_set)
            for n in range(6):
                await pair.alice.node.send(pair.conversation, b"then %d" % n)
            await asyncio.sleep(HOLD_S)
            assert node.max_batch <= len(node.connections.frames) <= node.max_batch + 1
            assert not node.dropped_count
        finally:
            gate.release()
        expected = [b"first", *(b"then %d" % n for n in range(6))]
        await until(lambda: _delivered(pair.bob) == expected)

    _run(tmp_path, test)


def test_a_deadline_that_comes_earlier_wakes_the_timers(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Alice's timers run before she has a session, with nothing to wake them for a minute;
    the batch that establishes her session moves her next deadline (the first heartbeat,
    0.5 s later) earlier, and the timer task wakes for it."""
    monkeypatch.setattr(tcp, "TIMER_IDLE_S", 60.0)
    config = SessionConfig(heartbeat_interval=0.5, heartbeat_response_timeout=0.2)

    async def main() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, config)
        bob = make_side(tmp_path, "bob", directory, clock, config)
        server = await bob.node.serve()
        try:
            alice.node.start_timers()
            await alice.node.query(lambda: None)  # its first tick is behind it: asleep
            await alice.node.connect(bob.did, "127.0.0.1", server.sockets[0].getsockname()[1])
            sid = await alice.node.establish(bob.did)
            session = await alice.node.query(lambda: alice.manager.session(sid))
            await alice.node.until(lambda: session.heartbeat_counter >= 1, WAIT_S)
        finally:
            await alice.node.close()
            server.close()
            await bob.node.close()
            alice.ledger.close()
            bob.ledger.close()

    asyncio.run(main())


# ------------------------------------------------------------------ sends
@DURABILITIES
def test_sends_made_together_share_one_save(tmp_path: Path, durability: Durability) -> None:
    async def test(pair: Pair) -> None:
        gate = SaveGate(pair.alice)
        messages = [b"message %d" % n for n in range(10)]
        await asyncio.gather(*(pair.alice.node.send(pair.conversation, m) for m in messages))
        assert gate.events == [10]  # one save, ten MessageQueued
        await until(lambda: _delivered(pair.bob) == messages)

    _run(tmp_path, test, durability=durability)


WINDOW = SessionConfig(send_window=4)


async def _window_full(pair: Pair, count: int) -> list[asyncio.Future[None]]:
    """``count`` sends on Alice's session while the relay holds every sealed frame she sends
    (so no acknowledgement comes back): once the window's four are queued, the rest wait."""
    pair.relay.hold = is_sealed
    sends = [
        asyncio.ensure_future(pair.alice.node.send(pair.conversation, b"m%d" % n))
        for n in range(count)
    ]
    await until(lambda: sum(s.done() for s in sends) == 4)
    await pair.alice.node.query(lambda: None)  # a batch later, the others still wait
    assert [s.done() for s in sends] == [True] * 4 + [False] * (count - 4)
    room = await pair.alice.node.query(lambda: pair.alice.manager.send_room(pair.conversation))
    assert room == 0
    return sends


def _let_through(pair: Pair) -> None:
    pair.relay.hold = None
    for frame in pair.relay.held:
        pair.relay.inject(frame)
    pair.relay.held.clear()


def test_a_send_beyond_the_window_waits_for_an_acknowledgement(tmp_path: Path) -> None:
    async def test(pair: Pair) -> None:
        sends = await _window_full(pair, 6)
        _let_through(pair)  # Bob gets the four and acknowledges them: room for the rest
        await asyncio.wait_for(asyncio.gather(*sends), WAIT_S)
        await until(lambda: _delivered(pair.bob) == [b"m%d" % n for n in range(6)])

    _run(tmp_path, test, WINDOW)


def _queued(side: Side, session_id: Any) -> list[bytes]:
    events = side.ledger.events.get(session_id)
    return [e.payload for e in events if type(e).__name__ == "MessageQueued"]


def test_a_send_cancelled_while_it_waits_is_not_queued(tmp_path: Path) -> None:
    async def test(pair: Pair) -> None:
        sends = await _window_full(pair, 6)
        sends[4].cancel()
        _let_through(pair)
        await asyncio.wait_for(sends[5], WAIT_S)
        expected = [b"m0", b"m1", b"m2", b"m3", b"m5"]
        await until(lambda: _delivered(pair.bob) == expected)
        assert sends[4].cancelled()
        assert _queued(pair.alice, pair.conversation) == expected

    _run(tmp_path, test, WINDOW)


def test_a_send_cancelled_once_the_worker_took_it_is_queued_whole(tmp_path: Path) -> None:
    """Cancelled while its save is in flight, a send is not undone halfway: its message is
    queued and delivered, as if it had been cancelled just after it returned."""

    async def test(pair: Pair) -> None:
        gate = SaveGate(pair.alice)
        gate.close()
        try:
            sending = asyncio.ensure_future(pair.alice.node.send(pair.conversation, b"taken"))
            await until(gate.waiting.is_set)
            sending.cancel()
            await asyncio.sleep(0)
        finally:
            gate.release()
        assert sending.cancelled()
        await until(lambda: _delivered(pair.bob) == [b"taken"])
        assert _queued(pair.alice, pair.conversation) == [b"taken"]

    _run(tmp_path, test)


def test_a_send_to_no_session_raises_its_reason(tmp_path: Path) -> None:
    async def test(pair: Pair) -> None:
        with pytest.raises(UnknownSession):
            await pair.alice.node.send(uuid4(), b"to nobody")
        await pair.alice.node.send(pair.conversation, b"the node goes on")
        await until(lambda: _delivered(pair.bob) == [b"the node goes on"])

    _run(tmp_path, test)


def test_sends_and_commands_after_close_are_refused(tmp_path: Path) -> None:
    async def test(pair: Pair) -> None:
        await pair.alice.node.close()
        with pytest.raises(tcp.NodeClosed):
            await pair.alice.node.send(pair.conversation, b"too late")
        with pytest.raises(tcp.NodeClosed):
            await pair.alice.node.query(lambda: None)

    _run(tmp_path, test)
