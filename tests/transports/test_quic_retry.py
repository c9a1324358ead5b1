"""Address validation with Retry (transports/quic.py, RFC 9000 §8.1.2): while
``retry_above`` connections or more are open (0: always), an Initial without a token gets a
Retry and leaves no state; a client that can receive at its address comes back with the
token and connects; a token is good only at the address it was sent to."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from l2_session.transports.quic import QuicEndpoint, QuicSettings
from l2_session.transports.quic_settings import ALPN
from quic_support import FAST, eventually, frame

ALWAYS = QuicSettings(housekeeping_s=0.05, handshake_timeout_s=2.0, retry_above=0)


class Socket(asyncio.DatagramProtocol):
    """A bare UDP socket that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)


async def bare_socket() -> Socket:
    loop = asyncio.get_running_loop()
    _, sock = await loop.create_datagram_endpoint(Socket, local_addr=("127.0.0.1", 0))
    return sock


def client_initial(address: tuple[str, int]) -> tuple[QuicConnection, list[bytes]]:
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    connection = QuicConnection(configuration=config)
    connection.connect(address, now=time.time())
    return connection, [data for data, _ in connection.datagrams_to_send(now=time.time())]


def test_with_retry_a_client_connects_after_proving_its_address() -> None:
    async def run() -> None:
        server, client = QuicEndpoint(ALWAYS), QuicEndpoint(FAST)
        try:
            address = await server.listen("127.0.0.1", 0)
            link = await client.connect(*address, hello=b"did:key:z6Mkretry")
            accepted = await asyncio.wait_for(server.accept(), 2)
            await link.send(frame(b"through"))
            assert await asyncio.wait_for(accepted.receive(), 2) == b"through"
            assert server.retries == 1 and len(server.links) == 1
        finally:
            await client.close()
            await server.close()

    asyncio.run(run())


def test_an_initial_from_an_address_that_never_answers_leaves_no_state() -> None:
    async def run() -> None:
        server = QuicEndpoint(ALWAYS)
        spoofer = await bare_socket()
        try:
            address = await server.listen("127.0.0.1", 0)
            _, initials = client_initial(address)
            for data in initials:
                spoofer.transport.sendto(data, address)
            await eventually(lambda: server.retries == 1)
            assert not server.links  # nothing kept for it
            (retry,) = spoofer.received
            assert len(retry) < sum(map(len, initials))  # a Retry is smaller: no amplification
        finally:
            spoofer.transport.close()
            await server.close()

    asyncio.run(run())


def test_a_token_is_good_only_at_the_address_it_was_sent_to() -> None:
    async def run() -> None:
        server = QuicEndpoint(ALWAYS)
        honest, elsewhere = await bare_socket(), await bare_socket()
        try:
            address = await server.listen("127.0.0.1", 0)
            connection, initials = client_initial(address)
            for data in initials:
                honest.transport.sendto(data, address)
            await eventually(lambda: len(honest.received) == 1)
            connection.receive_datagram(
                honest.received[0], address, now=time.time()
            )  # the Retry: the client's next Initial carries its token
            with_token = [data for data, _ in connection.datagrams_to_send(now=time.time())]
            assert with_token
            for data in with_token:  # from another address: refused, nothing kept
                elsewhere.transport.sendto(data, address)
            await eventually(lambda: len(elsewhere.received) >= 1)
            assert not server.links
            assert server.dropped["Initial with a token not for its address"] >= 1
            for data in with_token:  # from the address the Retry went to: a connection
                honest.transport.sendto(data, address)
            await eventually(lambda: len(server.links) == 1)
        finally:
            for sock in (honest, elsewhere):
                sock.transport.close()
            await server.close()

    asyncio.run(run())


def test_below_retry_above_no_retry_and_no_extra_round_trip() -> None:
    async def run() -> None:
        server, client = QuicEndpoint(FAST), QuicEndpoint(FAST)
        try:
            assert FAST.retry_above == 512
            address = await server.listen("127.0.0.1", 0)
            await client.connect(*address, hello=b"did:key:z6Mkretry")
            await asyncio.wait_for(server.accept(), 2)
            assert server.retries == 0
        finally:
            await client.close()
            await server.close()

    asyncio.run(run())


def test_retry_above_is_checked() -> None:
    for wrong in (-1, 1.5, True):
        try:
            QuicSettings(retry_above=wrong)  # type: ignore[arg-type]
        except ValueError as error:
            assert "retry_above" in str(error)
        else:
            raise AssertionError(f"retry_above={wrong!r} taken")
