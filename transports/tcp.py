"""A session manager over TCP with asyncio: the thin adapter around the sans-I/O core.

Bytes from a connection become frames (frames.py) for the manager; its ``Send`` outputs are
written to a connection of their peer; its deadlines are served by one timer task asking for
``manager.tick``. Time comes from the caller's timeline (decision 9:
``infrastructure.clock.SessionTimeline`` in a real process).

Two threads (tcp_worker.py). The event loop reads and writes sockets and nothing else; the
manager and the sealed channels — every save, every seal — live on one worker thread, the only
thread that touches them. What the loop collected while the worker was busy (frames from every
connection, the application's sends and commands, a due tick, connections up and down) goes to
the worker as the next batch: one ``receive_each`` for the frames and one ``submit_many`` for
the sends, each one save — one group commit, one fsync at durability ``full`` — however many
connections and sessions they come from. So a busy node batches by itself and an idle one
answers at once; the loop keeps reading while a batch is saved (frames read meanwhile wait for
the next batch), and a slow save stalls no connection's reads or deadlines.

The worker's Python holds the GIL (signing with Ed25519, AEAD and SQLite release it): the
loop gets it back within the interpreter's switch interval, which the node leaves as it is
(5 ms by default; it is the process's setting, not the node's). Measured with the messages
benchmark on two shared cores, a switch interval of 1, 0.5 or 0.2 ms changed neither the
loop's longest stall (5-9 ms at either end) nor latency or throughput beyond run-to-run
noise: during those stalls the loop thread itself ran under 1 ms and the process as a whole
often less than the stall — the loop waited for a core more than for the GIL. A connection
reads at most ``READS_PER_TURN`` buffered frames before it lets the rest of the loop run.

Durability is not weakened by it: what a stage of a batch asks to send is derived after its
save returned and sealed on the worker, and only then handed to the loop, which writes it. No
byte leaves before the save it depends on has committed; a save that fails sends nothing.

Each frame is decided in the order it was read, after the ones before it (a sealed frame can
use keys a handshake frame just before it agreed), and each is answered on the connection it
came in on. Failures that are not the peer's (the ledger failed to save) do not stop the node:
the frames whose handling raised (a batch's, if its save failed) are lost, as on a network,
and their connections read on (``failed_frames``); a tick that raised is retried by the next
one (``failed_ticks``). A connection that breaks the framing is dropped
(``dropped_connections``, the latest few).

The application (all on the loop, none blocking it):

- ``await establish(peer_did)``: a new session's id, its handshake request sent;
- ``await send(session_id, payload)``: returns once the message is durably queued (its
  ``MessageQueued`` saved); sends made in one turn of the loop share one save. When the
  session's window is full (``SessionConfig.send_window`` messages unacknowledged) the send
  waits until an acknowledgement makes room — backpressure — and messages of a session are
  queued in the order their sends were called. A send cancelled while it waits is not
  queued; once the worker has taken it, it is queued or refused whole, never half-saved;
- ``await receive()`` / ``async for message in messages()``: the messages delivered, in
  order (also appended to ``delivered``);
- ``await command(fn)`` / ``query(fn)`` / ``until(condition)``: any other manager call or
  read, run on the worker between batches.

Sealing (sealed.py). Data, DataAck, Heartbeat and HeartbeatAck travel only sealed under the
session's keys; the same frames in clear are refused (``sealed.refused["unsealed"]``).
Handshake and rotation frames travel as they are.

Connections and DIDs. A connection opens with the connecting node's DID (``u16 length |
UTF-8``). That is a claim. A connection is *proven* for a DID once a frame it carried made
the manager take new keys with that DID — an INIT signed by the DID's key and confirmed, a
RESPONSE signed by it, a RESUME MAC under the session's secret — or once it carried a sealed
frame that opened under keys this node agreed with that DID itself (not keys it replayed
from the ledger, whose replay window restarted empty). Routing:

- channel frames go to the DID's proven connection, else to the connection this node opened
  to the DID (it chose the address), never to a connection that only claims the DID (none
  of these: the frame is lost, as on a network);
- a handshake frame answering a frame goes back on the connection that frame came in on;
- other handshake frames (establish, resume, timers) go to the proven connection, else the
  connection this node opened to the DID, else the latest claim.

So an unproven claim never displaces a proven connection, and a connection claiming someone
else's DID gets nothing but answers to what it sent itself. The handshake engine keys
quarantine and rate limits by the source a frame came from (``address_of``): its IPv4
address, or its IPv6 address's /64 (decision 19 in docs/spec-decisions.md).

Bounds (docs/security.md, "Denial of service"; who is cut first: tcp_bounds.py). Every
connection counts toward ``max_connections`` from the moment it is accepted; at the cap the
least recently active unproven connection this node did not dial is cut to make room, so a
peer that talks gets in however many connections sit idle. Every phase has a deadline that
activity within the phase does not extend: the hello (``hello_timeout_s``), the wait between
frames (``idle_timeout_s``) and a frame from its length prefix to its last byte
(``frame_timeout_s``). Frames being read count against one budget for the node
(``max_partial_bytes``); beyond the frame being read, asyncio's reader stops reading a
connection at twice ``read_limit_bytes``. Frames read and not yet decided are at most
``max_batch`` (plus one per connection): beyond it the connections stop reading until the
worker takes the next batch — the time that wait takes is the node's, not the peer's, and
counts against no deadline. A frame for a connection already closing is not written
(``closed_sends``).

Starting and stopping (decisions 16 and 17 in docs/spec-decisions.md). A node made over a
ledger that holds sessions recovers them (``SessionManager.recover``): the sessions that were
live when the last process stopped are recorded as restarted and suspended, and each resumes,
with fresh keys, when a connection to its peer comes up (``connect``, or the peer's hello).
``close()`` stops the node and leaves its sessions resumable; ``close(end_sessions=True)``
closes them first, telling each peer. ``close`` returns once the worker has finished the
batch in hand and stopped: the ledger can be closed after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar
from uuid import UUID

from l2_session.domain.manager.channel import RESERVATION_BLOCK
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session.commands import Deliver, Output
from l2_session.domain.session.errors import WindowFull
from l2_session.domain.session.session import TCP
from l2_session.infrastructure.identity import public_bytes_from_did_key
from l2_session.transports.frames import MAX_FRAME, FrameError, body_length
from l2_session.transports.sealed import SealedFrames
from l2_session.transports.tcp_bounds import NoRoom, Occupancy
from l2_session.transports.tcp_worker import (
    Batch,
    Command,
    Link,
    Message,
    NodeWorker,
    Outcome,
    Report,
)

__all__ = ["Link", "NodeClosed", "TcpNode"]

HELLO_LENGTH = struct.Struct(">H")
TIMER_IDLE_S = 0.05  # the timer task asks for a tick at least this often
DROPPED_KEPT = 64  # reasons for dropped connections kept (the latest)
HELLO_TIMEOUT_S = 5.0  # an accepted connection must name its DID within this
MAX_DID_BYTES = 256  # a did:key is ~56 bytes; a longer claim is refused unread
MAX_CONNECTIONS = 1024  # open connections at once, counted from their accept
MAX_BATCH = 256  # frames (and sends) decided in one save; readers wait beyond it
# A live session's connection carries a heartbeat or its answer every 30 s (SPEC-018 §5.1):
# four intervals without a frame and the connection carries no live session.
IDLE_TIMEOUT_S = 120.0
FRAME_TIMEOUT_S = 10.0  # from a frame's length prefix to its last byte (128 KiB at 13 KB/s)
MAX_PARTIAL_BYTES = 16 * 1024 * 1024  # frames being read, all connections together
READ_LIMIT_BYTES = 64 * 1024  # asyncio's reader pauses a connection at twice this unread
READS_PER_TURN = 32  # frames a connection reads from its buffer before it lets others run
CLOSE_WAIT_S = 5.0  # close(end_sessions=True) waits this long at most for the peers' answers

T = TypeVar("T")


class NodeClosed(Exception):
    """The node was closed before it took this send or command: nothing of it was done."""


class TcpNode:
    def __init__(
        self,
        manager: SessionManager,
        now_us: Callable[[], int],
        *,
        identity_key_of: Callable[[str], bytes] = public_bytes_from_did_key,
        reservation_block: int = RESERVATION_BLOCK,
        max_connections: int = MAX_CONNECTIONS,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
        max_batch: int = MAX_BATCH,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        frame_timeout_s: float = FRAME_TIMEOUT_S,
        max_partial_bytes: int = MAX_PARTIAL_BYTES,
        read_limit_bytes: int = READ_LIMIT_BYTES,
    ) -> None:
        for name, count, least in (
            ("max_connections", max_connections, 1),
            ("max_batch", max_batch, 1),
            ("read_limit_bytes", read_limit_bytes, 1),
            ("max_partial_bytes", max_partial_bytes, MAX_FRAME),  # one largest frame fits
        ):
            if count < least:
                raise ValueError(f"{name} must be >= {least}, got {count}")
        for name, seconds in (
            ("hello_timeout_s", hello_timeout_s),
            ("idle_timeout_s", idle_timeout_s),
            ("frame_timeout_s", frame_timeout_s),
        ):
            if not seconds > 0:
                raise ValueError(f"{name} must be > 0, got {seconds}")
        self.manager, self.now_us = manager, now_us
        self.max_connections, self.hello_timeout_s = max_connections, hello_timeout_s
        self.max_batch = max_batch  # frames per save; 1: a save per frame
        self.idle_timeout_s, self.frame_timeout_s = idle_timeout_s, frame_timeout_s
        self.read_limit_bytes = read_limit_bytes
        self.occupancy: Occupancy[Link] = Occupancy(max_partial_bytes)
        self._identity_key_of = identity_key_of
        manager.transport = TCP  # sessions opened through this node record it (decision 20)
        self.sealed = SealedFrames(
            manager.session_for, identity_key_of, manager.local_did,
            manager.ledger.save, block=reservation_block,
        )  # fmt: skip
        self.worker = NodeWorker(manager, now_us, self.sealed, self._post, self._post_report)
        self.delivered: list[Deliver] = []
        self._received: asyncio.Queue[Deliver] = asyncio.Queue()
        # Why connections were dropped: the latest few (anyone can open connections), and
        # how many in all.
        self.dropped_connections: deque[str] = deque(maxlen=DROPPED_KEPT)
        self.dropped_count = 0
        self.closed_sends = 0  # frames not written: their connection was closing (peer gone)
        self._links: set[Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # Collected for the next batch (see the module's docstring).
        self._inbox: list[tuple[Link, bytes]] = []  # frames read, not yet decided
        self._inbox_room = asyncio.Event()
        self._link_events: list[tuple[Link, bool]] = []
        self._commands: list[Command] = []
        self._waiting: dict[UUID, deque[Message]] = {}  # per session, in the order sent
        self._room: dict[UUID, int | None] = {}  # of sessions with sends waiting
        self._conditions: list[Command] = []
        self._check_conditions = False
        self._tick_wanted = False
        self._tick_done = asyncio.Event()
        # The batch the worker has in hand, if any; what is collected waits for it.
        self._in_hand: Batch | None = None
        self._dispatch_soon = False
        self._idle = asyncio.Event()
        self._idle.set()
        # Decision 16: the sessions the last process left live are recorded as restarted
        # before any frame or timer of this one touches them (the worker starts later).
        manager.recover(now_us())
        self._next_wakeup_us = manager.next_wakeup_us()
        self._wakeup_moved = asyncio.Event()

    # ------------------------------------------------------------------ connections
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        self._start()
        return await asyncio.start_server(self._accepted, host, port, limit=self.read_limit_bytes)

    async def connect(self, peer_did: str, host: str, port: int) -> None:
        self._start()
        reader, writer = await asyncio.open_connection(host, port, limit=self.read_limit_bytes)
        _no_delay(writer)
        did = self.manager.local_did.encode()
        writer.write(HELLO_LENGTH.pack(len(did)) + did)
        link = Link(writer, peer_did, outgoing=True)
        self._links.add(link)
        self._reached(link)
        self._spawn(self._read(link, reader))

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _no_delay(writer)
        link = Link(writer, "", outgoing=False)
        if not self._admit(link):
            return
        # The server runs this handler as its own task; one cancelled at shutdown must end
        # quietly here (asyncio logs the CancelledError of a handler task as an error).
        with contextlib.suppress(asyncio.CancelledError):
            try:
                peer_did = await asyncio.wait_for(self._hello(reader), self.hello_timeout_s)
                self._identity_key_of(peer_did)  # a DID this node cannot use: refused here
            except TimeoutError:
                self._cut(link, f"bad hello: none within {self.hello_timeout_s} s")
                return
            except (asyncio.IncompleteReadError, ConnectionError, FrameError) as error:
                self._cut(link, f"bad hello: {error}")
                return
            except (ValueError, LookupError) as error:  # not UTF-8, or a DID that cannot be used
                self._cut(link, f"bad hello: {error}")
                return
            link.did = peer_did
            self._reached(link)
            await self._read(link, reader)

    def _admit(self, link: Link) -> bool:
        """Count ``link`` from its accept. At the cap, cut the least recently active unproven
        connection to make room — refusing the newcomer instead would let connections that
        sit idle lock every peer out; proven and dialled connections are never cut for it."""
        if len(self._links) >= self.max_connections:
            victim = self.occupancy.least_active()
            if victim is None:
                self._dropped(f"refused: {len(self._links)} open, all proven or dialled")
                link.writer.transport.abort()
                return False
            self._cut(victim, f"{victim.name}: cut for a new connection, the least recently "
                              f"active unproven one of {len(self._links)}")  # fmt: skip
        self._links.add(link)
        self.occupancy.opened(link)
        return True

    def _cut(self, link: Link, why: str) -> None:
        """Close ``link`` at once, discarding what it has not sent (a peer that does not read
        must not keep it open), and say why — once."""
        if link not in self._links:
            return
        self._dropped(why)
        self._forget(link)
        link.writer.transport.abort()

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
                    if len(self._inbox) >= self.max_batch:
                        deadline.reschedule(None)  # the node's wait, not the peer's
                        while len(self._inbox) >= self.max_batch:
                            self._inbox_room.clear()
                            await self._inbox_room.wait()
                    deadline.reschedule(loop.time() + self.idle_timeout_s)
                    waiting = f"idle for {self.idle_timeout_s} s"
                    n = body_length(await reader.readexactly(4))
                    deadline.reschedule(loop.time() + self.frame_timeout_s)
                    waiting = f"inside a frame of {n} bytes for {self.frame_timeout_s} s"
                    self.occupancy.reserve(link, n, self._cut_for_room)
                    body = await reader.readexactly(n)
                    self.occupancy.release(link)
                    self.occupancy.active(link)
                    self._inbox.append((link, body))
                    self._dispatch()
                    read_in_turn += 1
                    if read_in_turn >= READS_PER_TURN:
                        # Frames already buffered are read without waiting: let the other
                        # connections and tasks run between runs of them.
                        read_in_turn = 0
                        await asyncio.sleep(0)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away; its sessions notice through their deadlines
        except TimeoutError:
            self._cut(link, f"{link.did}: {waiting}")
        except NoRoom as error:
            self._cut(link, f"{link.did}: {error}")
        except FrameError as error:
            # A stream that broke framing cannot be resynchronised: drop the connection.
            self._dropped(f"{link.did}: {error}")
        self._forget(link)
        link.writer.close()

    def _cut_for_room(self, link: Link) -> None:
        budget = self.occupancy.max_partial_bytes
        self._cut(link, f"{link.name}: cut for room in the {budget} bytes of frames being read")

    def _reached(self, link: Link) -> None:
        """A connection with ``link.did`` is up: the worker routes to it, and resumes over it
        the sessions a restart left waiting for that peer (NodeWorker._up)."""
        self._link_events.append((link, True))
        self._dispatch()

    def _dropped(self, why: str) -> None:
        self.dropped_connections.append(why)
        self.dropped_count += 1

    def _forget(self, link: Link) -> None:
        self.occupancy.closed(link)
        if link in self._links:
            self._links.discard(link)
            if link.did:  # the worker heard of it: it stops routing to it
                self._link_events.append((link, False))
                self._dispatch()

    def address_of(self, peer_did: str) -> str:
        """Where ``peer_did``'s frames arrive from (``source_of``: its IP address, or its IPv6
        /64): the source the handshake engine keys quarantine and rate limits by
        (``PqxdhKeyExchange(source_of=node.address_of)``). While a frame is handled, the
        connection it came in on, whatever it claims. Called on the worker (by the key
        exchange, inside the manager)."""
        return self.worker.address_of(peer_did)

    def is_proven(self, peer_did: str) -> bool:
        return self.worker.is_proven(peer_did)

    # ------------------------------------------------------------------ batches
    def _start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.worker.start()

    def _dispatch(self) -> None:
        """Hand what was collected to the worker at the end of this turn of the loop (so
        that everything read in the turn goes together) — or, if the worker is busy, once it
        has finished the batch in hand."""
        if self._dispatch_soon or self._in_hand is not None or self._closed:
            return
        assert self._loop is not None
        self._dispatch_soon = True
        self._loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        self._dispatch_soon = False
        if self._in_hand is not None or self._closed:
            return
        batch = Batch(self._link_events, self._commands)
        self._link_events, self._commands = [], []
        frames, self._inbox = self._inbox[: self.max_batch], self._inbox[self.max_batch :]
        # A connection dropped since its frame was read: the frame goes with it.
        batch.frames = [(link, body) for link, body in frames if link in self._links]
        if len(self._inbox) < self.max_batch:
            self._inbox_room.set()
        self._take_messages(batch)
        batch.tick, self._tick_wanted = self._tick_wanted, False
        if not batch and not self._check_conditions:
            return
        batch.conditions, self._check_conditions = list(self._conditions), False
        self._in_hand = batch
        self._idle.clear()
        self.worker.submit(batch)

    def _take_messages(self, batch: Batch) -> None:
        """The sends waiting that have room, oldest first per session (at most max_batch);
        every session with sends waiting is watched: the worker reports its room."""
        for session_id, waiting in list(self._waiting.items()):
            room = self._room.get(session_id)
            take = len(waiting) if room is None else min(room, len(waiting))
            take = min(take, self.max_batch - len(batch.messages))
            for _ in range(take):
                batch.messages.append(waiting.popleft())
            if room is not None:
                self._room[session_id] = room - take
            batch.watch.add(session_id)
            if not waiting:
                del self._waiting[session_id]

    def _post(self, outcome: Outcome) -> None:
        """On the worker: hand a stage's outcome to the loop."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: so is everyone waiting
            self._loop.call_soon_threadsafe(self._apply, outcome)

    def _post_report(self, report: Report) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._finished, report)

    def _apply(self, outcome: Outcome) -> None:
        """On the loop: what a stage of the batch decided, once its saves have returned."""
        for link, why in outcome.dropped:
            if link in self._links:
                self._dropped(why)
                self._forget(link)
                link.writer.close()
        for link in outcome.proven:
            self.occupancy.proven(link)
        if outcome.writes:
            chunks: dict[Link, list[bytes]] = {}
            for link, data in outcome.writes:
                chunks.setdefault(link, []).append(data)
            for link, data_list in chunks.items():
                if link.writer.is_closing():
                    # The peer went away and its reader has not noticed yet: lost, as on a
                    # network (asyncio would log a warning for every such write).
                    self.closed_sends += len(data_list)
                else:
                    link.writer.write(b"".join(data_list))
        for message in outcome.delivered:
            self.delivered.append(message)
            self._received.put_nowait(message)
        held_back: dict[UUID, list[Message]] = {}
        for decided in outcome.decided:
            if isinstance(decided, Message) and isinstance(decided.error, WindowFull):
                if not decided.done.done():  # not cancelled meanwhile: it waits for room
                    held_back.setdefault(decided.session_id, []).append(decided)
                continue
            decided.resolve()
        for session_id, messages in held_back.items():
            waiting = self._waiting.setdefault(session_id, deque())
            waiting.extendleft(reversed(messages))  # before those sent after them
            self._room[session_id] = 0
        self._progress.set()

    def _finished(self, report: Report) -> None:
        """On the loop: the worker is done with the batch in hand."""
        batch, self._in_hand = self._in_hand, None
        assert batch is not None
        self._idle.set()
        self._apply(report.outcome)
        for condition in batch.conditions:
            if condition.done.done():
                continue
            if condition.error is not None:
                condition.done.set_exception(condition.error)
            elif condition.result:
                condition.done.set_result(True)
        for session_id, room in report.room.items():
            if session_id in self._waiting:
                self._room[session_id] = room
            else:
                self._room.pop(session_id, None)
        before, self._next_wakeup_us = self._next_wakeup_us, report.next_wakeup_us
        wake = report.next_wakeup_us
        if wake is not None and (before is None or wake < before):
            self._wakeup_moved.set()  # the timer task sleeps less
        if batch.tick:
            self._tick_done.set()
        self._progress.set()
        if self._collected():
            self._dispatch()

    def _collected(self) -> bool:
        """Whether anything waits for the worker."""
        room = self._room
        sendable = any(room.get(sid) != 0 for sid in self._waiting)
        return bool(
            self._inbox or self._link_events or self._commands or self._tick_wanted
            or sendable or self._check_conditions
        )  # fmt: skip

    # ------------------------------------------------------------------ the application
    async def establish(self, peer_did: str) -> UUID:
        """``SessionManager.establish`` with ``peer_did``: the new session's id, once its
        first events are saved and its handshake request handed to the connection."""

        def establish() -> UUID:
            session_id, outputs = self.manager.establish(peer_did, self.now_us())
            self.perform(outputs)
            return session_id

        return await self.query(establish)

    async def send(self, session_id: UUID, payload: bytes) -> None:
        """Queue ``payload`` on the session; return once its ``MessageQueued`` is saved
        (exactly-once from here on: the session delivers it, across restarts). Waits while
        the session's window is full. Raises the ``SessionError`` that refused it (an
        unknown or closed session, a message too large), ``NodeClosed`` if the node closed
        first. Cancelled while it waits, the message is not queued (see the module)."""
        self._start()
        assert self._loop is not None
        if self._closed:
            raise NodeClosed("the node is closed: nothing more is sent")
        message = Message(session_id, payload, self._loop.create_future())
        self._waiting.setdefault(session_id, deque()).append(message)
        self._dispatch()
        try:
            await message.done
        except asyncio.CancelledError:
            waiting = self._waiting.get(session_id)
            if waiting is not None and message in waiting:
                waiting.remove(message)  # not handed to the worker: not queued
                if not waiting:
                    del self._waiting[session_id]
            raise

    async def receive(self) -> Deliver:
        """The next message delivered to this node (any session), in delivery order."""
        return await self._received.get()

    async def messages(self) -> AsyncIterator[Deliver]:
        """The messages delivered to this node, as they come."""
        while True:
            yield await self._received.get()

    async def query(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the worker between batches (so it may call and read the manager,
        and ``perform`` outputs); its result, or what it raised."""
        self._start()
        assert self._loop is not None
        if self._closed:
            raise NodeClosed("the node is closed")
        command = Command(fn, self._loop.create_future())
        self._commands.append(command)
        self._dispatch()
        try:
            result: T = await command.done
        except asyncio.CancelledError:
            if command in self._commands:
                self._commands.remove(command)
            raise
        return result

    async def command(self, fn: Callable[[], list[Output]]) -> list[Output]:
        """A manager call run on the worker (``lambda: manager.tick(now)``), its outputs
        performed — written once the call (and its save) returned."""

        def performed() -> list[Output]:
            outputs = fn()
            self.perform(outputs)
            return outputs

        return await self.query(performed)

    async def until(self, condition: Callable[[], bool], timeout_s: float) -> None:
        """Until ``condition()`` holds — it may read the manager: it runs on the worker,
        re-checked after every batch; ``TimeoutError`` after ``timeout_s``."""
        self._start()
        assert self._loop is not None
        if self._closed:
            raise NodeClosed("the node is closed")
        check = Command(condition, self._loop.create_future())
        self._conditions.append(check)
        self._check_conditions = True
        self._dispatch()
        try:
            async with asyncio.timeout(timeout_s):
                await check.done
        finally:
            self._conditions.remove(check)

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> None:
        """Until ``condition()`` holds, re-checked on the loop whenever a batch or a stage of
        one was handled. For what the loop holds (``delivered``, the counters); a condition
        on the manager's sessions belongs in ``until``."""
        async with asyncio.timeout(timeout_s):
            while not condition():
                self._progress.clear()
                await self._progress.wait()

    def perform(self, outputs: list[Output], via: Link | None = None) -> None:
        """Route, seal and (through the loop) write ``outputs``; deliver the messages among
        them. On the worker only: inside ``command``, ``query`` or ``until``."""
        self.worker.perform(outputs, via)

    @property
    def failed_frames(self) -> int:
        return self.worker.failed_frames

    @property
    def failed_ticks(self) -> int:
        return self.worker.failed_ticks

    @property
    def unrouted(self) -> int:
        return self.worker.unrouted

    @property
    def outputs(self) -> Counter[str]:
        """The outputs performed so far: each ``Send`` by the class of its frame, and every
        ``Deliver`` (a count the worker keeps; read it as a snapshot)."""
        return self.worker.outputs

    # ------------------------------------------------------------------ time
    async def run_timers(self) -> None:
        """Serve the manager's deadlines until cancelled: a tick in the next batch whenever
        the earliest is due (``next_wakeup_us``, as the latest batch left it: a batch that
        moves it earlier wakes this task) and at least every ``TIMER_IDLE_S``."""
        self._start()
        while True:
            self._tick_done.clear()
            self._tick_wanted = True
            self._dispatch()
            await self._tick_done.wait()
            while (delay := self._timer_delay()) > 0:
                self._wakeup_moved.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wakeup_moved.wait()
                except TimeoutError:
                    break

    def _timer_delay(self) -> float:
        wake = self._next_wakeup_us
        if wake is None:
            return TIMER_IDLE_S
        return min(TIMER_IDLE_S, max(0.0, (wake - self.now_us()) / 1e6))

    def start_timers(self) -> None:
        self._spawn(self.run_timers())

    # ------------------------------------------------------------------ stopping
    async def close(
        self, *, end_sessions: bool = False, close_wait_s: float = CLOSE_WAIT_S
    ) -> None:
        """Stop the node. By default its sessions stay as they are, resumable: nothing queued
        is lost, and a node started over the same ledger resumes them (decision 16) — the
        peers, meanwhile, see a silent peer. ``end_sessions=True`` closes every session first
        (decision 17): each peer is told, and the node waits up to ``close_wait_s`` for their
        answers (closes lost meanwhile are resent while the timers run). Sends and commands
        the worker has not taken fail with ``NodeClosed``; the batch in hand is finished."""
        if close_wait_s < 0:
            raise ValueError(f"close_wait_s must be >= 0, got {close_wait_s}")
        if self._closed:
            return
        if end_sessions:
            await self.command(lambda: self.manager.close_all(self.now_us()))
            with contextlib.suppress(TimeoutError):
                await self.until(lambda: not self.manager.awaiting_close_acks(), close_wait_s)
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in self._links:
            link.writer.close()
        self._links.clear()
        await self._idle.wait()  # the batch in hand: its saves are not cut short
        self.worker.stop()
        self.worker.forget_routes()
        gone = NodeClosed("the node closed before it took this")
        waiting = [m for queue in self._waiting.values() for m in queue]
        for pending in (*waiting, *self._commands, *self._conditions):
            if not pending.done.done():
                pending.done.set_exception(gone)
        self._waiting.clear()
        self._commands.clear()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _no_delay(writer: asyncio.StreamWriter) -> None:
    # Handshake messages are small and latency-bound: do not let Nagle hold them back.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
