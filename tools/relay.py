"""Relays the demo puts between two nodes on loopback, so that it can cut the network as a
real one fails: a UDP relay (QUIC) and a TCP relay (μTCP), each forwarding to one server
address, run on an event loop of their own in a thread.

``partition()`` drops every datagram and cuts every TCP connection (new ones are closed at
once) until ``heal()``; ``cut_udp()`` drops datagrams only, as a firewall that blocks UDP
does. Nothing is rewritten: the relays move bytes or drop them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

Address = tuple[str, int]


class _Udp(asyncio.DatagramProtocol):
    """Datagrams from the client to ``server`` (from an upstream socket) and back."""

    def __init__(self, server: Address) -> None:
        self.server = server
        self.blocked = False
        self.client: Any = None
        self.down: asyncio.DatagramTransport | None = None
        self.up: asyncio.DatagramTransport | None = None
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.down = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client = addr
        if self.blocked or self.up is None:
            self.dropped += 1
            return
        self.up.sendto(data, self.server)

    def answer(self, data: bytes) -> None:
        if self.blocked or self.down is None or self.client is None:
            self.dropped += 1
            return
        self.down.sendto(data, self.client)


class _Answers(asyncio.DatagramProtocol):
    def __init__(self, relay: _Udp) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.answer(data)


class Relays:
    """A UDP and a TCP relay to a node's QUIC and μTCP addresses (``server_quic``,
    ``server_tcp``); ``quic`` and ``tcp`` are the relays' own addresses, to dial."""

    def __init__(self, server_quic: Address, server_tcp: Address) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._udp = _Udp(server_quic)
        self._server_tcp = server_tcp
        self._tcp_blocked = False
        self._pipes: set[asyncio.StreamWriter] = set()
        self.quic, self.tcp = self._call(self._start()).result(timeout=10)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def _start(self) -> tuple[Address, Address]:
        loop = asyncio.get_running_loop()
        down, _ = await loop.create_datagram_endpoint(
            lambda: self._udp, local_addr=("127.0.0.1", 0)
        )
        self._udp.up, _ = await loop.create_datagram_endpoint(
            lambda: _Answers(self._udp), local_addr=("127.0.0.1", 0)
        )
        self._tcp_server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        quic = down.get_extra_info("sockname")[:2]
        tcp = self._tcp_server.sockets[0].getsockname()[:2]
        return (quic[0], quic[1]), (tcp[0], tcp[1])

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_blocked:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._server_tcp)
        except OSError:
            writer.close()
            return
        self._pipes.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self._pipes.discard(writer)

    async def _set(self, udp: bool, tcp: bool) -> None:
        self._udp.blocked = udp
        self._tcp_blocked = tcp
        if tcp:
            for writer in list(self._pipes):
                writer.close()  # both halves of each connection: the TCP link is cut
            self._pipes.clear()

    def partition(self) -> None:
        """Nothing passes, either way, until ``heal``."""
        self._call(self._set(udp=True, tcp=True)).result(timeout=10)

    def cut_udp(self) -> None:
        """Datagrams are dropped (QUIC cannot pass); TCP passes."""
        self._call(self._set(udp=True, tcp=False)).result(timeout=10)

    def heal(self) -> None:
        self._call(self._set(udp=False, tcp=False)).result(timeout=10)

    def close(self) -> None:
        async def stop() -> None:
            self._tcp_server.close()
            for writer in list(self._pipes):
                writer.close()
            for transport in (self._udp.down, self._udp.up):
                if transport is not None:
                    transport.close()

        with contextlib.suppress(Exception):
            self._call(stop()).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
