"""Frames through a QUIC link (transports/quic.py) against bare aioquic streams carrying the
same bytes, and the time to connect.

Throughput: one client sends 8 MB (2 MB with --quick) of frames of one size to a server over
loopback, one process and one event loop for both ends (so both ends' work shares one core),
timed from the first send to the last frame received. Through the link: ``QuicLink.send``
(with its backpressure) and ``QuicLink.receive`` (the frames reassembled, credit granted as
they are taken). Bare: aioquic's own asyncio API (``connect``/``serve``, a stream's writer and
reader), the same prefixed frames written as they are and read back as bytes, not
reassembled — the floor a layer on aioquic can reach. The two alternate, fresh each round;
the median of the per-round ratios is reported.

Connect time, from the call to ``QuicEndpoint.connect`` with a first frame of 100 bytes (an
L2 RESUME's size) to the client's handshake completing, and to that frame reaching the
server's application: with a full handshake (no ticket) and resumed (a ticket, the hello and
the frame in 0-RTT); p50 and p99.

Memory: what Python allocates for one end of an established link that carries nothing
(tracemalloc), aioquic's connection included; the kernel's socket buffers are not counted.

Run alone with ``python -m benchmarks.bench_quic_link [--quick]``.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import statistics
import sys
import time
import tracemalloc
from typing import Any

from aioquic.asyncio import connect, serve
from aioquic.quic.configuration import QuicConfiguration
from l2_session.transports.frames import LENGTH
from l2_session.transports.quic import QuicEndpoint
from l2_session.transports.quic_settings import ALPN
from l2_session.transports.quic_tls import self_signed_certificate

from benchmarks.common import figure

SIZES = (200, 4096, 65536)  # frame bodies: a short message, a page, the largest message


def _frames(size: int, volume: int) -> tuple[bytes, int]:
    body = b"\x06" * size
    return LENGTH.pack(size) + body, max(1, volume // (size + LENGTH.size))


async def _through_link(size: int, volume: int) -> float:
    """Seconds to move the frames through a link."""
    server, client = QuicEndpoint(), QuicEndpoint()
    address = await server.listen("127.0.0.1", 0)
    try:
        link = await client.connect(*address, hello=b"bench")
        accepted = await server.accept()
        frame, count = _frames(size, volume)

        async def send() -> None:
            for _ in range(count):
                await link.send(frame)

        start = time.perf_counter()
        sender = asyncio.ensure_future(send())
        for _ in range(count):
            await accepted.receive()
        elapsed = time.perf_counter() - start
        await sender
        return elapsed
    finally:
        await client.close()
        await server.close()


async def _through_bare_aioquic(size: int, volume: int) -> float:
    """Seconds to move the same bytes on a bare aioquic stream."""
    frame, count = _frames(size, volume)
    total = len(frame) * count
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()

    async def drain(reader: asyncio.StreamReader) -> None:
        got = 0
        while got < total:
            got += len(await reader.read(1 << 20))
        done.set_result(time.perf_counter())

    server_config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    server_config.certificate, server_config.private_key = self_signed_certificate()
    server = await serve(
        "127.0.0.1",
        0,
        configuration=server_config,
        stream_handler=lambda reader, writer: asyncio.ensure_future(drain(reader)),
    )
    port = server._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    client_config = QuicConfiguration(alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    try:
        async with connect("127.0.0.1", port, configuration=client_config) as protocol:
            _, writer = await protocol.create_stream()
            start = time.perf_counter()
            for _ in range(count):
                writer.write(frame)  # aioquic buffers it all: it has no backpressure
            return await done - start
    finally:
        server.close()


async def _connect_times(n: int, resumed: bool) -> tuple[list[float], list[float]]:
    """(to the handshake completed at the client, to the first frame received by the
    server's application), both from the call to ``connect``, ``n`` times."""
    server = QuicEndpoint()
    address = await server.listen("127.0.0.1", 0)
    client = QuicEndpoint()
    first = LENGTH.pack(100) + b"\x04" * 100  # the size of an L2 RESUME
    handshakes: list[float] = []
    first_frames: list[float] = []
    clock = asyncio.get_running_loop().time  # the clock of link.established_at
    try:
        for i in range(n + 1):
            if not resumed:
                client.client_tickets = type(client.client_tickets)(1)
            start = clock()
            dialling = asyncio.ensure_future(
                client.connect(*address, hello=b"bench", early=[first])
            )
            accepted = await server.accept()
            await accepted.receive()
            first_frame = clock() - start
            link = await dialling
            assert link.established_at is not None
            handshake = link.established_at - start
            if resumed and i and not link.early_data_accepted:
                raise AssertionError("a resumed connect did not use 0-RTT")
            if i:  # the first one, resumed or not, is a full handshake
                handshakes.append(handshake)
                first_frames.append(first_frame)
            while resumed and tuple(address) not in client.client_tickets:
                await asyncio.sleep(0.001)
            link.close()
            await accepted.wait_closed()
        return handshakes, first_frames
    finally:
        await client.close()
        await server.close()


async def _memory_per_link_end(n: int) -> float:
    """Bytes Python allocates for one end of an established, idle link (tracemalloc: the
    two ends of ``n`` links in this process, halved)."""
    server, client = QuicEndpoint(), QuicEndpoint()
    address = await server.listen("127.0.0.1", 0)
    hello = b"did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    try:
        await client.connect(*address, hello=hello)  # imports, caches and the like first
        await server.accept()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            links = []
            for _ in range(n):
                links.append(await client.connect(*address, hello=hello))
                links.append(await server.accept())
            await asyncio.sleep(0.3)  # the tickets and the last acknowledgements
            gc.collect()
            return (tracemalloc.get_traced_memory()[0] - before) / (2 * n)
        finally:
            tracemalloc.stop()
    finally:
        await client.close()
        await server.close()


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def run(quick: bool) -> dict[str, Any]:
    rounds, volume, connects = (2, 2_000_000, 50) if quick else (3, 8_000_000, 200)
    idle_links = 50 if quick else 200
    figures = []
    for size in SIZES:
        ours, bare, ratios = [], [], []
        for _ in range(rounds):
            ours.append(volume / asyncio.run(_through_link(size, volume)))
            bare.append(volume / asyncio.run(_through_bare_aioquic(size, volume)))
            ratios.append(ours[-1] / bare[-1])
        per_frame = size + LENGTH.size
        ratio = statistics.median(ratios)
        figures += [
            figure(
                f"QUIC link, {size} B frames",
                statistics.median(ours) / 1e6,
                "MB/s",
                note=f"{statistics.median(ours) / per_frame:,.0f} frames/s; median of {rounds}",
            ),
            figure(
                f"  bare aioquic stream, the same bytes ({size} B frames)",
                statistics.median(bare) / 1e6,
                "MB/s",
                note=f"{statistics.median(bare) / per_frame:,.0f} frames/s",
            ),
            figure(
                f"  link / bare aioquic, {size} B frames",
                ratio,
                "x",
                target=">= 0.8",
                ok=ratio >= 0.8,
                note="median of the per-round ratios",
            ),
        ]
    for resumed, what in ((False, "full handshake"), (True, "resumed, 0-RTT")):
        handshakes, first_frames = asyncio.run(_connect_times(connects, resumed))
        for times, measured in ((handshakes, "handshake done"), (first_frames, "first frame")):
            for p in (0.5, 0.99):
                figures.append(
                    figure(
                        f"QUIC connect, {what}: {measured}, p{int(p * 100)}",
                        _percentile(times, p) * 1e3,
                        "ms",
                        note=f"{connects} connects on loopback, from the call to connect",
                    )
                )
    per_end = asyncio.run(_memory_per_link_end(idle_links))
    figures.append(
        figure(
            "memory per end of an established idle link",
            per_end / 1024,
            "KiB",
            note=f"tracemalloc over {idle_links} links; aioquic's connection included",
        )
    )
    return {"figures": figures}


if __name__ == "__main__":
    began = time.perf_counter()
    for f in run("--quick" in sys.argv)["figures"]:
        print(f"{f['name']:<56} {f['value']:>10,.3f} {f['unit']:<4} {f['note']}")
    print(f"({time.perf_counter() - began:.1f} s)")
