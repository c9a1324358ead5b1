"""One end of a floor for the floors suite (bench_floors.py): the same frames a session's bulk
phase carries — ``COUNT`` messages of ``SIZE`` bytes, each length-prefixed — over a bare
transport, with nothing of a session: no ledger, no acknowledgement, no window.

``python -m benchmarks.floor_stream server KIND COUNT SIZE`` prints ``{"port": ...}``, takes
one connection, and prints ``{"done": T}`` (``time.monotonic``) when the last frame is read.
``python -m benchmarks.floor_stream client KIND PORT COUNT SIZE`` prints ``{"start": T}``
just before the first frame is written, and writes them all. KIND:

- ``aioquic``: one aioquic stream (its own asyncio API, the certificate and ALPN of the
  node's links, certificates unchecked), the frames written as they are;
- ``tcp-sealed``: asyncio TCP with ``TCP_NODELAY``, each frame's body sealed with
  ChaCha20-Poly1305 (a counter nonce, as the session channel seals) and opened at the
  server — the cryptography a session over μTCP does per message, and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import sys
import time
from typing import Any

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from l2_session.transports.quic_settings import ALPN
from l2_session.transports.quic_tls import self_signed_certificate

KEY = bytes(range(32))  # a fixed key: this measures the sealing's cost, not its secrecy
LENGTH = struct.Struct(">I")
TAG = 16


def say(**what: Any) -> None:
    print(json.dumps(what), flush=True)


def nonce(counter: int) -> bytes:
    return b"\x00" * 4 + counter.to_bytes(8, "big")


# ---------------------------------------------------------------------------- aioquic
class _Counting(QuicConnectionProtocol):
    expected = 0
    done: asyncio.Future[float] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = 0

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.received += len(event.data)
            done = type(self).done
            if self.received >= type(self).expected and done is not None and not done.done():
                done.set_result(time.monotonic())


async def quic_server(expected: int) -> None:
    certificate, key = self_signed_certificate()
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    config.certificate, config.private_key = certificate, key
    _Counting.expected = expected
    _Counting.done = asyncio.get_running_loop().create_future()
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=_Counting)
    say(port=server._transport.get_extra_info("sockname")[1])  # aioquic names no accessor
    say(done=await _Counting.done)
    server.close()


async def quic_client(port: int, frames: list[bytes]) -> None:
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    async with connect("127.0.0.1", port, configuration=config) as client:
        _, writer = await client.create_stream()
        say(start=time.monotonic())
        for frame in frames:
            writer.write(frame)
            await writer.drain()
        await asyncio.sleep(30)  # until the server has it all (the suite stops this process)


# ---------------------------------------------------------------------------- tcp-sealed
async def tcp_server(count: int) -> None:
    aead = ChaCha20Poly1305(KEY)
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in range(count):
            (size,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            aead.decrypt(nonce(n), await reader.readexactly(size), None)
        done.set_result(time.monotonic())
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    say(port=server.sockets[0].getsockname()[1])
    say(done=await done)
    server.close()


async def tcp_client(port: int, count: int, size: int) -> None:
    aead = ChaCha20Poly1305(KEY)
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = b"b" * size
    say(start=time.monotonic())
    for n in range(count):
        sealed = aead.encrypt(nonce(n), body, None)
        writer.write(LENGTH.pack(len(sealed)) + sealed)
        await writer.drain()
    await asyncio.sleep(30)


def main(argv: list[str]) -> None:
    role, kind = argv[1], argv[2]
    if role == "server":
        count, size = int(argv[3]), int(argv[4])
        if kind == "aioquic":
            asyncio.run(quic_server(count * (LENGTH.size + size)))
        else:
            asyncio.run(tcp_server(count))
        return
    port, count, size = int(argv[3]), int(argv[4]), int(argv[5])
    if kind == "aioquic":
        frames = [LENGTH.pack(size) + b"b" * size for _ in range(count)]
        asyncio.run(quic_client(port, frames))
    else:
        asyncio.run(tcp_client(port, count, size))


if __name__ == "__main__":
    main(sys.argv)
