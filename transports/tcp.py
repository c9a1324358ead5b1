"""A session manager over TCP with asyncio: the thin adapter around the sans-I/O core.

Bytes from a connection become frames (frames.py) for the manager; its ``Send`` outputs are
written to a connection of their peer; its deadlines are served by one timer task calling
``manager.tick``. Time comes from the caller's timeline (decision 9:
``infrastructure.clock.SessionTimeline`` in a real process).

Frames are decided in batches: the frames the connections read in one turn of the event loop
(at most ``max_batch`` at a time) go to ``manager.receive_each`` together, so a busy node
makes one save — one group commit, one fsync at durability ``full`` — for all of them, not one
per frame. Each frame is still decided in the order it was read, after the ones before it (a
sealed frame can use keys a handshake frame just before it agreed), and each is answered on
the connection it came in on.

Failures that are not the peer's (the ledger failed to save) do not stop the node: the frames
whose handling raised (a batch's, if its save failed) are lost, as on a network, and their
connections read on (``failed_frames``); a tick that raised is retried by the next one
(``failed_ticks``). A connection that breaks the framing is dropped (``dropped_connections``,
the latest few).

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
connection at twice ``read_limit_bytes``. A frame for a connection already closing is not
written (``closed_sends``).

Starting and stopping (decisions 16 and 17 in docs/spec-decisions.md). A node made over a
ledger that holds sessions recovers them (``SessionManager.recover``): the sessions that were
live when the last process stopped are recorded as restarted and suspended, and each resumes,
with fresh keys, when a connection to its peer comes up (``connect``, or the peer's hello).
``close()`` stops the node and leaves its sessions resumable; ``close(end_sessions=True)``
closes them first, telling each peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from l2_session.domain.manager.channel import RESERVATION_BLOCK
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session.commands import Deliver, Frame, Output, Send
from l2_session.domain.session.session import TCP
from l2_session.infrastructure.identity import public_bytes_from_did_key
from l2_session.transports.frames import MAX_FRAME, FrameError, body_length, decode, encode
from l2_session.transports.sealed import SEALED_KIND, SealedFrames, SealRefused, is_channel_frame
from l2_session.transports.tcp_bounds import NoRoom, Occupancy, source_of

log = logging.getLogger("l2_session.transport")

HELLO_LENGTH = struct.Struct(">H")
TIMER_IDLE_S = 0.05  # the timer task re-checks at least this often
DROPPED_KEPT = 64  # reasons for dropped connections kept (the latest)
HELLO_TIMEOUT_S = 5.0  # an accepted connection must name its DID within this
MAX_DID_BYTES = 256  # a did:key is ~56 bytes; a longer claim is refused unread
MAX_CONNECTIONS = 1024  # open connections at once, counted from their accept
MAX_BATCH = 256  # frames decided in one save; a reader waits for the batch beyond it
# A live session's connection carries a heartbeat or its answer every 30 s (SPEC-018 §5.1):
# four intervals without a frame and the connection carries no live session.
IDLE_TIMEOUT_S = 120.0
FRAME_TIMEOUT_S = 10.0  # from a frame's length prefix to its last byte (128 KiB at 13 KB/s)
MAX_PARTIAL_BYTES = 16 * 1024 * 1024  # frames being read, all connections together
READ_LIMIT_BYTES = 64 * 1024  # asyncio's reader pauses a connection at twice this unread
PRUNE_FLOOR = 1024  # _agreed_here entries before the first prune
CLOSE_WAIT_S = 5.0  # close(end_sessions=True) waits this long at most for the peers' answers


@dataclass(eq=False)
class Link:
    """One TCP connection and the DID it is with (claimed or, once proven, proved)."""

    writer: asyncio.StreamWriter
    did: str
    outgoing: bool

    @property
    def address(self) -> str:
        peer = self.writer.get_extra_info("peername")
        return "" if peer is None else f"{peer[0]}:{peer[1]}"

    @property
    def source(self) -> str:
        return source_of(self.writer.get_extra_info("peername"))

    @property
    def name(self) -> str:
        return self.did or f"a connection from {self.address} in its hello"


@dataclass
class _Proof:
    """What one frame of a batch proved, applied once the batch is saved."""

    link: Link
    proves: bool = False  # the frame proved link.did on link
    agreed: tuple[UUID, str] | None = None  # (conversation, key id) agreed through this node


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
        self.delivered: list[Deliver] = []
        # Why connections were dropped: the latest few (anyone can open connections), and
        # how many in all.
        self.dropped_connections: deque[str] = deque(maxlen=DROPPED_KEPT)
        self.dropped_count = 0
        self.unrouted = 0  # frames with no connection to go to
        self.failed_ticks = 0
        self.failed_frames = 0
        self.closed_sends = 0  # frames not written: their connection was closing (peer gone)
        self._links: set[Link] = set()
        self._prune_at = PRUNE_FLOOR
        self._claimed: dict[str, Link] = {}
        self._proven: dict[str, Link] = {}
        # conversation -> the key id agreed through this node (so a proof, see above)
        self._agreed_here: dict[UUID, str] = {}
        self._reading: Link | None = None
        self._inbox: list[tuple[Link, bytes]] = []  # read, not yet decided (_drain)
        self._drain_scheduled = False
        self._progress = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Decision 16: the sessions the last process left live are recorded as restarted
        # before any frame or timer of this one touches them.
        manager.recover(now_us())

    # ------------------------------------------------------------------ connections
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        return await asyncio.start_server(self._accepted, host, port, limit=self.read_limit_bytes)

    async def connect(self, peer_did: str, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port, limit=self.read_limit_bytes)
        _no_delay(writer)
        did = self.manager.local_did.encode()
        writer.write(HELLO_LENGTH.pack(len(did)) + did)
        link = Link(writer, peer_did, outgoing=True)
        self._links.add(link)
        self._claimed[peer_did] = link
        self._spawn(self._read(link, reader))
        self._reached(link)

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
            current = self._claimed.get(peer_did)
            if current is None or not current.outgoing:  # our own connection to it stays first
                self._claimed[peer_did] = link
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
        try:
            # One deadline per phase, set when the phase begins: bytes trickling in do not
            # move it, so a connection cannot hold a frame (or its slot) open for ever.
            async with asyncio.timeout(None) as deadline:
                while True:
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
                    if not self._drain_scheduled:
                        self._drain_scheduled = True
                        loop.call_soon(self._drain)
                    if len(self._inbox) >= self.max_batch:
                        await asyncio.sleep(0)  # the drain runs first: the inbox stays bounded
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

    def _drain(self) -> None:
        """Decide every frame read since the last drain, ``max_batch`` at a time."""
        self._drain_scheduled = False
        inbox, self._inbox = self._inbox, []
        for start in range(0, len(inbox), self.max_batch):
            self._decide(inbox[start : start + self.max_batch])
        self._progress.set()

    def _decide(self, batch: list[tuple[Link, bytes]]) -> None:
        """One ``receive_each`` (one save) for ``batch``, then each frame answered on its own
        connection. A failure that is not the peers' (the ledger failed to save) loses the
        batch, as a network would, and the node reads on."""
        proofs: list[_Proof] = []
        try:
            groups = self.manager.receive_each(self._frames(batch, proofs), self.now_us())
        except Exception:
            self.failed_frames += len(proofs)
            log.exception("%d frame(s) could not be handled", len(proofs))
            groups = []
            proofs.clear()
        finally:
            self._reading = None
        for proof, outputs in zip(proofs, groups, strict=True):
            if proof.agreed is not None:
                self._agreed_here[proof.agreed[0]] = proof.agreed[1]
            if proof.proves:
                self._proven[proof.link.did] = proof.link
                self.occupancy.proven(proof.link)
            try:
                self.perform(outputs, via=proof.link)
            except Exception:  # one frame's answers, not the others'
                self.failed_frames += 1
                log.exception("the answers to a frame from %s could not be sent", proof.link.did)
        self._prune()

    def _prune(self) -> None:
        """Forget the keys agreed here for sessions that have left the manager's memory (they
        closed) or have other keys since, once the table has doubled: it stays within twice
        the sessions in memory, without a scan per frame."""
        if len(self._agreed_here) < self._prune_at:
            return
        for conversation, key_id in list(self._agreed_here.items()):
            session = self.manager.session_for(conversation)
            if session is None or session.key_id != key_id:
                del self._agreed_here[conversation]
        self._prune_at = max(PRUNE_FLOOR, 2 * len(self._agreed_here))

    def _frames(
        self, batch: list[tuple[Link, bytes]], proofs: list[_Proof]
    ) -> Iterator[tuple[str, Frame]]:
        """The batch's frames for ``receive_each``, one at a time: each opened (if sealed)
        only once the frames before it are decided — so under keys a handshake frame just
        before it agreed — and, once it is decided, what it proved noted in ``proofs``."""
        agreed: dict[UUID, str] = {}  # this batch's agreements, not yet saved
        for link, body in batch:
            if link not in self._links:
                continue  # dropped for an earlier frame of this batch
            proof = _Proof(link)
            try:
                if body[0] == SEALED_KIND:
                    frame, key_id = self.sealed.open(link.did, body)
                    here = agreed.get(frame.conversation, self._agreed_here.get(frame.conversation))
                    proof.proves = here == key_id
                else:
                    frame = decode(body)
                    if is_channel_frame(frame):
                        self.sealed.refused["unsealed"] += 1
                        continue
            except SealRefused:
                continue  # counted in sealed.refused; nothing changed
            except FrameError as error:
                self._dropped(f"{link.did}: {error}")
                self._forget(link)
                link.writer.close()
                continue
            # The session as it was in memory before the frame. A session the manager
            # replays from the ledger while deciding the frame (after a restart) also shows
            # keys it did not have before; those were agreed before the restart, not by it.
            before = self.manager.session_for(frame.conversation)
            before_key = None if before is None else before.key_id
            self._reading = link
            proofs.append(proof)
            yield link.did, frame
            after = self.manager.session_for(frame.conversation)
            after_key = None if after is None else after.key_id
            if after is before and after_key is not None and after_key != before_key:
                # A handshake with link.did completed with this frame.
                agreed[frame.conversation] = after_key
                proof.agreed, proof.proves = (frame.conversation, after_key), True
        # The batch is saved and its answers derived with no frame in hand: a peer's address
        # is then its proven connection's (address_of), never the last frame's.
        self._reading = None

    def _reached(self, link: Link) -> None:
        """A connection with ``link.did`` is up: the sessions a restart left waiting for that
        peer resume over it (decision 16). A resumption proves itself (its MAC is under the
        session's secret), so a connection that only claims the DID can only make it time
        out, and the session retries with a full handshake."""
        try:
            self.perform(self.manager.reconnected(link.did, self.now_us()), via=link)
        except Exception:  # the ledger failed to save: the sessions' timers retry
            log.exception("resuming the sessions with %s failed", link.did)

    def _dropped(self, why: str) -> None:
        self.dropped_connections.append(why)
        self.dropped_count += 1

    def _forget(self, link: Link) -> None:
        self._links.discard(link)
        self.occupancy.closed(link)
        for routes in (self._claimed, self._proven):
            if routes.get(link.did) is link:
                del routes[link.did]

    def address_of(self, peer_did: str) -> str:
        """Where ``peer_did``'s frames arrive from (``source_of``: its IP address, or its IPv6
        /64): the source the handshake engine keys quarantine and rate limits by
        (``PqxdhKeyExchange(source_of=node.address_of)``). While a frame is handled, the
        connection it came in on, whatever it claims."""
        reading = self._reading
        link = reading if reading is not None and reading.did == peer_did else None
        link = link or self._proven.get(peer_did) or self._claimed.get(peer_did)
        return "" if link is None else link.source

    def is_proven(self, peer_did: str) -> bool:
        return peer_did in self._proven

    # ------------------------------------------------------------------ outputs and time
    def perform(self, outputs: list[Output], via: Link | None = None) -> None:
        for output in outputs:
            if isinstance(output, Send):
                self._send(output, via)
            else:
                self.delivered.append(output)
        self._progress.set()

    def _send(self, output: Send, via: Link | None) -> None:
        frame, did = output.frame, output.peer_did
        if is_channel_frame(frame):
            link = self._proven.get(did) or self._dialled(did)
            data = None if link is None else self._sealed(frame)
        else:
            link = via if via is not None and via.did == did else None
            link = link or self._proven.get(did) or self._claimed.get(did)
            data = encode(frame)
        if link is None or data is None:
            self.unrouted += 1  # no connection (or no keys): lost, as on a network
            return
        if link.writer.is_closing():
            # The peer went away and its reader has not noticed yet: lost, as on a network
            # (asyncio would log a warning for every such write).
            self.closed_sends += 1
            return
        link.writer.write(data)

    def _dialled(self, did: str) -> Link | None:
        """The connection this node opened to ``did`` (at an address it was given for it)."""
        link = self._claimed.get(did)
        return link if link is not None and link.outgoing else None

    def _sealed(self, frame: Frame) -> bytes | None:
        try:
            return self.sealed.seal(frame, self.now_us())
        except SealRefused:
            return None  # counted in sealed.refused

    async def run_timers(self) -> None:
        """Serve the manager's deadlines until cancelled. A tick that raises (the ledger
        failed to save) sent nothing and left its sessions re-armed from the ledger
        (``SessionManager.tick``): it is logged and counted, and the timers go on."""
        while True:
            now = self.now_us()
            try:
                self.perform(self.manager.tick(now))
            except Exception:
                self.failed_ticks += 1
                log.exception("tick at %d failed; its timers fire again", now)
            wake = self.manager.next_wakeup_us()
            delay = TIMER_IDLE_S if wake is None else (wake - now) / 1e6
            await asyncio.sleep(min(TIMER_IDLE_S, max(0.0, delay)))

    def start_timers(self) -> None:
        self._spawn(self.run_timers())

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> None:
        """Until ``condition()`` holds, re-checked whenever a frame or deadline was handled."""
        async with asyncio.timeout(timeout_s):
            while not condition():
                self._progress.clear()
                await self._progress.wait()

    async def close(
        self, *, end_sessions: bool = False, close_wait_s: float = CLOSE_WAIT_S
    ) -> None:
        """Stop the node. By default its sessions stay as they are, resumable: nothing queued
        is lost, and a node started over the same ledger resumes them (decision 16) — the
        peers, meanwhile, see a silent peer. ``end_sessions=True`` closes every session first
        (decision 17): each peer is told, and the node waits up to ``close_wait_s`` for their
        answers (closes lost meanwhile are resent while the timers run)."""
        if close_wait_s < 0:
            raise ValueError(f"close_wait_s must be >= 0, got {close_wait_s}")
        if end_sessions:
            self.perform(self.manager.close_all(self.now_us()))
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda: not self.manager.awaiting_close_acks(), close_wait_s)
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in self._links:
            link.writer.close()
        self._links.clear()
        self._claimed.clear()
        self._proven.clear()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _no_delay(writer: asyncio.StreamWriter) -> None:
    # Handshake messages are small and latency-bound: do not let Nagle hold them back.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
