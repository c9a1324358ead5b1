"""A session manager over TCP and QUIC with asyncio: the thin adapter around the sans-I/O core.

A node serves and dials both (``serve`` / ``connect`` over TCP, ``serve_quic`` /
``connect_quic`` over QUIC links, quic.py); everything below the connection is the same for
either — a connection's way out is its pipe (pipes.py) — and the rest of this docstring says
"connection" for both.

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
connections and sessions they come from (at most ``max_batch`` frames, and as many sends, a
batch). So a busy node batches by itself and an idle one answers at once; the loop keeps
reading while a batch is saved (frames read meanwhile wait for the next batch), and a slow
save stalls no connection's reads or deadlines.

The worker's Python holds the GIL (SQLite's calls and system calls release it): the
loop gets it back within the interpreter's switch interval, which the node leaves as it is
(5 ms by default; it is the process's setting, not the node's). Measured with the messages
benchmark on two shared cores, a switch interval of 1, 0.5 or 0.2 ms changed neither the
loop's longest stall (5-9 ms at either end) nor latency or throughput beyond run-to-run
noise: during those stalls the loop thread itself ran under 1 ms and the process as a whole
often less than the stall — the loop waited for a core more than for the GIL. A full garbage
collection holds the GIL too: in a process that imported aioquic, the first one scans ~53,000
objects and took 10-15 ms. A long-running node process calls ``gc.freeze()`` once it has
started (``l2-session node`` does), so that full collections scan only what came after.

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
  order (the latest 1,024 also in ``delivered``), but for those the node's ``answer``
  answered. An application that does not keep up holds the node back: with ``max_unread``
  messages (4,096) waiting to be received, the node reads no connection until half of them
  were taken — its peers' windows and the transports' flow control hold the rest, and
  memory stays bounded;
- ``TcpNode(..., answer=fn)``, for a node that answers requests (decision 23): ``fn(session_id,
  payload)`` is called on the worker thread with every message delivered, before the
  delivery is saved, and the payload it returns (None: no answer) is queued on the same
  session in that save — the delivery and its answer commit together, and the answer leaves
  with the batch, without a turn through the loop. ``fn`` must be quick and must not touch
  the node or the loop (it runs on the worker); it may see a message again if the node dies
  before the save (its answer is sent once). A message it answers does not reach
  ``receive``; one it returns None for does, as any other;
- ``await command(fn)`` / ``query(fn)`` / ``until(condition)``: any other manager call or
  read, run on the worker between batches.

Sealing (sealed.py). Data, DataAck, Heartbeat and HeartbeatAck travel only sealed under the
session's keys; the same frames in clear are refused (``sealed.refused["unsealed"]``).
Handshake and rotation frames travel as they are.

Connections (tcp_links.py): the hello, frames off the wire, the deadlines and budgets that
bound what a connection holds (docs/security.md, "Denial of service"). Routing and proof
(tcp_worker.py): which connection proved which DID, where each frame goes, and the source the
handshake engine keys its limits by (``address_of``).

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
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from l2_session.domain.manager.channel import RESERVATION_BLOCK
from l2_session.domain.manager.manager import Answer, SessionManager
from l2_session.domain.session.commands import Deliver, HandshakeRequest, Output, Send
from l2_session.domain.session.errors import FailureReason, SessionError, WindowFull
from l2_session.domain.session.session import QUIC, UTCP
from l2_session.domain.session.states import State, Trigger, is_allowed
from l2_session.infrastructure.identity import public_bytes_from_did_key
from l2_session.infrastructure.ledger.witness import Witnessing
from l2_session.transports.fallback import FallbackPolicy
from l2_session.transports.frames import MAX_FRAME, encode
from l2_session.transports.pipes import QuicPipe
from l2_session.transports.quic import QuicEndpoint, QuicSettings
from l2_session.transports.quic_link import QuicLink
from l2_session.transports.sealed import SealedFrames
from l2_session.transports.tcp_bounds import Occupancy
from l2_session.transports.tcp_handoff import Batch, Command, Link, Message, Outcome, Report
from l2_session.transports.tcp_links import (
    FRAME_TIMEOUT_S,
    HELLO_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_CONNECTIONS,
    MAX_PARTIAL_BYTES,
    READ_LIMIT_BYTES,
    Connections,
)
from l2_session.transports.tcp_worker import WITNESS_INTERVAL_US, NodeWorker

__all__ = ["Link", "NodeClosed", "TcpNode"]

log = logging.getLogger("l2_session.transport")
RECHECK_S = 0.5  # how often a QUIC link waits for a session that can seal its link check
CHECK_ANSWER_S = 5.0  # a link check unanswered this long: its QUIC link is closed, QUIC failed

TIMER_IDLE_S = 0.05  # the timer task asks for a tick at least this often
MAX_BATCH = 256  # frames (and sends) decided in one save; readers wait beyond it
MAX_UNREAD = 4096  # messages delivered and not yet received before the node stops reading
DELIVERED_KEPT = 1024  # ``TcpNode.delivered`` holds the latest this many messages
CLOSE_WAIT_S = 5.0  # close(end_sessions=True) waits this long at most for the peers' answers
CLOSE_DRAIN_S = 0.5  # close() waits this long at most for what it wrote to leave

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
        answer: Answer | None = None,
        serve_bundle: Callable[[], bytes] | None = None,
        publish_bundle: Callable[[str, bytes, int], None] | None = None,
        quic_tickets: str | Path | None = None,
        quic_settings: QuicSettings | None = None,
        max_unread: int = MAX_UNREAD,
        witnessing: Witnessing | None = None,
        witness_interval_s: float = WITNESS_INTERVAL_US / 1e6,
    ) -> None:
        for name, count, least in (
            ("max_connections", max_connections, 1),
            ("max_batch", max_batch, 1),
            ("max_unread", max_unread, 1),
            ("read_limit_bytes", read_limit_bytes, 1),
            ("max_partial_bytes", max_partial_bytes, MAX_FRAME),  # one largest frame fits
        ):
            if count < least:
                raise ValueError(f"{name} must be >= {least}, got {count}")
        for name, seconds in (
            ("witness_interval_s", witness_interval_s),
            ("hello_timeout_s", hello_timeout_s),
            ("idle_timeout_s", idle_timeout_s),
            ("frame_timeout_s", frame_timeout_s),
        ):
            if not seconds > 0:
                raise ValueError(f"{name} must be > 0, got {seconds}")
        self.manager, self.now_us = manager, now_us
        manager.transport = UTCP  # until a connection says which (decisions 20, 24)
        self.sealed = SealedFrames(
            manager.session_for, identity_key_of, manager.local_did,
            manager.ledger.save, block=reservation_block,
        )  # fmt: skip
        self.worker = NodeWorker(
            manager, now_us, self.sealed, self._post, self._post_report, answer=answer,
            serve_bundle=serve_bundle, publish_bundle=publish_bundle,
            witnessing=witnessing, witness_interval_us=round(witness_interval_s * 1e6),
        )  # fmt: skip
        self.connections = Connections(
            manager.local_did, identity_key_of,
            up=lambda link: self._link_event(link, True),
            down=lambda link: self._link_event(link, False),
            arrived=self._dispatch, max_frames=max_batch, max_connections=max_connections,
            hello_timeout_s=hello_timeout_s, idle_timeout_s=idle_timeout_s,
            frame_timeout_s=frame_timeout_s, max_partial_bytes=max_partial_bytes,
            read_limit_bytes=read_limit_bytes,
        )  # fmt: skip
        # The latest messages delivered, for a look at what arrived (tests, a REPL); the
        # application reads them through ``receive``. Bounded: a node runs for months.
        self.delivered: deque[Deliver] = deque(maxlen=DELIVERED_KEPT)
        self.quic: QuicEndpoint | None = None  # made by the first serve_quic / connect_quic
        self.quic_tickets = quic_tickets  # where its QUIC tickets are kept (quic_tls.py)
        self.quic_settings = quic_settings or QuicSettings()  # its QUIC timers and bounds
        self.fallback = FallbackPolicy()  # QUIC or μTCP, per peer (dial)
        self._addresses: dict[str, tuple[tuple[str, int] | None, tuple[str, int] | None]] = {}
        self._returning: set[str] = set()  # peers whose sessions wait to move back to QUIC
        self.check_answer_s = CHECK_ANSWER_S
        # QUIC links dialled for a link check and not answered: they carry nothing, so their
        # end is no reason to dial the peer again.
        self._probing: set[QuicLink] = set()
        self._received: asyncio.Queue[Deliver] = asyncio.Queue()
        # Called on the loop once what a stage of a batch decided is applied (its messages
        # among ``receive``'s): for a layer above that orders its own news after them.
        self.on_outcome: Callable[[], None] | None = None
        self.max_unread = max_unread  # delivered, not yet taken by receive: reading stops
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # Collected for the next batch (see the module's docstring), besides the frames read.
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
        return await self.connections.serve(host, port)

    async def connect(self, peer_did: str, host: str, port: int) -> None:
        """Dial ``peer_did`` at an address given for it; the sessions a restart left waiting
        for that peer resume over the connection (decision 16)."""
        self._start()
        await self.connections.dial(peer_did, host, port)

    async def serve_quic(
        self, host: str = "127.0.0.1", port: int = 0, settings: QuicSettings | None = None
    ) -> tuple[str, int]:
        """Listen for QUIC links (quic.py) on UDP ``host``:``port`` — STUN is answered on the
        same port — and take each as a connection; the address listened on. A node serves
        TCP and QUIC alike: sessions, routing and batches do not depend on which carries
        them (a session records ``quic`` or ``utcp``: decisions 20, 24)."""
        self._start()
        endpoint = self._quic(settings)
        address = await endpoint.listen(host, port)
        self._spawn(self._accept_quic(endpoint))
        return address

    async def connect_quic(self, peer_did: str, host: str, port: int) -> None:
        """``connect`` over QUIC: a link to ``peer_did`` at ``host``:``port`` (an IP
        address), once its handshake completed; ``ConnectionError`` if it did not. A dial to
        an address this node has a ticket for (an earlier connection's; across restarts with
        ``quic_tickets``) goes in 0-RTT, and the RESUMEs of the sessions a restart left
        waiting for the peer ride its first flight (decision 16: saved before they leave)."""
        self._start()
        endpoint = self._quic(None)
        early = await self._early_resumes(peer_did)
        quic = await endpoint.connect(
            host, port, hello=self.manager.local_did.encode(), early=[d for _, d in early]
        )
        self.connections.dialled_quic(quic, peer_did)

    async def _early_resumes(self, peer_did: str) -> list[tuple[UUID, bytes]]:
        """The RESUMEs of the sessions a restart left waiting for ``peer_did``, saved, as
        frames for a QUIC link's first flight; those sessions are under way from here."""

        def resumes() -> list[tuple[UUID, bytes]]:
            requests, rest = _split_requests(self.manager.reconnected(peer_did, self.now_us()))
            self.perform(rest)  # anything else, as on any connection
            return [(r.conversation, encode(r)) for r in requests]

        return await self.query(resumes)

    async def _resumptions_again(self, early: list[tuple[UUID, bytes]]) -> list[bytes]:
        """For a μTCP connection that won over a QUIC attempt whose first flight carried
        ``early`` RESUMEs: each session's RESUME again if it still waits for its answer (a
        duplicate changes nothing), or a new resumption if it timed out meanwhile — QUIC's
        head start (250 ms) is longer than a resumption's 100 ms (decision 4), so with UDP
        blocked it always did."""

        def again() -> list[bytes]:
            frames, now = [], self.now_us()
            for conversation, data in early:
                s = self.manager.session_for(conversation)
                if s is None or s.closed:
                    continue
                if s.state == State.HANDSHAKE_INITIATED:
                    frames.append(data)
                elif s.failure_reason == FailureReason.TIMEOUT and is_allowed(
                    s.state, Trigger.INITIATE_RESUMPTION
                ):
                    try:
                        outputs = self.manager.resume(s.id, now)
                    except SessionError as error:
                        log.info("session %s not resumed over μTCP: %s", s.id, error)
                        continue
                    requests, rest = _split_requests(outputs)
                    frames += [encode(r) for r in requests]
                    self.perform(rest)
            return frames

        return await self.query(again)

    async def dial(
        self,
        peer_did: str,
        *,
        quic: tuple[str, int] | None = None,
        tcp: tuple[str, int] | None = None,
    ) -> str:
        """Connect to ``peer_did`` as SPEC-018 §2.3 says: QUIC at ``quic`` first, μTCP at
        ``tcp`` beside it if QUIC has not connected within its head start, or at once if QUIC
        to this peer failed recently (fallback.py). The first to connect carries the peer's
        sessions; the other is closed. The transport connected (``quic`` or ``utcp``);
        ``ConnectionError`` naming why each failed if neither did. The addresses are kept:
        if the QUIC link dies, the peer is dialled again the same way (over μTCP at once, QUIC
        being broken for a while), and its sessions record the fallback (decision 24)."""
        if quic is None and tcp is None:
            raise ValueError("dial needs a QUIC address, a TCP address, or both")
        self._start()
        if self._closed:
            raise NodeClosed("the node is closed")
        self._addresses[peer_did] = (quic, tcp)
        loop = asyncio.get_running_loop()
        policy, started = self.fallback, loop.time()
        attempts: dict[str, asyncio.Task[Any]] = {}
        early: list[tuple[UUID, bytes]] = []
        try:
            if quic is not None and (tcp is None or policy.try_quic(peer_did, started)):
                endpoint = self._quic(None)
                hello = self.manager.local_did.encode()
                early = await self._early_resumes(peer_did)  # in QUIC's first flight
                first_flight = [d for _, d in early]
                attempts[QUIC] = asyncio.ensure_future(
                    endpoint.connect(*quic, hello=hello, early=first_flight)
                )
                if tcp is not None:
                    await asyncio.wait([attempts[QUIC]], timeout=policy.head_start(peer_did))
            quic_won = QUIC in attempts and attempts[QUIC].done() and not _failed(attempts[QUIC])
            if tcp is not None and not quic_won:
                attempts[UTCP] = asyncio.ensure_future(self.connections.open_tcp(*tcp))
            winner, errors = await _first_connected(attempts)
        except BaseException:  # cancelled (a caller's timeout): the attempts end with it
            for task in attempts.values():
                await _discard(task)
            raise
        for kind, task in attempts.items():
            if kind != winner:
                await _discard(task)
        if QUIC in attempts and winner != QUIC:
            policy.quic_failed(peer_did, loop.time())
        if winner is None:
            why = "; ".join(f"{kind}: {error}" for kind, error in errors.items())
            raise ConnectionError(f"no connection to {peer_did}: {why}")
        policy.connected(peer_did, winner, loop.time() - started)
        if self._closed:
            await _discard(attempts[winner])
            raise NodeClosed("the node closed while it dialled")
        if winner == QUIC:
            self.connections.dialled_quic(attempts[QUIC].result(), peer_did)
        else:
            reader, writer = attempts[UTCP].result()
            self.connections.dialled_tcp(peer_did, reader, writer)
            if early:  # the resumptions that rode the lost QUIC attempt go on μTCP
                writer.write(b"".join(await self._resumptions_again(early)))
            if quic is not None and peer_did not in self._returning:
                self._returning.add(peer_did)
                self._spawn(self._back_to_quic(peer_did))
        return winner

    async def _back_to_quic(self, peer_did: str) -> None:
        """The peer's sessions went over μTCP (the dial's QUIC attempt lost): once QUIC's
        back-off to the peer has passed, dial QUIC again, and if it connects, send a link
        check on it (link_check.py); the peer's answer moves the sessions back to QUIC at
        both ends and retires the μTCP connection (decision 24). A QUIC dial that fails
        doubles the back-off, and the next waits for it; the task ends once a check went,
        or when no live session with the peer is left off QUIC. A check waits while no
        session can seal it (each is mid-rotation, or its fallback is still pending)."""
        loop = asyncio.get_running_loop()

        async def off_quic() -> bool:
            return await self.query(lambda: self.worker.off_quic(peer_did))

        try:
            while not self._closed:
                wait = self.fallback.quic_after(peer_did) - loop.time()
                await asyncio.sleep(max(0.0, wait))
                quic = self._addresses[peer_did][0]
                if quic is None or not await off_quic():
                    return
                started = loop.time()
                try:
                    link = await self._quic(None).connect(
                        *quic, hello=self.manager.local_did.encode()
                    )
                except (ConnectionError, OSError) as error:
                    self.fallback.quic_failed(peer_did, loop.time())
                    log.info(
                        "QUIC to %s still fails (%s): its sessions stay on μTCP", peer_did, error
                    )
                    continue
                self.fallback.connected(peer_did, QUIC, loop.time() - started)
                if self._closed:
                    link.close()
                    return
                self._probing.add(link)
                self.connections.dialled_quic(link, peer_did)
                while not await self.query(lambda: self.worker.check_link(peer_did)):
                    await asyncio.sleep(RECHECK_S)
                    if link.closed or not await off_quic():
                        link.close()
                        return
                try:
                    await self.until(
                        lambda: self.worker.settled_kind(peer_did) == QUIC, self.check_answer_s
                    )
                except TimeoutError:
                    self.fallback.quic_failed(peer_did, loop.time())
                    log.warning(
                        "%s did not answer the link check over QUIC within %g s: the link is "
                        "closed, its sessions stay on μTCP", peer_did, self.check_answer_s,
                    )  # fmt: skip
                    link.close()
                    continue
                self._probing.discard(link)  # it carries the sessions now
                return
        except NodeClosed:
            return
        except Exception:  # a bug: said, not left to a task nobody awaits
            log.exception("moving the sessions with %s back to QUIC failed", peer_did)
        finally:
            self._returning.discard(peer_did)

    async def _redial(self, peer_did: str) -> None:
        """A dialled QUIC link to ``peer_did`` died: its sessions over QUIC record the
        fallback to μTCP (if it has a μTCP address, and no other QUIC link to it is left), and
        the peer is dialled again (decision 24)."""
        quic, tcp = self._addresses[peer_did]

        def fall_back() -> list[Output]:
            if tcp is None or self.worker.transport_to(peer_did) == QUIC:
                return []
            return self.manager.transport_lost(peer_did, QUIC, self.now_us())

        with contextlib.suppress(NodeClosed):
            await self.command(fall_back)
        try:
            await self.dial(peer_did, quic=quic, tcp=tcp)
        except (ConnectionError, OSError) as error:
            log.warning("could not dial %s again after its QUIC link died: %s", peer_did, error)

    async def fetch_bundle(self, peer_did: str, timeout_s: float = 5.0) -> None:
        """Ask ``peer_did``, over the connection to it, for its prekey bundle, and return once
        it came and was published (``publish_bundle``: its signatures checked against the
        DID) — what ``establish`` needs of a peer whose bundle nobody handed over
        (bundles.py). ``ConnectionError`` without a connection to it; ``TimeoutError`` if no
        valid bundle came within ``timeout_s``."""

        def ask() -> bool:
            return self.worker.request_bundle(peer_did)

        if not await self.query(ask):
            raise ConnectionError(f"no connection to {peer_did} to ask for its bundle")
        await self.until(lambda: peer_did in self.worker.bundles_received, timeout_s)

    def _quic(self, settings: QuicSettings | None) -> QuicEndpoint:
        if self.quic is None:
            self.quic = QuicEndpoint(settings or self.quic_settings, tickets_path=self.quic_tickets)
        elif settings is not None and settings != self.quic.settings:
            raise ValueError("the node's QUIC endpoint is already made, with other settings")
        return self.quic

    async def _accept_quic(self, endpoint: QuicEndpoint) -> None:
        while True:
            self.connections.accept_quic(await endpoint.accept())

    def _link_event(self, link: Link, up: bool) -> None:
        """A connection with ``link.did`` is up (the worker routes to it, and resumes over it
        the sessions a restart left waiting for that peer: NodeWorker._up) or gone."""
        redial = not up and link.kind == QUIC and link.outgoing and link.did in self._addresses
        if not up and isinstance(link.pipe, QuicPipe) and link.pipe.link in self._probing:
            self._probing.discard(link.pipe.link)
            redial = False  # a link check's link that was not answered: it carried nothing
        if redial and not self._closed and self._loop is not None:
            # A dialled QUIC link died: QUIC to that peer is broken for a while, and the peer
            # is dialled again (over μTCP at once: decision 24).
            self.fallback.quic_failed(link.did, self._loop.time())
            self._spawn(self._redial(link.did))
        self._link_events.append((link, up))
        self._dispatch()

    @property
    def max_batch(self) -> int:
        """Frames (and sends) decided in one save; 1: a save per frame."""
        return self.connections.max_frames

    @max_batch.setter
    def max_batch(self, frames: int) -> None:
        self.connections.max_frames = frames

    @property
    def occupancy(self) -> Occupancy[Link]:
        return self.connections.occupancy

    @property
    def dropped_connections(self) -> deque[str]:
        """Why connections were dropped: the latest few (anyone can open connections)."""
        return self.connections.dropped_connections

    @property
    def dropped_count(self) -> int:
        return self.connections.dropped_count

    @property
    def closed_sends(self) -> int:
        """Frames not written: their connection was closing (the peer gone)."""
        return self.connections.closed_sends

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
        batch.frames = self.connections.take(self.max_batch)
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
        connections = self.connections
        for link, why in outcome.dropped:
            connections.drop(link, why)
        for link in outcome.proven:
            connections.proven(link)
        if outcome.writes:
            chunks: dict[Link, list[bytes]] = {}
            for link, data in outcome.writes:
                chunks.setdefault(link, []).append(data)
            for link, data_list in chunks.items():
                connections.write(link, data_list)
        for link in outcome.settled:
            connections.retire_beside(link)
        for message in outcome.delivered:
            if not message.answered:  # the node's answer had it, and answered it
                self.delivered.append(message)
                self._received.put_nowait(message)
        if self._received.qsize() >= self.max_unread:
            self.connections.hold(True)  # the application is behind: read no more
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
        if self.on_outcome is not None:
            self.on_outcome()

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
            self.connections.frames or self._link_events or self._commands or self._tick_wanted
            or sendable or self._check_conditions
        )  # fmt: skip

    # ------------------------------------------------------------------ the application
    async def establish(self, peer_did: str) -> UUID:
        """``SessionManager.establish`` with ``peer_did``: the new session's id, once its
        first events are saved and its handshake request handed to the connection."""

        def establish() -> UUID:
            # The session records the transport it opens on (decision 20).
            self.manager.transport = self.worker.transport_to(peer_did) or UTCP
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
        return self._taken(await self._received.get())

    def take_delivered(self) -> list[Deliver]:
        """The messages delivered and not yet received, at once (``receive`` without the
        wait), in delivery order."""
        taken = []
        while not self._received.empty():
            taken.append(self._taken(self._received.get_nowait()))
        return taken

    def _taken(self, message: Deliver) -> Deliver:
        if self.connections.held and self._received.qsize() <= self.max_unread // 2:
            self.connections.hold(False)  # caught up: read on
        return message

    async def messages(self) -> AsyncIterator[Deliver]:
        """The messages delivered to this node, as they come."""
        while True:
            yield await self.receive()

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
        self,
        *,
        end_sessions: bool = False,
        close_wait_s: float = CLOSE_WAIT_S,
        close_drain_s: float = CLOSE_DRAIN_S,
    ) -> None:
        """Stop the node. By default its sessions stay as they are, resumable: nothing queued
        is lost, and a node started over the same ledger resumes them (decision 16) — the
        peers, meanwhile, see a silent peer. ``end_sessions=True`` closes every session first
        (decision 17): each peer is told, and the node waits up to ``close_wait_s`` for their
        answers (closes lost meanwhile are resent while the timers run). Sends and commands
        the worker has not taken fail with ``NodeClosed``; the batch in hand is finished, and
        what the node wrote is given up to ``close_drain_s`` to leave (on QUIC, to be
        acknowledged) before the connections close."""
        for name, seconds in (("close_wait_s", close_wait_s), ("close_drain_s", close_drain_s)):
            if seconds < 0:
                raise ValueError(f"{name} must be >= 0, got {seconds}")
        if self._closed:
            return
        if end_sessions:
            # Decision 25: each peer is offered this node's checkpoint as the sessions end.
            await self.query(lambda: self.worker.witness_peers(self.now_us(), all_now=True))
            await self.command(lambda: self.manager.close_all(self.now_us()))
            with contextlib.suppress(TimeoutError):
                await self.until(lambda: not self.manager.awaiting_close_acks(), close_wait_s)
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._idle.wait()  # the batch in hand: its saves are not cut short
        # What the node decided before it closed reaches its peers (a key confirmation sent
        # just before: without it the peer never establishes), if they still answer.
        await self.connections.drain(close_drain_s)
        await self.connections.close()
        if self.quic is not None:
            await self.quic.close()
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


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.cancelled() or task.exception() is not None


