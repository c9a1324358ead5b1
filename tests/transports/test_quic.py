"""QUIC links (transports/quic.py, quic_link.py) on real loopback UDP sockets: frames both
ways, the largest frames, oversized ones refused, backpressure from a peer that does not
read, garbage at the port, the bounds (connections, streams, deadlines), idle timeout and
keep-alive. 0-RTT and migration are in test_quic_0rtt.py and test_quic_migration.py."""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import replace

import pytest
from aioquic.asyncio.client import connect
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from l2_session.transports.frames import LENGTH, MAX_FRAME, FrameError
from l2_session.transports.quic import LinkClosed, QuicEndpoint
from l2_session.transports.quic_link import BROKEN
from l2_session.transports.stun_binding import BindingSucceeded
from l2_session.transports.stun_udp import open_stun
from quic_support import FAST, bare_client, endpoints, eventually, frame, linked, send_raw


def test_frames_go_both_ways_in_order_after_the_hello():
    async def run():
        async with endpoints() as (server, client, address):
            dialled, accepted = await linked(server, client, address, hello=b"did:key:z6Mk")
            assert accepted.hello == b"did:key:z6Mk" and dialled.hello is None
            assert accepted.established and dialled.established
            assert dialled.peer_address == address

            async def talk(link, tag):
                for i in range(50):
                    await link.send(frame(tag + i.to_bytes(2, "big")))

            await asyncio.gather(talk(dialled, b"\x01"), talk(accepted, b"\x02"))
            got_there = [await accepted.receive() for _ in range(50)]
            got_back = [await dialled.receive() for _ in range(50)]
            assert got_there == [b"\x01" + i.to_bytes(2, "big") for i in range(50)]
            assert got_back == [b"\x02" + i.to_bytes(2, "big") for i in range(50)]

            dialled.close("done here")
            await asyncio.wait_for(accepted.wait_closed(), 2)
            assert "done here" in accepted.close_reason
            with pytest.raises(LinkClosed):
                await accepted.receive()
            with pytest.raises(LinkClosed):
                await dialled.send(frame(b"\x01"))

    asyncio.run(run())


def test_the_largest_frames_cross_both_ways_and_a_larger_one_is_refused():
    async def run():
        async with endpoints() as (server, client, address):
            dialled, accepted = await linked(server, client, address)
            bodies = [os.urandom(MAX_FRAME), os.urandom(MAX_FRAME - 1), b"\x05"]
            for body in bodies:
                await dialled.send(frame(body))
                await accepted.send(frame(body))
            assert [await accepted.receive() for _ in bodies] == bodies
            assert [await dialled.receive() for _ in bodies] == bodies

            with pytest.raises(FrameError, match="outside"):
                await dialled.send(frame(b"\x05" * (MAX_FRAME + 1)))
            with pytest.raises(FrameError, match="prefix says"):
                dialled.try_send(LENGTH.pack(10) + b"\x05")
            await dialled.send(frame(b"\x06"))  # the link goes on
            assert await accepted.receive() == b"\x06"

    asyncio.run(run())


def test_a_peer_that_announces_an_oversized_frame_is_cut_and_told():
    async def run():
        async with endpoints() as (server, _client, address), bare_client(address) as peer:
            closed = asyncio.get_running_loop().create_future()
            peer.quic_event_received = lambda e: (
                isinstance(e, events.ConnectionTerminated)
                and not closed.done()
                and closed.set_result(e)
            )
            peer._quic.send_stream_data(0, b"\x00\x02hi")
            peer.transmit()
            link = await asyncio.wait_for(server.accept(), 2)
            peer._quic.send_stream_data(0, LENGTH.pack(MAX_FRAME + 1))
            peer.transmit()
            await asyncio.wait_for(link.wait_closed(), 2)
            assert f"frame length {MAX_FRAME + 1} outside" in link.close_reason
            told = await asyncio.wait_for(closed, 2)
            assert told.error_code == BROKEN and told.frame_type is None  # an application close

    asyncio.run(run())


