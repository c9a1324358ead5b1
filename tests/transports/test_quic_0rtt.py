"""0-RTT on QUIC links (transports/quic.py, quic_tls.py) over loopback: a client that talked
to a server before sends its hello and first frame in 0-RTT; a server that lost its tickets
takes them after the handshake instead, once; a replayed first flight delivers nothing, while
the connection lives and after it closed (docs/transports.md, "0-RTT and replay")."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from aioquic.quic.logger import QuicLogger
from l2_session.transports.quic import QuicEndpoint
from quic_support import FAST, UdpRelay, endpoints, eventually, frame, send_raw

RESUME = frame(b"\x04" + b"\x00" * 99)  # stands for an L2 RESUME: any frame will do


def frames_in_0rtt_packets(logger: QuicLogger) -> list[int]:
    """The lengths of the STREAM frames the server received in 0-RTT packets."""
    found = []
    for trace in logger.to_dict()["traces"]:
        for event in trace["events"]:
            if event["name"] != "transport:packet_received":
                continue
            if event["data"]["header"]["packet_type"] != "0RTT":
                continue
            found += [f["length"] for f in event["data"]["frames"] if f["frame_type"] == "stream"]
    return found


async def talked_before(client: QuicEndpoint, server: QuicEndpoint, address) -> None:
    """A full handshake with ``address``, kept until the client holds its ticket."""
    link = await client.connect(*address, hello=b"me")
    accepted = await asyncio.wait_for(server.accept(), 2)
    assert not link.session_resumed and not link.early_data_accepted
    await eventually(lambda: tuple(address) in client.client_tickets)
    link.close()
    await asyncio.wait_for(accepted.wait_closed(), 2)


def test_a_reconnect_sends_its_hello_and_first_frame_in_0rtt():
    logger = QuicLogger()

    async def run():
        async with endpoints(quic_logger=logger) as (server, client, address):
            await talked_before(client, server, address)
            assert frames_in_0rtt_packets(logger) == []

            link = await client.connect(*address, hello=b"me", early=[RESUME])
            accepted = await asyncio.wait_for(server.accept(), 2)
            assert link.session_resumed and link.early_data_accepted
            assert accepted.early_data_accepted
            # The frame reached the server's application before its handshake completed,
            # carried in a 0-RTT packet with the hello.
            assert accepted.frames_before_handshake == 1
            assert frames_in_0rtt_packets(logger) == [2 + len(b"me") + len(RESUME)]
            assert await accepted.receive() == RESUME[4:]
            assert server.server_tickets.used == 1

    asyncio.run(run())


def test_a_server_that_lost_its_tickets_takes_the_early_frame_after_the_handshake_once():
    async def run():
        client, server = QuicEndpoint(FAST), QuicEndpoint(FAST)
        address = await server.listen("127.0.0.1", 0)
        await talked_before(client, server, address)
        await server.close()
        restarted = QuicEndpoint(FAST)  # another process on the same port: no tickets
        await restarted.listen(*address)
        try:
            link = await client.connect(*address, hello=b"me", early=[RESUME])
            accepted = await asyncio.wait_for(restarted.accept(), 2)
            assert not link.early_data_accepted and not link.session_resumed
            assert restarted.server_tickets.unknown == 1
            assert accepted.frames_before_handshake == 0
            assert await accepted.receive() == RESUME[4:]
            await asyncio.sleep(0.2)
            assert accepted.frames_received == 1  # once, though sent twice (0-RTT, 1-RTT)
        finally:
            await client.close()
            await restarted.close()

    asyncio.run(run())


def test_a_replayed_first_flight_delivers_nothing_again():
    settings = replace(FAST, handshake_timeout_s=0.5)

    async def run():
        async with endpoints(settings) as (server, client, address):
            relay = await UdpRelay.start(address)
            try:
                await talked_before(client, server, relay.address)
                relay.record = True  # the client's first flight, until the server answers
                link = await client.connect(*relay.address, hello=b"me", early=[RESUME])
                accepted = await asyncio.wait_for(server.accept(), 2)
                assert link.early_data_accepted and accepted.frames_before_handshake == 1
                flight = relay.recorded
                assert flight and all(len(d) >= 1200 for d in flight)

                # While the connection lives, the flight reaches it (its connection ID) and
                # is dropped there: packets already received, keys already discarded.
                await send_raw(flight, address)
                await asyncio.sleep(0.2)
                assert accepted.frames_received == 1 and len(server.links) == 1

                # Once it is gone, the flight opens a new connection, whose ticket was used:
                # a full handshake with nobody, no 0-RTT keys, nothing delivered; cut when
                # no hello comes.
                link.close()
                await asyncio.wait_for(accepted.wait_closed(), 2)
                await eventually(lambda: not server.links)
                await send_raw(flight, address)
                await eventually(lambda: server.cut["handshake timeout"] == 1)
                assert server.server_tickets.unknown == 1
                assert server._accepted.empty()
                assert accepted.frames_received == 1
            finally:
                relay.close()

    asyncio.run(run())


def test_with_tickets_usable_twice_a_replay_would_be_delivered_again():
    """What single-use tickets prevent: a server that let a ticket be used again would
    decrypt the replayed 0-RTT data and hand its frame up a second time, on a connection
    that never completes its handshake. The frames layer above must then refuse it itself,
    as the L2 RESUME does (its replay cache and timestamp window, docs/handshake.md)."""
    settings = replace(FAST, handshake_timeout_s=0.5)

    async def run():
        async with endpoints(settings) as (server, client, address):
            reusable = server.server_tickets._tickets
            server.server_tickets.take = reusable.get  # not popped: usable again
            relay = await UdpRelay.start(address)
            try:
                await talked_before(client, server, relay.address)
                relay.record = True
                link = await client.connect(*relay.address, hello=b"me", early=[RESUME])
                accepted = await asyncio.wait_for(server.accept(), 2)
                link.close()
                await asyncio.wait_for(accepted.wait_closed(), 2)
                await eventually(lambda: not server.links)

                await send_raw(relay.recorded, address)
                replayed = await asyncio.wait_for(server.accept(), 2)
                assert await replayed.receive() == RESUME[4:]
                assert not replayed.established and replayed.frames_before_handshake == 1
                await asyncio.wait_for(replayed.wait_closed(), 2)
                assert server.cut["handshake timeout"] == 1
            finally:
                relay.close()

    asyncio.run(run())
