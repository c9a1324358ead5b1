"""QUIC links for a node (aioquic): one endpoint that listens, dials, and bounds both.

    endpoint = QuicEndpoint()
    host, port = await endpoint.listen("0.0.0.0", 4433)        # STUN answered on it too
    link = await endpoint.accept()                             # link.hello: the dialler's
    link = await endpoint.connect("192.0.2.1", 4433, hello=did, early=[resume_frame])
    await link.send(frames.encode(frame))                      # waits while the buffer is full
    body = await link.receive()                                # what follows the prefix
    await endpoint.close()

A link carries what a TCP connection carries (quic_framing.py): the dialler's hello, then
length-prefixed frames both ways, on one QUIC stream; quic_link.py holds the link and its
flow control. The listening UDP socket is shared with STUN (``StunProtocol(other=...)``,
docs/transports.md "STUN shares the QUIC port"); each dialled link has a UDP socket of its
own, so it can move to a new one (``QuicLink.rebind``) while the connection lives on.

0-RTT. A dial to an address this endpoint has talked to before uses the session ticket it
got then (quic_tls.py), and the hello and ``early`` frames go in the first flight, before the
handshake completes; ``link.early_data_accepted`` says whether the server took them. If it
did not (a ticket it no longer holds), they are sent again once the handshake completes:
either way they arrive once.

Bounds (quic_settings.py). Connections per endpoint, counted from the first datagram that
decrypts; at the cap the least recently active accepted connection that is not kept
(``keep``) is cut to make room — dialled ones never are — as over TCP (tcp_bounds.py). An
Initial that does not decrypt leaves no state. Datagrams that are not QUIC, for no known
connection, or an Initial under 1200 bytes (RFC 9000 §14.1) are dropped unread and counted
in ``dropped``; links this end cut, in ``cut``, with the latest reasons in ``closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter, deque
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnectionState
from aioquic.quic.logger import QuicLogger
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from l2_session.transports.quic_connection import (
    FlowControlledConnection,
    header_of,
    invalid_token_close,
)
from l2_session.transports.quic_link import CUT, LinkClosed, QuicLink, first_flight
from l2_session.transports.quic_settings import QuicSettings
from l2_session.transports.quic_tls import (
    ClientTickets,
    ServerTickets,
    configuration,
    self_signed_certificate,
)
from l2_session.transports.stun_udp import StunProtocol
from l2_session.transports.tcp_bounds import Occupancy

CLOSED_KEPT = 64  # reasons for closed links kept (the latest)

__all__ = ["LinkClosed", "QuicEndpoint", "QuicLink", "QuicSettings"]


class QuicEndpoint:
    """A node's QUIC side: a listening socket (``listen``), dialled links (``connect``), one
    set of bounds and one ticket store for all of them."""

    def __init__(
        self,
        settings: QuicSettings | None = None,
        *,
        quic_logger: QuicLogger | None = None,
        tickets_path: str | Path | None = None,
    ) -> None:
        self.settings = settings or QuicSettings()
        self.quic_logger = quic_logger  # aioquic's qlog of every connection, for debugging
        self.certificate = self_signed_certificate()
        self.server_tickets = ServerTickets(self.settings.max_server_tickets)
        # Kept in ``tickets_path`` if given: a restarted node resumes TLS in 0-RTT (quic_tls.py).
        self.client_tickets = ClientTickets(self.settings.max_client_tickets, tickets_path)
        self.occupancy: Occupancy[QuicLink] = Occupancy(self.settings.max_partial_bytes)
        self.links: set[QuicLink] = set()
        self.stun: StunProtocol | None = None
        """The listening socket's STUN side: it answers Binding requests and can ask them."""
        self.dropped: Counter[str] = Counter()
        """Datagrams dropped before any connection read them, by reason."""
        self.cut: Counter[str] = Counter()
        """Links this end closed for a bound or a deadline, by which."""
        self.closed: deque[str] = deque(maxlen=CLOSED_KEPT)
        """Why links closed, the latest few."""
        self.retries = 0
        """Retries sent: Initials answered with address validation first."""
        self._retry = QuicRetryTokenHandler()  # a fresh key per endpoint
        self._server_config: QuicConfiguration | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._routes: dict[bytes, QuicLink] = {}  # connection id -> accepted link
        self._cids: dict[QuicLink, set[bytes]] = {}
        self._accepted: asyncio.Queue[QuicLink] = asyncio.Queue()
        self._housekeeping: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ listening
    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Accept connections on ``host``:``port`` (0: any free port); the address bound."""
        if self._transport is not None:
            raise RuntimeError("the endpoint already listens")
        loop = asyncio.get_running_loop()
        self._server_config = configuration(
            self.settings, is_client=False, certificate=self.certificate
        )
        self._server_config.quic_logger = self.quic_logger
        transport, stun = await loop.create_datagram_endpoint(
            lambda: StunProtocol(other=self._datagram), local_addr=(host, port)
        )
        self._transport, self.stun = transport, stun
        self._start_housekeeping()
        return cast(tuple[str, int], self._transport.get_extra_info("sockname")[:2])

    @property
    def address(self) -> tuple[str, int] | None:
        if self._transport is None:
            return None
        return cast(tuple[str, int], self._transport.get_extra_info("sockname")[:2])

    async def accept(self) -> QuicLink:
        """The next accepted link whose hello has arrived (maybe in 0-RTT, before the
        handshake completed)."""
        while True:
            link = await self._accepted.get()
            if not link.closed:
                return link

    def keep(self, link: QuicLink) -> None:
        """Never cut ``link`` to make room (its peer proved who it is, say)."""
        self.occupancy.proven(link)

    def _datagram(self, data: bytes, addr: NetworkAddress) -> None:
        assert self._server_config is not None and self._transport is not None
        try:
            header = header_of(data, self._server_config.connection_id_length)
        except ValueError:
            self.dropped["not QUIC"] += 1
            return
        link = self._routes.get(header.destination_cid)
        if link is not None:
            link.datagram_received(data, addr)
            return
        versions = self._server_config.supported_versions
        if header.version is not None and header.version not in versions:
            # RFC 9000 §6.1, §14.1: answer only a datagram as large as an Initial must be,
            # and never a Version Negotiation packet (version 0).
            if header.version and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE:
                self._transport.sendto(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=versions,
                    ),
                    addr,
                )
            self.dropped["unsupported version"] += 1
            return
        if header.packet_type != QuicPacketType.INITIAL:
            self.dropped["unknown connection"] += 1
            return
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            self.dropped["Initial under 1200 bytes"] += 1
            return
        validated = self._validated(header, addr)
        if validated is None:
            return  # a Retry (or an INVALID_TOKEN close) went back; nothing is kept
        original_cid, retry_cid = validated
        if not self._room_for_one():
            self.dropped["connections full"] += 1
            return
        connection = FlowControlledConnection(
            receive_window=self.settings.receive_window,
            configuration=self._server_config,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
            session_ticket_fetcher=self.server_tickets.take,
            session_ticket_handler=self.server_tickets.add,
        )
        link = QuicLink(connection, self.settings, self, outgoing=False, transport=self._transport)
        link.datagram_received(data, addr)
        if connection.state == QuicConnectionState.FIRSTFLIGHT:
            self.dropped["Initial that does not decrypt"] += 1
            link.abandon("an Initial that does not decrypt")  # nothing kept
            return
        self.links.add(link)
        self.occupancy.opened(link)
        for cid in (header.destination_cid, connection.host_cid):
            self.cid_issued(link, cid)

    def _validated(self, header: Any, addr: NetworkAddress) -> tuple[bytes, bytes | None] | None:
        """Address validation for a new connection's Initial (RFC 9000 §8.1.2): its
        original destination connection id and, after a Retry, the Retry's source id — or
        None, when this Initial is answered with a Retry or an INVALID_TOKEN close instead.
        A Retry is sent while ``retry_above`` connections or more are open; a token is
        checked whenever an Initial carries one (bound to the address it was sent to, and
        valid for a short while)."""
        assert self._transport is not None
        now = asyncio.get_running_loop().time()
        if header.token:
            try:
                original = self._retry.validate_token(
                    address=addr, destination_cid=header.destination_cid, token=header.token,
                    now=now,
                )  # fmt: skip
            except ValueError:
                if len(self.links) >= self.settings.retry_above:
                    self._transport.sendto(
                        invalid_token_close(header.version, header.destination_cid,
                                            header.source_cid), addr,
                    )  # fmt: skip
                    self.dropped["Initial with a token not for its address"] += 1
                    return None
            else:
                return original, header.destination_cid
        if len(self.links) < self.settings.retry_above:
            return header.destination_cid, None
        retry_cid = os.urandom(8)
        self._transport.sendto(
            encode_quic_retry(
                version=header.version, source_cid=retry_cid, destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=self._retry.create_token(
                    address=addr, original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=retry_cid, now=now,
                ),
            ), addr,
        )  # fmt: skip
        self.retries += 1
        return None

    def _room_for_one(self) -> bool:
        if len(self.links) < self.settings.max_connections:
            return True
        victim = self.occupancy.least_active()
        if victim is None:
            return False
        self._cut(victim, "evicted", f"cut for a new connection ({len(self.links)} open)")
        return True

    # ------------------------------------------------------------------ dialling
    async def connect(
        self, host: str, port: int, *, hello: bytes = b"", early: Sequence[bytes] = ()
    ) -> QuicLink:
        """A link to ``host``:``port`` (an IP address), once the handshake completed. The
        ``hello`` and the ``early`` frames (length prefix and body each) go in the first
        flight: in 0-RTT when a ticket from an earlier connection to that address allows it.
        ``ConnectionError`` if the handshake does not complete within the handshake timeout
        or the endpoint is full of links it may not cut."""
        first = first_flight(hello, list(early))
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, addr = infos[0][0], infos[0][4]
        if not self._room_for_one():
            raise ConnectionError(f"{len(self.links)} links open, none may be cut")
        server = (host, port)
        config = configuration(
            self.settings,
            is_client=True,
            server_name=host,
            session_ticket=self.client_tickets.take(server),
        )
        config.quic_logger = self.quic_logger
        connection = FlowControlledConnection(
            receive_window=self.settings.receive_window,
            configuration=config,
            session_ticket_handler=partial(self.client_tickets.remember, server),
        )
        link = QuicLink(connection, self.settings, self, outgoing=True)
        await link.bind("::" if family == socket.AF_INET6 else "0.0.0.0")
        self.links.add(link)
        self._start_housekeeping()
        link.start(addr, first)
        try:
            async with asyncio.timeout(self.settings.handshake_timeout_s):
                await link.wait_established()
        except (TimeoutError, LinkClosed) as error:
            why = f"no handshake with {host}:{port} within {self.settings.handshake_timeout_s} s"
            if isinstance(error, LinkClosed):
                why = f"handshake with {host}:{port} failed: {error}"
            link.close(why, CUT)
            link.abandon(why)
            raise ConnectionError(why) from None
        except asyncio.CancelledError:  # the caller gave up (a dial raced and lost): no leak
            link.close("dial cancelled", CUT)
            link.abandon("dial cancelled")
            raise
        return link

    # ------------------------------------------------------------------ what links tell
    def cid_issued(self, link: QuicLink, cid: bytes) -> None:
        if not link.outgoing:
            self._routes[cid] = link
            self._cids.setdefault(link, set()).add(cid)

    def cid_retired(self, link: QuicLink, cid: bytes) -> None:
        if self._routes.get(cid) is link:
            del self._routes[cid]
            self._cids[link].discard(cid)

    def hello_received(self, link: QuicLink) -> None:
        self._accepted.put_nowait(link)

    def reserve(self, link: QuicLink, n: int) -> None:
        self.occupancy.reserve(link, n, self._cut_for_room)

    def release(self, link: QuicLink) -> None:
        self.occupancy.release(link)
        self.occupancy.active(link)

    def terminated(self, link: QuicLink) -> None:
        self.links.discard(link)
        self.occupancy.closed(link)
        for cid in self._cids.get(link, ()):
            if self._routes.get(cid) is link:
                del self._routes[cid]
        if link in self._cids or link.outgoing:  # (not an Initial that did not decrypt)
            self.closed.append(link.close_reason)
        self._cids.pop(link, None)

    # ------------------------------------------------------------------ deadlines
    def _start_housekeeping(self) -> None:
        if self._housekeeping is None or self._housekeeping.done():
            self._housekeeping = asyncio.ensure_future(self._housekeep())

    async def _housekeep(self) -> None:
        """Every ``housekeeping_s``: cut links past a deadline, keep the others alive."""
        settings, loop = self.settings, asyncio.get_running_loop()
        while True:
            await asyncio.sleep(settings.housekeeping_s)
            now = loop.time()
            for link in list(self.links):
                if link.closed:
                    continue
                overdue = self._overdue(link, now)
                if overdue is not None:
                    self._cut(link, *overdue)
                else:
                    link.keepalive(now)

    def _overdue(self, link: QuicLink, now: float) -> tuple[str, str] | None:
        """The deadline ``link`` has passed, if any: (which, why)."""
        s = self.settings
        unready = not link.outgoing and (not link.established or link.hello is None)
        if unready and now - link.opened_at > s.handshake_timeout_s:
            return "handshake timeout", f"no handshake and hello in {s.handshake_timeout_s} s"
        if link.frame_started_at is not None and now - link.frame_started_at > s.frame_timeout_s:
            return "frame timeout", f"inside a frame for {s.frame_timeout_s} s"
        if now - link.last_frame_at > s.frame_idle_timeout_s:
            return "frame idle", f"no frame for {s.frame_idle_timeout_s} s"
        return None

    def _cut(self, link: QuicLink, kind: str, why: str) -> None:
        self.cut[kind] += 1
        link.close(why, CUT)

    def _cut_for_room(self, link: QuicLink) -> None:
        budget = self.occupancy.max_partial_bytes
        self._cut(link, "room", f"cut for room in the {budget} bytes of frames being read")

    # ------------------------------------------------------------------ stopping
    async def close(self) -> None:
        """Close every link (each peer is told) and the listening socket."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        for link in list(self.links):
            link.close("the endpoint closed")
            link.abandon("the endpoint closed")
        if self.stun is not None:
            await self.stun.close()
        self._transport = None
