"""What the QUIC tests share (importable: pytest puts tests/transports on sys.path): frames,
a pair of endpoints on loopback, a UDP relay that can drop, record and rebind, and a bare
aioquic client that can break the link's rules."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from l2_session.transports.frames import LENGTH
from l2_session.transports.quic import QuicEndpoint, QuicLink, QuicSettings
from l2_session.transports.quic_settings import ALPN

FAST = QuicSettings(housekeeping_s=0.05, handshake_timeout_s=2.0)


def frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def endpoints(
    server_settings: QuicSettings = FAST, client_settings: QuicSettings = FAST, **server: Any
) -> AsyncIterator[tuple[QuicEndpoint, QuicEndpoint, tuple[str, int]]]:
    """(server, client, the server's address), both closed afterwards."""
    listening = QuicEndpoint(server_settings, **server)
    address = await listening.listen("127.0.0.1", 0)
    dialling = QuicEndpoint(client_settings)
    try:
        yield listening, dialling, address
    finally:
        await dialling.close()
        await listening.close()


async def linked(
    server: QuicEndpoint, client: QuicEndpoint, address: tuple[str, int], hello: bytes = b"me"
) -> tuple[QuicLink, QuicLink]:
    """(the dialled link, the accepted one)."""
    dialled = await client.connect(*address, hello=hello)
    accepted = await asyncio.wait_for(server.accept(), 2)
    return dialled, accepted


class UdpRelay(asyncio.DatagramProtocol):
    """Stands between a client and a server: the client sends to ``address``, the relay
    forwards from its upstream socket (``rebind`` moves it to a new port, as a NAT that
    rebinds does), and the server's answers go back to the client. ``drop`` drops everything;
    ``record`` keeps what the client sends (``recorded``) until the server's first answer
    comes: the client's first flight."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.drop = False
        self.record = False
        self.recorded: list[bytes] = []
        self.client: Any = None
        self._downstream: asyncio.DatagramTransport | None = None
        self._upstream: asyncio.DatagramTransport | None = None

    @classmethod
    async def start(cls, server: tuple[str, int]) -> UdpRelay:
        relay = cls(server)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
        await relay.rebind()
        return relay

    @property
    def address(self) -> tuple[str, int]:
        assert self._downstream is not None
        return self._downstream.get_extra_info("sockname")[:2]

    @property
    def upstream_address(self) -> tuple[str, int]:
        assert self._upstream is not None
        return self._upstream.get_extra_info("sockname")[:2]

    async def rebind(self) -> tuple[str, int]:
        """Forward from a new port from now on; the old one is closed."""
        loop = asyncio.get_running_loop()
        old = self._upstream
        self._upstream, _ = await loop.create_datagram_endpoint(
            lambda: _Answers(self), local_addr=("127.0.0.1", 0)
        )
        if old is not None:
            old.close()
        return self.upstream_address

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._downstream = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client = addr
        if self.record:
            self.recorded.append(data)
        if not self.drop and self._upstream is not None:
            self._upstream.sendto(data, self.server)

    def answer(self, data: bytes) -> None:
        self.record = False
        if not self.drop and self.client is not None and self._downstream is not None:
            self._downstream.sendto(data, self.client)

    def close(self) -> None:
        for transport in (self._downstream, self._upstream):
            if transport is not None:
                transport.close()


class _Answers(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.answer(data)


async def send_raw(datagrams: list[bytes], to: tuple[str, int]) -> None:
    """Send ``datagrams`` from a socket of their own, which then stays silent."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    for data in datagrams:
        transport.sendto(data, to)
    await asyncio.sleep(0.05)
    transport.close()


@contextlib.asynccontextmanager
async def bare_client(address: tuple[str, int]) -> AsyncIterator[QuicConnectionProtocol]:
    """An aioquic client speaking ALPN l2s/1 and nothing else: it can break the link's rules
    (no hello, other streams, oversized frames) through ``protocol._quic``."""
    config = QuicConfiguration(alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    async with connect(*address, configuration=config) as protocol:
        yield protocol
