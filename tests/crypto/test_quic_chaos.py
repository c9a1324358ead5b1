"""A session over QUIC through a bad network: a UDP relay between two nodes loses datagrams
both ways, rebinds its port mid-stream (a NAT that rebinds: the QUIC connection migrates,
its new path validated) and partitions the nodes for a while — and the session carries on,
every message delivered once and in order, no new handshake. Real keys and ledgers, aioquic
on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

from l2_session.infrastructure.resolver import DidKeyResolver
from tcp_support import WAIT_S, Side, VirtualTime, established, make_side
from udp_chaos import ChaosRelay


async def _close(*sides: Side) -> None:
    for side in sides:
        await side.node.close()
        side.ledger.close()


def test_a_session_over_quic_survives_loss_a_nat_rebinding_and_a_partition(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        relay = await ChaosRelay.start(await bob.node.serve_quic(), loss=0.1, seed=7)
        try:
            await alice.node.connect_quic(bob.did, *relay.address)
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            keys = alice.session(sid).key_id
            sent = [b"m%d" % n for n in range(90)]

            async def send(batch: list[bytes]) -> None:
                await asyncio.gather(*(alice.node.send(sid, p) for p in batch))

            await send(sent[:30])  # through 10 % loss each way
            await relay.rebind()  # the NAT gives Alice's flow a new port
            await send(sent[30:60])
            relay.partitioned = True  # nothing passes for a second; the sends wait for room

            def heal() -> None:
                # The path comes back clean. Across the partition QUIC's probe timer and the
                # session's retransmission timer have backed off (doubled at each expiry, to
                # about 1.6 s); with 10 % loss each way kept, each probe after it lost
                # doubles the wait again — three in a row (~1 % of runs) made a wait of over
                # 30 s, a failure by the guard below, not of the session. Loss is what the
                # first two phases are about; this one is about the partition.
                relay.partitioned, relay.loss = False, 0.0

            healed = asyncio.get_running_loop().call_later(1.0, heal)
            # A hang guard, not a measure: on a loaded host the first tries after the
            # partition may still come seconds apart.
            async with asyncio.timeout(3 * WAIT_S):
                await send(sent[60:])
            healed.cancel()
            # The same backed-off timers carry the window still unacknowledged when the last
            # send returned: the same guard (a local run under load waited over 10 s).
            async with asyncio.timeout(3 * WAIT_S):
                got = [(await bob.node.receive()).payload for _ in sent]
            assert got == sent  # once each, in order
            assert bob.node._received.empty()
            s = alice.session(sid)
            assert s.key_id == keys and s.transport == "quic" and s.state == "established"
            assert relay.lost > 0
            assert {link.kind for link in alice.node.connections.open} == {"quic"}
            (link,) = alice.node.connections.open
            assert not link.pipe.closing()  # the one QUIC connection, migrated
        finally:
            relay.close()
            await _close(alice, bob)

    asyncio.run(run())


def test_a_partition_longer_than_the_heartbeats_degrades_and_heals_over_quic(
    tmp_path: Path,
) -> None:
    """Nothing passes between the nodes for longer than three heartbeats: Alice's session
    goes ``degraded`` and holds what is sent meanwhile; once traffic passes again, the next
    heartbeat answered re-establishes it (decision 5) and the held messages go, once each."""

    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        relay = await ChaosRelay.start(await bob.node.serve_quic(), loss=0.0, seed=1)
        try:
            await alice.node.connect_quic(bob.did, *relay.address)
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            session = alice.session(sid)

            async def tick(seconds: float) -> None:
                now = clock.skip(seconds)
                await alice.node.command(lambda: alice.manager.tick(now))

            await alice.node.send(sid, b"before")
            assert (await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload == b"before"
            relay.partitioned = True
            for _ in range(12):  # heartbeats every 30 s, each unanswered within 2 s
                if await alice.node.query(lambda: session.state == "degraded"):
                    break
                await tick(31 if session.heartbeat_sent_us is None else 2.5)
            assert await alice.node.query(lambda: session.state == "degraded")
            held = [b"held %d" % n for n in range(5)]
            for payload in held:
                await alice.node.send(sid, payload)  # saved, held while degraded
            relay.partitioned = False
            for _ in range(12):
                if await alice.node.query(lambda: session.state == "established"):
                    break
                await tick(31 if session.heartbeat_sent_us is None else 2.5)
                await asyncio.sleep(0.2)
            assert await alice.node.query(lambda: session.state == "established")
            got = [(await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload for _ in held]
            assert got == held and bob.node._received.empty()
            history = [type(e).__name__ for e in alice.ledger.events.get(sid)]
            assert "HeartbeatMissed" in history
        finally:
            relay.close()
            await _close(alice, bob)

    asyncio.run(run())
