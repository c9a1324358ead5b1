"""One QUIC connection carrying a node's frames: ``QuicLink``, the asyncio adapter around
aioquic's sans-I/O ``QuicConnection``, and the flow control aioquic leaves out.

A link is one bidirectional stream, opened by the side that dials (stream 0); its bytes are
quic_framing.py's — the dialler's hello, then length-prefixed frames both ways. A stream
other than 0 (which MAX_STREAMS forbids, quic_connection.py), or stream 0 finished or reset,
closes the link.

Backpressure, both ways (aioquic has none of its own):

- **Receiving.** Stream credit is granted as the application *takes* frames (``receive``),
  not as they arrive (quic_connection.py): the peer can have at most ``receive_window`` bytes
  beyond what was taken in this end's memory. A peer whose frames nobody reads is stopped by
  QUIC flow control, not by a growing queue.
- **Sending.** ``send`` waits while the bytes written and not yet acknowledged (aioquic's
  stream send buffer: in flight, waiting for congestion window or for the peer's credit)
  would exceed ``max_send_buffer``. A peer that does not read makes its senders wait.

Frames that arrive before the handshake completes (0-RTT, on the accepting side) are
delivered at once, like any other; ``frames_before_handshake`` counts them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from aioquic.quic import events
from aioquic.quic.connection import NetworkAddress, QuicConnectionState
from l2_session.transports.frames import LENGTH, FrameError
from l2_session.transports.quic_connection import STREAM_ID, FlowControlledConnection
from l2_session.transports.quic_framing import FrameReader, check_frame, hello_bytes
from l2_session.transports.quic_settings import QuicSettings
from l2_session.transports.tcp_bounds import NoRoom

log = logging.getLogger("l2_session.transport.quic")

# Application error codes in CONNECTION_CLOSE (RFC 9000 §20.2 leaves them to the protocol).
DONE = 0x0  # closed by its user
BROKEN = 0x1  # the peer broke the link's framing or stream rules
CUT = 0x2  # a bound or deadline of this end


class LinkClosed(ConnectionError):
    """The link is closed; ``reason`` says by whom and why."""


class Owner(Protocol):
    """What a link tells the endpoint that holds it (quic.py)."""

    def cid_issued(self, link: QuicLink, cid: bytes) -> None: ...
    def cid_retired(self, link: QuicLink, cid: bytes) -> None: ...
    def hello_received(self, link: QuicLink) -> None: ...
    def reserve(self, link: QuicLink, n: int) -> None: ...
    def release(self, link: QuicLink) -> None: ...
    def terminated(self, link: QuicLink) -> None: ...


class _ClientSocket(asyncio.DatagramProtocol):
    """The UDP socket a dialled link owns."""

    def __init__(self, link: QuicLink) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.link.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.link.socket_errors += 1  # ICMP unreachable and such: QUIC's timers decide


class QuicLink:
    """One QUIC connection and its frame stream. Made by ``QuicEndpoint`` (quic.py)."""

    def __init__(
        self,
        connection: FlowControlledConnection,
        settings: QuicSettings,
        owner: Owner,
        *,
        outgoing: bool,
        transport: asyncio.DatagramTransport | None = None,
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.outgoing = outgoing
        self.established = False
        """The QUIC handshake completed."""
        self.established_at: float | None = None
        """When, on the event loop's clock."""
        self.early_data_accepted = False
        """The handshake accepted 0-RTT data (this end sent, or received, its first bytes in
        0-RTT)."""
        self.session_resumed = False
        self.frames_received = 0
        self.frames_before_handshake = 0
        self.socket_errors = 0
        self.close_reason = ""
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._reader = FrameReader(hello=not outgoing)
        self._reserved = 0
        self._queue: deque[bytes] = deque()
        self._outbox: list[bytes] = []  # written, not yet handed to aioquic (_transmit)
        self._outbox_bytes = 0
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._established = self._loop.create_future()
        self._closed = self._loop.create_future()
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_soon: asyncio.Handle | None = None
        now = self._loop.time()
        self.opened_at = self.last_frame_at = self.last_sent_at = now
        self.frame_started_at: float | None = None

    # ------------------------------------------------------------------ what users call
    @property
    def hello(self) -> bytes | None:
        """What the dialler said in its hello (accepting side; ``None`` until it came)."""
        return self._reader.hello if not self.outgoing else None

    @property
    def closed(self) -> bool:
        return self._closing or self._closed.done()

    @property
    def peer_address(self) -> NetworkAddress | None:
        return self.connection.get_peer_address()

    @property
    def send_buffered(self) -> int:
        """Bytes sent and not yet acknowledged."""
        return self._outbox_bytes + self.connection.unacknowledged()

    @property
    def receive_buffered(self) -> int:
        """Bytes held for the application: frames queued and the frame being read."""
        return sum(LENGTH.size + len(body) for body in self._queue) + self._reader.buffered

    async def send(self, frame: bytes) -> None:
        """Send ``frame`` (length prefix and body), once the send buffer has room for it.
        ``FrameError`` for a frame that is malformed or over MAX_FRAME; ``LinkClosed``."""
        check_frame(frame)
        while not self._has_room(len(frame)):
            self._room.clear()
            await self._room.wait()
        self._write(frame)

    def try_send(self, frame: bytes) -> bool:
        """``send`` without waiting: False, and nothing sent, if the buffer has no room."""
        check_frame(frame)
        if not self._has_room(len(frame)):
            return False
        self._write(frame)
        return True

    async def receive(self) -> bytes:
        """The next frame's body (what follows its length prefix), in the order sent.
        Frames that arrived before the link closed are still returned; then ``LinkClosed``."""
        while not self._queue:
            if self.closed:
                raise LinkClosed(self.close_reason)
            self._readable.clear()
            await self._readable.wait()
        body = self._queue.popleft()
        if self.connection.take(LENGTH.size + len(body)):
            self._schedule_transmit()
        return body

    def __aiter__(self) -> QuicLink:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except LinkClosed:
            raise StopAsyncIteration from None

    async def drain(self) -> None:
        """Until every frame sent was acknowledged by the peer. ``close`` discards what was
        not (QUIC's CONNECTION_CLOSE ends the streams where they are): drain first to close
        gracefully."""
        while self.send_buffered:
            if self.closed:
                raise LinkClosed(self.close_reason)
            self._room.clear()
            await self._room.wait()

    async def wait_established(self) -> None:
        await asyncio.shield(self._established)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def close(self, reason: str = "closed", code: int = DONE) -> None:
        """Close the connection (CONNECTION_CLOSE to the peer). Frames already queued can
        still be received; nothing more is sent."""
        if self.closed:
            return
        self._closing = True
        self.close_reason = reason
        self._wake()
        if self.connection.state == QuicConnectionState.FIRSTFLIGHT and not self.outgoing:
            self._terminated(reason)  # nothing decrypted: there is no one to tell
            return
        self.connection.close(error_code=code, reason_phrase=reason)
        self._transmit()

    async def rebind(self, *, new_connection_id: bool = True) -> NetworkAddress:
        """Move a dialled link to a new UDP socket (a new local port), as when a NAT rebinds
        or the host changes networks; the QUIC connection migrates (RFC 9000 §9) and the
        server validates the new path. ``new_connection_id``: use a fresh connection ID on
        the new path, so the two paths cannot be linked by it (RFC 9000 §9.5). Returns the
        new local address."""
        if not self.outgoing or self._transport is None:
            raise RuntimeError("only a dialled link owns its socket and can rebind it")
        old = self._transport
        await self.bind(old.get_extra_info("sockname")[0])
        old.close()
        if new_connection_id:
            self.connection.change_connection_id()
        self.connection.send_ping(0)  # a packet on the new path now, not at the next frame
        self._transmit()
        return self._transport.get_extra_info("sockname")

    # ------------------------------------------------------------------ the endpoint's side
    async def bind(self, local_host: str) -> None:
        """A dialled link: a UDP socket of its own on ``local_host``, any free port."""
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _ClientSocket(self), local_addr=(local_host, 0)
        )
        self._transport = transport

    def abandon(self, reason: str) -> None:
        """Forget the connection at once, without waiting out its closing period (RFC 9000
        §10.2): the endpoint is going away. Call ``close`` first to tell the peer."""
        self._terminated(reason)

    def start(self, addr: NetworkAddress, first: bytes) -> None:
        """A dialled link: start the handshake and write ``first`` (the hello and any early
        frames) at once — in 0-RTT if the connection holds a ticket that allows it."""
        self.connection.connect(addr, now=self._loop.time())
        self.connection.send_stream_data(STREAM_ID, first)
        self._transmit()

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        if self._closed.done():
            return
        try:
            self.connection.receive_datagram(data, addr, now=self._loop.time())
            self._process_events()
        except Exception:  # aioquic's own bug, or ours: this connection goes, not the endpoint
            log.exception("a datagram from %s broke its connection", addr)
            self._terminated("internal error handling a datagram")
            return
        self._transmit()
        # Senders wait until half the buffer is free: they then write in bursts, and aioquic
        # packs their frames into full packets, instead of a packet or two per ACK.
        if self.send_buffered <= self.settings.max_send_buffer // 2:
            self._room.set()

    def keepalive(self, now: float) -> None:
        if now - self.last_sent_at >= self.settings.keepalive_s and not self.closed:
            self.connection.send_ping(0)
            self._transmit()

    # ------------------------------------------------------------------ inside
    def _has_room(self, n: int) -> bool:
        if self.closed:
            raise LinkClosed(self.close_reason)
        buffered = self.send_buffered
        return buffered == 0 or buffered + n <= self.settings.max_send_buffer

    def _write(self, data: bytes) -> None:
        # Frames written in one turn of the loop go to aioquic as one write at the next
        # transmit: one buffer append and one range for all of them.
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        self._schedule_transmit()

    def _schedule_transmit(self) -> None:
        if self._transmit_soon is None:
            self._transmit_soon = self._loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        self._transmit_soon = None
        if self._transport is None or self._closed.done():
            return
        if self._outbox and not self._closing:
            self.connection.send_stream_data(STREAM_ID, b"".join(self._outbox))
            self._outbox.clear()
            self._outbox_bytes = 0
        now = self._loop.time()
        datagrams = self.connection.datagrams_to_send(now=now)
        for data, addr in datagrams:
            self._transport.sendto(data, addr)
        if datagrams:
            self.last_sent_at = now
        timer_at = self.connection.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._on_timer)
        self._timer_at = timer_at

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        try:
            self.connection.handle_timer(now=self._loop.time())
            self._process_events()
        except Exception:
            log.exception("a timer broke its connection")
            self._terminated("internal error handling a timer")
            return
        self._transmit()

    def _process_events(self) -> None:
        while (event := self.connection.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                if event.stream_id != STREAM_ID:
                    self._broken(f"data on stream {event.stream_id}; a link has stream 0 only")
                    return
                self._stream_data(event.data)
                if event.end_stream:
                    self._broken("the peer ended the link's stream")
            elif isinstance(event, events.StreamReset | events.StopSendingReceived):
                self._broken(f"the peer stopped stream {event.stream_id} (code {event.error_code})")
            elif isinstance(event, events.HandshakeCompleted):
                self.established, self.established_at = True, self._loop.time()
                self.connection.handshake_done()
                self.early_data_accepted = event.early_data_accepted
                self.session_resumed = event.session_resumed
                if not self._established.done():
                    self._established.set_result(None)
            elif isinstance(event, events.ConnectionIdIssued):
                self._owner.cid_issued(self, event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                self._owner.cid_retired(self, event.connection_id)
            elif isinstance(event, events.ConnectionTerminated):
                by = "this end" if self._closing else "the peer"
                self._terminated(self.close_reason or f"closed by {by}: {event.reason_phrase}")

    def _stream_data(self, data: bytes) -> None:
        if self.closed:
            return
        had_hello = self._reader.hello is not None
        try:
            bodies = self._reader.feed(data)
        except FrameError as error:
            self._broken(str(error))
            return
        now = self._loop.time()
        if not had_hello and self._reader.hello is not None:
            self.connection.take(2 + len(self._reader.hello))
            self._owner.hello_received(self)
        if bodies:
            self._queue.extend(bodies)
            self.frames_received += len(bodies)
            if not self.established:
                self.frames_before_handshake += len(bodies)
            self.last_frame_at = now
            self._readable.set()
        in_progress = self._reader.frame_in_progress
        if bodies or in_progress != self._reserved:
            self.frame_started_at = now if in_progress else None
            try:
                if in_progress:
                    self._owner.reserve(self, in_progress)
                else:
                    self._owner.release(self)
            except NoRoom as error:
                self.close(str(error), CUT)
                return
            self._reserved = in_progress

    def _broken(self, why: str) -> None:
        self.close(why, BROKEN)

    def _wake(self) -> None:
        self._readable.set()
        self._room.set()

    def _terminated(self, reason: str) -> None:
        if self._closed.done():
            return
        self.close_reason = self.close_reason or reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transmit_soon is not None:
            self._transmit_soon.cancel()
            self._transmit_soon = None
        if self.outgoing and self._transport is not None:
            self._transport.close()
        self._closed.set_result(None)
        if not self._established.done():
            self._established.set_exception(LinkClosed(self.close_reason))
            self._established.exception()  # retrieved: no "never retrieved" warning
        self._wake()
        self._owner.terminated(self)


def first_flight(hello: bytes, early: list[bytes]) -> bytes:
    """What a dialled link writes before the handshake completes."""
    for frame in early:
        check_frame(frame)
    return hello_bytes(hello) + b"".join(early)