def test_a_peer_that_does_not_read_makes_the_sender_wait_with_bounded_buffers():
    settings = replace(FAST, receive_window=256 * 1024, max_send_buffer=192 * 1024)

    async def run():
        async with endpoints(settings, settings) as (server, client, address):
            dialled, accepted = await linked(server, client, address)
            body = b"\x05" * 60_000
            sent = 0

            async def flood():
                nonlocal sent
                for _ in range(40):  # 2.4 MB, ten times what both buffers hold
                    await dialled.send(frame(body))
                    sent += 1

            sender = asyncio.ensure_future(flood())
            await asyncio.sleep(0.5)
            assert not sender.done()
            before = sent
            for _ in range(5):
                await asyncio.sleep(0.05)
                assert dialled.send_buffered <= settings.max_send_buffer
                assert accepted.receive_buffered <= settings.receive_window
            assert sent == before < 40  # stalled: nothing read, nothing more sent
            assert not dialled.try_send(frame(body))

            received = [await accepted.receive() for _ in range(40)]
            await asyncio.wait_for(sender, 5)
            assert received == [body] * 40

    asyncio.run(run())


def test_garbage_datagrams_are_dropped_and_counted_and_the_port_serves_on():
    async def run():
        async with endpoints() as (server, client, address):
            version_1 = (1).to_bytes(4, "big")
            garbage = [  # (asyncio does not send an empty datagram)
                b"\x00",
                os.urandom(7),
                b"\x40" + os.urandom(30),  # a short header for no connection
                long_header(version_1, 1200),  # an Initial that does not decrypt
                long_header(version_1, 100),
                long_header(b"\x0a\x1a\x2a\x3a", 1200),  # a version nobody speaks
                b"\xe0" + version_1 + os.urandom(40),  # a Handshake packet for no connection
                *(os.urandom(n) for n in (1, 20, 100, 1200, 1500) for _ in range(20)),
            ]
            await send_raw(garbage, address)
            await asyncio.sleep(0.2)
            assert sum(server.dropped.values()) == len(garbage), server.dropped
            assert not server.links
            assert server.dropped["Initial that does not decrypt"] >= 1
            assert server.dropped["Initial under 1200 bytes"] >= 1
            assert server.dropped["unsupported version"] >= 1

            dialled, accepted = await linked(server, client, address)
            await dialled.send(frame(b"\x01"))
            assert await accepted.receive() == b"\x01"

    asyncio.run(run())


def long_header(version: bytes, size: int) -> bytes:
    """An Initial (type bits 00) of ``version``, ``size`` bytes, its payload random."""
    head = b"\xc0" + version + b"\x08" + os.urandom(8) + b"\x00" + b"\x00"  # no SCID, token
    n = size - len(head) - 2
    return head + (0x4000 | n).to_bytes(2, "big") + os.urandom(n)


def test_the_quic_port_answers_stun():
    async def run():
        async with endpoints() as (server, _client, address):
            asker = await open_stun(("127.0.0.1", 0), serve=False)
            try:
                outcome = await asker.query(address, deadline=2.0)
            finally:
                await asker.close()
            assert isinstance(outcome, BindingSucceeded)
            assert outcome.mapped_address[1] == asker.local_address[1]
            assert server.stun is not None and server.stun.server is not None

    asyncio.run(run())


def test_a_silent_peer_is_closed_by_the_idle_timeout():
    settings = replace(FAST, idle_timeout_s=0.5, keepalive_s=0.2)

    async def run():
        async with endpoints(settings, settings) as (server, client, address):
            dialled, accepted = await linked(server, client, address)
            dialled.abandon("gone without a word")  # its socket closes, nothing is said
            await asyncio.wait_for(accepted.wait_closed(), 3)
            assert "Idle timeout" in accepted.close_reason

    asyncio.run(run())