async def _first_connected(
    attempts: dict[str, asyncio.Task[Any]],
) -> tuple[str | None, dict[str, BaseException]]:
    """The kind of the first attempt to connect, and why those that failed did."""
    kinds = {task: kind for kind, task in attempts.items()}
    errors: dict[str, BaseException] = {}
    pending = set(kinds)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in sorted(done, key=lambda t: kinds[t]):  # QUIC first if both at once
            error = None if task.cancelled() else task.exception()
            if task.cancelled() or error is not None:
                errors[kinds[task]] = error or ConnectionError("cancelled")
            else:
                return kinds[task], errors
    return None, errors


async def _discard(task: asyncio.Task[Any]) -> None:
    """Stop a dial that lost the race, closing what it connected."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        result = await task
        if isinstance(result, tuple):  # (reader, writer) of TCP
            result[1].close()
        else:  # a QUIC link
            result.close("lost the race to another transport")


def _split_requests(outputs: list[Output]) -> tuple[list[HandshakeRequest], list[Output]]:
    """The handshake requests among ``outputs`` (frames for a first flight), and the rest."""
    requests: list[HandshakeRequest] = []
    rest: list[Output] = []
    for output in outputs:
        if isinstance(output, Send) and isinstance(output.frame, HandshakeRequest):
            requests.append(output.frame)
        else:
            rest.append(output)
    return requests, rest
