"""STUN on an asyncio UDP socket: the thin adapter around stun_binding.py's sans-I/O sides.

One ``StunProtocol`` serves a socket: Binding requests go to its ``BindingServer`` (if it
serves), Binding responses to its ``BindingClient``, and datagrams that are not STUN
(``is_stun``) to ``other`` — the QUIC side of a shared port — or are dropped and counted.
Time is the event loop's clock (``loop.time()``, monotonic), given to the client as a value;
one timer handle, set to the client's next deadline, drives retransmission.

    protocol = await open_stun(("0.0.0.0", 4433))                    # answers
    outcome = await protocol.query(("192.0.2.1", 4433))              # asks
    alive = await protocol.is_alive(("192.0.2.1", 4433), deadline=2.0)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, cast

from l2_session.transports.stun import (
    Address,
    MessageClass,
    is_stun,
    message_class_of,
    transport_address,
)
from l2_session.transports.stun_binding import (
    BindingClient,
    BindingFailed,
    BindingOutcome,
    BindingServer,
    BindingSucceeded,
    Retransmission,
)


class StunProtocol(asyncio.DatagramProtocol):
    """A UDP socket that answers Binding requests (``serve``), runs Binding transactions and
    hands every datagram that is not STUN to ``other`` (dropped and counted without one)."""

    def __init__(
        self,
        *,
        serve: bool = True,
        retransmission: Retransmission | None = None,
        software: str | None = None,
        other: Callable[[bytes, Any], None] | None = None,
    ) -> None:
        self.server = BindingServer() if serve else None
        self.client = BindingClient(retransmission, software=software)
        self.other = other
        self.not_stun = 0
        """Datagrams that were not STUN, with no ``other`` to take them."""
        self.unserved_requests = 0
        """Requests that came to a socket that does not serve."""
        self.indications = 0
        self.socket_errors = 0
        """Errors the socket reported (ICMP port unreachable on a connected socket and such)."""
        self._transport: asyncio.DatagramTransport | None = None
        self._waiters: dict[bytes, tuple[asyncio.Future[BindingOutcome], Address]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = asyncio.get_running_loop().create_future()

    # asyncio.DatagramProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not is_stun(data):
            if self.other is not None:
                self.other(data, addr)
            else:
                self.not_stun += 1
            return
        kind = message_class_of(data)
        if kind == MessageClass.REQUEST:
            if self.server is None:
                self.unserved_requests += 1
                return
            answer = self.server.answer(data, addr)
            if answer is not None and self._transport is not None:
                self._transport.sendto(answer, addr)
        elif kind == MessageClass.INDICATION:
            self.indications += 1
        else:
            self.client.receive(data, addr, self._now())
            self._service()

    def error_received(self, exc: Exception) -> None:
        self.socket_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for transaction_id, (waiter, server) in self._waiters.items():
            self.client.cancel(transaction_id)
            if not waiter.done():
                waiter.set_result(BindingFailed(server, "the socket closed"))
        self._waiters.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    # asking

    @property
    def local_address(self) -> tuple[Any, ...]:
        if self._transport is None:
            raise RuntimeError("the socket is not open")
        return cast(tuple[Any, ...], self._transport.get_extra_info("sockname"))

    async def query(
        self, server: Sequence[Any], *, deadline: float | None = None
    ) -> BindingOutcome:
        """Ask ``server`` (an IP address and port) where it sees this socket; retransmits per
        the client's ``Retransmission``, and times out at ``deadline`` seconds if given."""
        if self._transport is None or self._transport.is_closing():
            raise RuntimeError("the socket is not open")
        transaction_id = self.client.start(server, self._now(), deadline=deadline)
        waiter: asyncio.Future[BindingOutcome] = asyncio.get_running_loop().create_future()
        self._waiters[transaction_id] = waiter, transport_address(server)
        self._service()
        try:
            return await waiter
        finally:
            if self._waiters.pop(transaction_id, None) is not None:  # cancelled while waiting
                self.client.cancel(transaction_id)
                self._service()

    async def is_alive(self, peer: Sequence[Any], *, deadline: float) -> bool:
        """Whether ``peer`` answers a Binding request with success within ``deadline`` s."""
        return isinstance(await self.query(peer, deadline=deadline), BindingSucceeded)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            await self._closed

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _service(self) -> None:
        """Send what is due, settle the transactions that ended, set the timer to the next."""
        now = self._now()
        if self._transport is not None and not self._transport.is_closing():
            for datagram, address in self.client.poll(now):
                self._transport.sendto(datagram, address)
        for transaction_id, outcome in self.client.pop_outcomes():
            waiting = self._waiters.pop(transaction_id, None)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result(outcome)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        wake = self.client.next_timer()
        if wake is not None:
            self._timer = asyncio.get_running_loop().call_at(wake, self._service)


async def open_stun(
    local_address: tuple[str, int],
    *,
    serve: bool = True,
    retransmission: Retransmission | None = None,
    software: str | None = None,
    other: Callable[[bytes, Any], None] | None = None,
) -> StunProtocol:
    """A UDP socket bound to ``local_address`` speaking STUN (port 0: any free port)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(
            serve=serve, retransmission=retransmission, software=software, other=other
        ),
        local_addr=local_address,
    )
    return protocol