def test_keepalives_hold_an_idle_link_open_past_the_idle_timeout():
    settings = replace(FAST, idle_timeout_s=0.5, keepalive_s=0.1)

    async def run():
        async with endpoints(settings, settings) as (server, client, address):
            dialled, accepted = await linked(server, client, address)
            await asyncio.sleep(1.5)  # three idle timeouts without a frame
            assert not dialled.closed and not accepted.closed
            await dialled.send(frame(b"\x01"))
            assert await accepted.receive() == b"\x01"

    asyncio.run(run())


def test_at_the_cap_the_least_recently_active_unkept_link_is_cut_then_none():
    settings = replace(FAST, max_connections=2, handshake_timeout_s=0.5)

    async def run():
        async with endpoints(settings, FAST) as (server, client, address):
            first_out, first = await linked(server, client, address, hello=b"first")
            _second_out, second = await linked(server, client, address, hello=b"second")
            await first_out.send(frame(b"\x01"))  # the first is now the more recently active
            assert await first.receive() == b"\x01"
            _, third = await linked(server, client, address, hello=b"third")
            await asyncio.wait_for(second.wait_closed(), 2)
            assert server.cut["evicted"] == 1 and not first.closed

            server.keep(first)
            server.keep(third)
            refused = QuicEndpoint(settings)  # a short handshake timeout for the refused dial
            try:
                with pytest.raises(ConnectionError, match="no handshake .* within 0.5 s"):
                    await refused.connect(*address, hello=b"fourth")
            finally:
                await refused.close()
            assert server.dropped["connections full"] >= 1
            assert not first.closed and not third.closed

    asyncio.run(run())


def test_a_peer_without_alpn_l2s_is_refused_in_the_handshake():
    async def run():
        async with endpoints() as (server, _client, address):
            config = QuicConfiguration(alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE)
            with pytest.raises(ConnectionError):
                async with connect(*address, configuration=config):
                    pass
            await eventually(lambda: not server.links)
            assert "No common ALPN" in server.closed[-1]

    asyncio.run(run())


def test_a_peer_may_open_one_stream_only():
    async def run():
        async with endpoints() as (server, _client, address), bare_client(address) as peer:
            quic = peer._quic
            quic.send_stream_data(0, b"\x00\x01x" + frame(b"\x01"))
            peer.transmit()
            link = await asyncio.wait_for(server.accept(), 2)
            assert await link.receive() == b"\x01"
            assert quic._remote_max_streams_bidi == 1 and quic._remote_max_streams_uni == 0
            quic._remote_max_streams_bidi = 100  # as a peer that ignores MAX_STREAMS would
            quic.send_stream_data(4, b"more")
            peer.transmit()
            await asyncio.wait_for(link.wait_closed(), 2)
            assert not server.links

    asyncio.run(run())


def test_a_link_without_hello_or_inside_a_frame_too_long_is_cut():
    settings = replace(FAST, handshake_timeout_s=0.3, frame_timeout_s=0.3)

    async def run():
        async with endpoints(settings) as (server, _client, address):
            async with bare_client(address):  # the handshake, then nothing
                await eventually(lambda: server.cut["handshake timeout"] == 1)
            async with bare_client(address) as peer:
                peer._quic.send_stream_data(0, b"\x00\x00" + LENGTH.pack(100) + b"part")
                peer.transmit()
                link = await asyncio.wait_for(server.accept(), 2)
                await asyncio.wait_for(link.wait_closed(), 2)
                assert server.cut["frame timeout"] == 1
                assert "inside a frame" in link.close_reason
            assert server.occupancy.partial_bytes == 0

    asyncio.run(run())


def test_a_link_that_carries_no_frame_is_cut_though_keepalives_flow():
    settings = replace(FAST, keepalive_s=0.05, frame_idle_timeout_s=0.4)

    async def run():
        async with endpoints(settings, settings) as (server, client, address):
            dialled, accepted = await linked(server, client, address)
            await asyncio.wait_for(accepted.wait_closed(), 3)
            assert "no frame for 0.4 s" in accepted.close_reason
            await asyncio.wait_for(dialled.wait_closed(), 3)
            assert server.cut["frame idle"] + client.cut["frame idle"] >= 1

    asyncio.run(run())
