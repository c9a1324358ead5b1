"""A TCP node's connections, on the event loop (tcp.py is the node): from a socket's bytes to
frames waiting for the worker, and back from the worker's bytes to the socket — and how much
and how long a connection may hold the node.

A connection opens with the connecting node's DID (``u16 length | UTF-8``): a claim, which the
worker's routing (tcp_worker.py) weighs. Then frames: ``u32 length | body`` (frames.py).

Bounds (docs/security.md, "Denial of service"; who is cut first: tcp_bounds.py). Every
connection counts toward ``max_connections`` from the moment it is accepted; at the cap the
least recently active unproven connection this node did not dial is cut to make room, so a
peer that talks gets in however many connections sit idle. Every phase has a deadline that
activity within the phase does not extend: the hello (``hello_timeout_s``), the wait between
frames (``idle_timeout_s``) and a frame from its length prefix to its last byte
(``frame_timeout_s``). Frames being read count against one budget for the node
(``max_partial_bytes``); beyond the frame being read, asyncio's reader stops reading a
connection at twice ``read_limit_bytes``. Frames read and not yet taken by the worker are at
most ``max_frames`` (the node's ``max_batch``) plus the one each connection was reading:
beyond it the connections stop reading until the worker takes the next batch — the time that
wait takes is the node's, not the peer's, and counts against no deadline. A connection reads
at most ``READS_PER_TURN`` buffered frames before it lets the rest of the loop run. A frame for
a connection already closing is not written (``closed_sends``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable

from l2_session.domain.session.core import TRANSPORTS
from l2_session.transports.frames import FrameError, body_length
from l2_session.transports.pipes import QuicPipe, TcpPipe
from l2_session.transports.quic_link import BROKEN, QuicLink
from l2_session.transports.tcp_bounds import NoRoom, Occupancy
from l2_session.transports.tcp_handoff import Link

HELLO_LENGTH = struct.Struct(">H")
DROPPED_KEPT = 64  # reasons for dropped connections kept (the latest)
HELLO_TIMEOUT_S = 5.0  # an accepted connection must name its DID within this
MAX_DID_BYTES = 256  # a did:key is ~56 bytes; a longer claim is refused unread
MAX_CONNECTIONS = 1024  # open connections at once, counted from their accept
# A live session's connection carries a heartbeat or its answer every 30 s (SPEC-018 §5.1):
# four intervals without a frame and the connection carries no live session.
IDLE_TIMEOUT_S = 120.0
FRAME_TIMEOUT_S = 10.0  # from a frame's length prefix to its last byte (128 KiB at 13 KB/s)
MAX_PARTIAL_BYTES = 16 * 1024 * 1024  # frames being read, all connections together
READ_LIMIT_BYTES = 64 * 1024  # asyncio's reader pauses a connection at twice this unread
READS_PER_TURN = 32  # frames a connection reads from its buffer before it lets others run


class Connections:
    """The node's open connections and the frames they read. ``up`` hears of a connection
    whose DID is known (dialled, or its hello read), ``down`` of one that closed after it,
    ``arrived`` of frames added to ``frames``."""

    def __init__(
        self,
        local_did: str,
        identity_key_of: Callable[[str], bytes],
        *,
        up: Callable[[Link], None],
        down: Callable[[Link], None],
        arrived: Callable[[], None],
        max_frames: int,
        max_connections: int,
        hello_timeout_s: float,
        idle_timeout_s: float,
        frame_timeout_s: float,
        max_partial_bytes: int,
        read_limit_bytes: int,
    ) -> None:
        self.local_did = local_did
        self._identity_key_of = identity_key_of
        self._up, self._down, self._arrived = up, down, arrived
        self.max_frames = max_frames
        self.max_connections, self.hello_timeout_s = max_connections, hello_timeout_s
        self.idle_timeout_s, self.frame_timeout_s = idle_timeout_s, frame_timeout_s
        self.read_limit_bytes = read_limit_bytes
        self.occupancy: Occupancy[Link] = Occupancy(max_partial_bytes)
        self.open: set[Link] = set()
        self.frames: list[tuple[Link, bytes]] = []  # read, not yet taken by the worker
        self._room = asyncio.Event()
        self.held = False  # hold(): the node's application is behind
        # Why connections were dropped: the latest few (anyone can open connections), and
        # how many in all.
        self.dropped_connections: deque[str] = deque(maxlen=DROPPED_KEPT)
        self.dropped_count = 0
        self.closed_sends = 0  # frames not written: their connection was closing (peer gone)
        self._readers: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ in
    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._accepted, host, port, limit=self.read_limit_bytes)

    async def dial(self, peer_did: str, host: str, port: int) -> None:
        reader, writer = await self.open_tcp(host, port)
        self.dialled_tcp(peer_did, reader, writer)

    async def open_tcp(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``host``:``port``, not yet the node's (``dialled_tcp``)."""
        reader, writer = await asyncio.open_connection(host, port, limit=self.read_limit_bytes)
        _no_delay(writer)
        return reader, writer

    def dialled_tcp(
        self, peer_did: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A connection from ``open_tcp`` becomes the node's, to ``peer_did``: the hello goes
        out, and it is read and routed to."""
        did = self.local_did.encode()
        writer.write(HELLO_LENGTH.pack(len(did)) + did)
        link = Link(TcpPipe(writer), peer_did, outgoing=True)
        self.open.add(link)
        self._up(link)
        task = asyncio.ensure_future(self._read(link, reader))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _no_delay(writer)
        link = Link(TcpPipe(writer), "", outgoing=False)
        if not self._admit(link):
            return
        # The server runs this handler as its own task; one cancelled at shutdown must end
        # quietly here (asyncio logs the CancelledError of a handler task as an error).
        with contextlib.suppress(asyncio.CancelledError):
            try:
                peer_did = await asyncio.wait_for(self._hello(reader), self.hello_timeout_s)
                self._identity_key_of(peer_did)  # a DID this node cannot use: refused here
            except TimeoutError:
                self.cut(link, f"bad hello: none within {self.hello_timeout_s} s")
                return
            except (asyncio.IncompleteReadError, ConnectionError, FrameError) as error:
                self.cut(link, f"bad hello: {error}")
                return
            except (ValueError, LookupError) as error:  # not UTF-8, or a DID that cannot be used
                self.cut(link, f"bad hello: {error}")
                return
            link.did = peer_did
            self._up(link)
            await self._read(link, reader)

    def _admit(self, link: Link) -> bool:
        """Count ``link`` from its accept. At the cap, cut the least recently active unproven
        connection to make room — refusing the newcomer instead would let connections that
        sit idle lock every peer out; proven and dialled connections are never cut for it."""
        if len(self.open) >= self.max_connections:
            victim = self.occupancy.least_active()
            if victim is None:
                self._dropped(f"refused: {len(self.open)} open, all proven or dialled")
                link.pipe.abort()
                return False
            self.cut(victim, f"{victim.name}: cut for a new connection, the least recently "
                             f"active unproven one of {len(self.open)}")  # fmt: skip
        self.open.add(link)
        self.occupancy.opened(link)
        return True

    @staticmethod
    async def _hello(reader: asyncio.StreamReader) -> str:
        """The DID an accepted connection claims: ``u16 length | UTF-8``, at most
        MAX_DID_BYTES (a slow or oversized hello holds no resources for long)."""
        (n,) = HELLO_LENGTH.unpack(await reader.readexactly(HELLO_LENGTH.size))
        if n > MAX_DID_BYTES:
            raise FrameError(f"DID of {n} bytes claimed, at most {MAX_DID_BYTES}")
        return (await reader.readexactly(n)).decode()

    async def _read(self, link: Link, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        waiting = ""  # what the deadline cuts off, if it passes
        read_in_turn = 0
        try:
            # One deadline per phase, set when the phase begins: bytes trickling in do not
            # move it, so a connection cannot hold a frame (or its slot) open for ever.
            async with asyncio.timeout(None) as deadline:
                while True:
                    if self._full():
                        deadline.reschedule(None)  # the node's wait, not the peer's
                        await self._until_room()
                    deadline.reschedule(loop.time() + self.idle_timeout_s)
                    waiting = f"idle for {self.idle_timeout_s} s"
                    n = body_length(await reader.readexactly(4))
                    deadline.reschedule(loop.time() + self.frame_timeout_s)
                    waiting = f"inside a frame of {n} bytes for {self.frame_timeout_s} s"
                    self.occupancy.reserve(link, n, self._cut_for_room)
                    body = await reader.readexactly(n)
                    self.occupancy.release(link)
                    self.occupancy.active(link)
                    self.frames.append((link, body))
                    self._arrived()
                    read_in_turn += 1
                    if read_in_turn >= READS_PER_TURN:
                        # Frames already buffered are read without waiting: let the other
                        # connections and tasks run between runs of them.
                        read_in_turn = 0
                        await asyncio.sleep(0)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away; its sessions notice through their deadlines
        except TimeoutError:
            self.cut(link, f"{link.did}: {waiting}")
        except NoRoom as error:
            self.cut(link, f"{link.did}: {error}")
        except FrameError as error:
            # A stream that broke framing cannot be resynchronised: drop the connection.
            self._dropped(f"{link.did}: {error}")
        self._forget(link)
        link.pipe.close()

    # ------------------------------------------------------------------ QUIC links
    def accept_quic(self, quic: QuicLink) -> None:
        """A QUIC link a peer dialled (quic.py), its hello arrived: counted and admitted as
        an accepted TCP connection is, then read like one."""
        try:
            peer_did = (quic.hello or b"").decode()
            self._identity_key_of(peer_did)  # a DID this node cannot use: refused here
        except (ValueError, LookupError) as error:
            self._dropped(f"bad hello over QUIC from {quic.peer_address}: {error}")
            quic.close(f"bad hello: {error}", BROKEN)
            return
        link = Link(QuicPipe(quic), peer_did, outgoing=False)
        if self._admit(link):
            self._attach(link, quic)

    def dialled_quic(self, quic: QuicLink, peer_did: str) -> None:
        """A QUIC link this node dialled to ``peer_did`` (at an address it was given)."""
        link = Link(QuicPipe(quic), peer_did, outgoing=True)
        self.open.add(link)
        self._attach(link, quic)

    def _attach(self, link: Link, quic: QuicLink) -> None:
        self._up(link)
        task = asyncio.ensure_future(self._read_quic(link, quic))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _read_quic(self, link: Link, quic: QuicLink) -> None:
        """A QUIC link's frames, as ``_read`` takes a TCP connection's. Its deadlines, the
        frames it may hold and its framing are the QUIC endpoint's (quic_settings.py): a
        frame is taken from the link only when there is room for it here, so a peer nobody
        reads is held back by QUIC's flow control."""
        async for body in quic:  # cancelled: the node is closing, and forgets every link
            await self._until_room()
            self.occupancy.active(link)
            self.frames.append((link, body))
            self._arrived()
        # Closed: by the peer, by QUIC's deadlines, or for breaking its framing (the
        # endpoint counts and says which: QuicEndpoint.closed).
        self._forget(link)

    def _full(self) -> bool:
        return self.held or len(self.frames) >= self.max_frames

    async def _until_room(self) -> None:
        """Until the worker has taken enough frames, and the node is not held."""
        while self._full():
            self._room.clear()
            await self._room.wait()

    def hold(self, held: bool) -> None:
        """Stop reading every connection (``True``) — the application has not taken what
        was delivered — or read on: what the peers send waits in the transports' own flow
        control meanwhile, and their windows hold back the rest."""
        self.held = held
        if not self._full():
            self._room.set()

    def _cut_for_room(self, link: Link) -> None:
        budget = self.occupancy.max_partial_bytes
        self.cut(link, f"{link.name}: cut for room in the {budget} bytes of frames being read")

    def take(self, most: int) -> list[tuple[Link, bytes]]:
        """Up to ``most`` frames read, oldest first, for the worker (a frame whose connection
        was dropped since it was read goes with it); the readers waiting for room go on."""
        taken, self.frames = self.frames[:most], self.frames[most:]
        if not self._full():
            self._room.set()
        return [(link, body) for link, body in taken if link in self.open]

    # ------------------------------------------------------------------ out
    def write(self, link: Link, data: list[bytes]) -> None:
        if link.pipe.closing():
            # The peer went away and its reader has not noticed yet: lost, as on a network
            # (asyncio would log a warning for every such write).
            self.closed_sends += len(data)
        else:
            link.pipe.write(data)

    def proven(self, link: Link) -> None:
        self.occupancy.proven(link)

    def retire_beside(self, settled: Link) -> None:
        """A link check settled ``settled`` as its peer's (link_check.py): the connections
        this node opened to that peer over transports after it in the order close, once what
        was written on them is out. Not counted as dropped."""
        later = TRANSPORTS[TRANSPORTS.index(settled.kind) + 1 :]
        for link in [k for k in self.open if k.did == settled.did and k.outgoing]:
            if link.kind in later:
                self._forget(link)
                link.pipe.close()

    def drop(self, link: Link, why: str) -> None:
        """A frame broke ``link``'s framing (the worker found it): it cannot be
        resynchronised."""
        if link in self.open:
            self._dropped(why)
            self._forget(link)
            link.pipe.close()

    def cut(self, link: Link, why: str) -> None:
        """Close ``link`` at once, discarding what it has not sent (a peer that does not read
        must not keep it open), and say why — once."""
        if link not in self.open:
            return
        self._dropped(why)
        self._forget(link)
        link.pipe.abort()

    def _dropped(self, why: str) -> None:
        self.dropped_connections.append(why)
        self.dropped_count += 1

    def _forget(self, link: Link) -> None:
        self.occupancy.closed(link)
        if link in self.open:
            self.open.discard(link)
            if link.did:  # the worker heard of it: it stops routing to it
                self._down(link)

    async def drain(self, timeout_s: float) -> None:
        """Until what was written on every open connection is out (on QUIC: acknowledged),
        or ``timeout_s`` passed (a peer that went silent acknowledges nothing)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(not link.pipe.closing() and link.pipe.unsent() for link in self.open):
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        """Stop reading, close every connection."""
        for task in self._readers:
            task.cancel()
        for task in list(self._readers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in self.open:
            link.pipe.close()
        self.open.clear()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    # Handshake messages are small and latency-bound: do not let Nagle hold them back.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
