"""A node writes to every connection through a pipe (transports/pipes.py). Over QUIC, frames
that find the link's send buffer full wait in the pipe and go in the order written, once
there is room; closing the pipe drops them. Real aioquic links on loopback."""

from __future__ import annotations

import asyncio
import os

from l2_session.transports.pipes import QuicPipe
from l2_session.transports.quic import QuicSettings
from quic_support import FAST, endpoints, eventually, frame

SMALL_BUFFER = QuicSettings(housekeeping_s=0.05, handshake_timeout_s=2.0, max_send_buffer=64 * 1024)


def test_frames_beyond_the_send_buffer_wait_in_the_pipe_and_arrive_in_order() -> None:
    async def run() -> None:
        async with endpoints(FAST, SMALL_BUFFER) as (server, client, (host, port)):
            link = await client.connect(host, port, hello=b"did:key:z6Mkpipe")
            accepted = await server.accept()
            pipe = QuicPipe(link)
            bodies = [os.urandom(16 * 1024) for _ in range(40)]  # 640 KiB, buffer 64 KiB
            pipe.write([frame(b) for b in bodies[:20]])
            pipe.write([frame(b) for b in bodies[20:]])
            assert pipe.waiting > 0  # the buffer took only what fits
            got = [await asyncio.wait_for(accepted.receive(), 5) for _ in bodies]
            assert got == bodies
            await eventually(lambda: pipe.waiting == 0)
            assert pipe.kind == "quic" and pipe.peername() == link.peer_address

    asyncio.run(run())


def test_closing_a_pipe_drops_what_waits_and_closes_the_link() -> None:
    async def run() -> None:
        async with endpoints(FAST, SMALL_BUFFER) as (server, client, (host, port)):
            link = await client.connect(host, port, hello=b"did:key:z6Mkpipe")
            accepted = await server.accept()
            pipe = QuicPipe(link)
            pipe.write([frame(os.urandom(16 * 1024)) for _ in range(40)])
            assert pipe.waiting > 0
            pipe.close()
            assert pipe.waiting == 0 and pipe.closing()
            await asyncio.wait_for(accepted.wait_closed(), 5)

    asyncio.run(run())
