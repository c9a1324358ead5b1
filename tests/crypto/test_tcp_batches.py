"""TcpNode decides what its connections read in one turn of the event loop together
(``SessionManager.receive_each``: one save, one group commit), each frame in the order it was
read and after the ones before it, each answered on its own connection, and each connection
proved only by what its own frame did. Real keys, real ledgers, loopback TCP; the relay holds
Alice's frames so that they reach Bob at once."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from l2_session.domain.handshake.wire import MessageType
from l2_session.domain.session.commands import Frame
from l2_session.infrastructure.resolver import DidKeyResolver
from tcp_support import (
    WAIT_S,
    Relay,
    Side,
    VirtualTime,
    established,
    fresh_did,
    hello,
    is_sealed,
    make_side,
    until,
)


class Batches:
    """Spies on Bob's ``receive_each``: how many frames each call took (taken lazily, as
    the node hands them) and how many ledger saves it made."""

    def __init__(self, side: Side) -> None:
        self.calls: list[tuple[int, int]] = []
        manager, ledger = side.manager, side.ledger
        receive_each, save = manager.receive_each, ledger.save
        saves = [0]

        def counting_save(*objs: Any, **kwargs: Any) -> Any:
            saves[0] += 1
            return save(*objs, **kwargs)

        def spy(frames: Iterable[tuple[str, Frame]], now_us: int, **options: Any) -> Any:
            taken, before = [0], saves[0]

            def counted() -> Iterator[tuple[str, Frame]]:
                for item in frames:
                    taken[0] += 1
                    yield item

            try:
                return receive_each(counted(), now_us, **options)
            finally:
                self.calls.append((taken[0], saves[0] - before))

        manager.receive_each = spy  # type: ignore[method-assign]
        ledger.save = counting_save  # type: ignore[method-assign]


def _run(tmp_path: Path, test: Callable[..., Awaitable[None]]) -> None:
    """Alice connects to Bob through the relay, which forwards her INIT and holds every
    frame after it; ``test(alice, bob, relay, clock, port)`` takes it from there."""

    async def main() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock)
        bob = make_side(tmp_path, "bob", directory, clock)
        server = await bob.node.serve()
        port = server.sockets[0].getsockname()[1]
        relay = Relay(port)
        relay.hold = lambda frame: len(relay.to_server) >= 2  # all but the INIT
        await alice.node.connect(bob.did, "127.0.0.1", await relay.start())
        try:
            await test(alice, bob, relay, clock, port)
        finally:
            await alice.node.close()
            await relay.close()
            server.close()
            await bob.node.close()
            alice.ledger.close()
            bob.ledger.close()

    asyncio.run(main())


def _state(side: Side, conversation: Any) -> str | None:
    session = side.manager.session_for(conversation)
    return None if session is None else session.state


async def _alice_established(alice: Side, bob: Side, relay: Relay, clock: VirtualTime) -> Any:
    sid = await alice.node.establish(bob.did)
    await established(alice, sid)
    await until(lambda: len(relay.held) == 1)  # her CONFIRM, held
    assert _state(bob, sid) == "handshake_received"
    return sid


def test_a_confirmation_and_the_message_behind_it_are_decided_in_one_save(tmp_path: Path) -> None:
    """Alice's CONFIRM and her first message, sealed under the keys the CONFIRM completes,
    reach Bob in one read: one ``receive_each`` takes both — the message opened only after the
    CONFIRM was decided — with one save, and the message is delivered."""

    async def test(alice: Side, bob: Side, relay: Relay, clock: VirtualTime, port: int) -> None:
        sid = await _alice_established(alice, bob, relay, clock)
        await alice.node.send(sid, b"first words")
        await until(lambda: len(relay.held) == 2)
        assert is_sealed(relay.held[1]) and not is_sealed(relay.held[0])
        batches = Batches(bob)
        relay.inject(b"".join(relay.held))
        await until(lambda: [d.payload for d in bob.node.delivered] == [b"first words"])
        assert batches.calls[0] == (2, 1)  # both frames, one save
        assert _state(bob, sid) == "established"
        assert bob.node.is_proven(alice.did)
        assert not bob.node.sealed.refused and bob.node.failed_frames == 0

    _run(tmp_path, test)


def test_max_batch_bounds_the_frames_of_one_save(tmp_path: Path) -> None:
    """With ``max_batch=1`` the same two frames are decided one per save, in order, and the
    message is still delivered (the save of the first came before the second was opened)."""

    async def test(alice: Side, bob: Side, relay: Relay, clock: VirtualTime, port: int) -> None:
        sid = await _alice_established(alice, bob, relay, clock)
        await alice.node.send(sid, b"first words")
        await until(lambda: len(relay.held) == 2)
        bob.node.max_batch = 1
        batches = Batches(bob)
        relay.inject(b"".join(relay.held))
        await until(lambda: [d.payload for d in bob.node.delivered] == [b"first words"])
        assert batches.calls[:2] == [(1, 1), (1, 1)]
        assert bob.node.is_proven(alice.did) and not bob.node.sealed.refused

    _run(tmp_path, test)


def test_a_duplicate_from_an_impostor_in_the_same_batch_proves_nothing(tmp_path: Path) -> None:
    """Mallory, claiming Alice's DID, sends a copy of Alice's CONFIRM so that it reaches Bob
    in the same turn as hers. Hers completes the handshake and proves her connection; the
    copy, decided after it, is a stale duplicate: Bob's frames for Alice go to her alone."""

    async def test(alice: Side, bob: Side, relay: Relay, clock: VirtualTime, port: int) -> None:
        sid = await _alice_established(alice, bob, relay, clock)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        claimed = alice.did.encode()
        writer.write(struct.pack(">H", len(claimed)) + claimed)
        # Bob has taken the claim in (connections count from their accept, before the hello).
        await until(lambda: [link.did for link in bob.node.connections.open] == [alice.did] * 2)
        batches = Batches(bob)
        dropped = bob.manager.dropped_frames
        relay.inject(relay.held[0])
        writer.write(relay.held[0])  # the same bytes, on Mallory's connection
        await bob.node.until(lambda: bob.manager.dropped_frames == dropped + 1, WAIT_S)
        assert batches.calls == [(2, 1)]  # one batch: hers, then the copy
        assert _state(bob, sid) == "established"

        bob_session = bob.manager.session_for(sid)
        assert bob_session is not None
        await bob.node.send(bob_session.id, b"for alice only")
        await until(lambda: [d.payload for d in alice.node.delivered] == [b"for alice only"])
        await bob.node.close()  # Bob hangs up on everyone: Mallory reads to the end
        assert await reader.read() == b""
        writer.close()

    _run(tmp_path, test)


def test_a_malformed_frame_drops_its_connection_alone(tmp_path: Path) -> None:
    """A frame that breaks the framing, in the same turn as Alice's CONFIRM, drops the
    connection it came on; Alice's frame is decided and her handshake completes."""

    async def test(alice: Side, bob: Side, relay: Relay, clock: VirtualTime, port: int) -> None:
        sid = await _alice_established(alice, bob, relay, clock)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        mallory = fresh_did()
        writer.write(hello(mallory))
        await until(lambda: mallory in {link.did for link in bob.node.connections.open})
        batches = Batches(bob)
        relay.inject(relay.held[0])
        writer.write(struct.pack(">I", 3) + bytes([MessageType.CONFIRM, 0xFF, 0xFF]))
        assert await reader.read() == b""  # dropped
        await bob.node.until(lambda: _state(bob, sid) == "established", WAIT_S)
        assert bob.node.dropped_count == 1 and bob.node.is_proven(alice.did)
        assert "truncated" in bob.node.dropped_connections[-1]  # for its frame, not its hello
        assert sum(taken for taken, _ in batches.calls) == 1  # only Alice's frame was decided
        writer.close()

    _run(tmp_path, test)
