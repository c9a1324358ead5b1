"""A node: its keys, its signed ledger and its transports, driven with asyncio.

This is the library's front door (``from l2_session import Node``). A ``Node`` puts together
what the layers beneath provide — the key store (``infrastructure.keystore``), the signed
ledger (``infrastructure.ledger``), the real post-quantum key exchange
(``domain.manager.pqxdh``), the sans-I/O ``SessionManager`` and the QUIC and μTCP transports
(``transports.tcp.TcpNode``) — and hands the application ``Session`` objects to send on and
read from.

SPEC-018 §5.2 maps onto ``Node`` one to one (its docstring says how).

Every step a session takes is saved, signed and chained, before anything it decided leaves
the node; a node opened again over the same key store and ledger recovers its sessions, and
``resume`` (or the peer's connection) carries them on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal
from uuid import UUID

from l2_session.domain.handshake.bundle import PrekeyBundle, PrekeySecrets, create_prekeys
from l2_session.domain.handshake.protocol import Responder
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange, new_prekey_id
from l2_session.domain.session.commands import Deliver
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import (
    AuthenticationFailed,
    FailureReason,
    KeyRotationFailed,
    NothingToResume,
    SessionClosed,
    SessionError,
    Timeout,
    TransportFailed,
    UnknownSession,
)
from l2_session.domain.session.session import Session as SessionAggregate
from l2_session.domain.session.states import FINAL, State
from l2_session.infrastructure.clock import SessionTimeline, SystemClock
from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.witness import MIN_GAP_US, Witnessing
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.quic import QuicSettings
from l2_session.transports.tcp import NodeClosed, TcpNode
from l2_session.transports.tcp_worker import WITNESS_INTERVAL_US

__all__ = ["CLOSED", "Addresses", "Message", "Node", "Session", "StateChange"]

log = logging.getLogger("l2_session.node")

CLOSED: Final = "closed"
"""The state a ``StateChange`` or ``Session.state`` names for a closed session (SPEC-018's
``[cleanup]``): its history stays in the ledger, it takes nothing more."""

PREKEYS_VALID_US = 30 * 86_400_000_000  # a month; fresh ones once half of it has passed
ONE_TIME_PREKEYS = 32
MAX_UNREAD = 4096  # messages delivered and not yet read, over all sessions, before reading stops
MAX_PENDING = 1024  # sessions established by peers and not yet accepted; state changes unread
WAIT_S = 10.0

_FAILURES: dict[str, type[SessionError]] = {
    FailureReason.TIMEOUT: Timeout,
    FailureReason.AUTHENTICATION_FAILED: AuthenticationFailed,
    FailureReason.TRANSPORT_FAILED: TransportFailed,
    FailureReason.KEY_ROTATION_FAILED: KeyRotationFailed,
}


# ---------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Addresses:
    """Where a node listens, as a peer dials it: QUIC (UDP) and μTCP (TCP) host and port;
    either may be ``None``. ``Addresses.parse("127.0.0.1:4433")`` means both on that port."""

    quic: tuple[str, int] | None = None
    tcp: tuple[str, int] | None = None

    @classmethod
    def parse(cls, text: str) -> Addresses:
        """``"HOST:PORT"``: QUIC and μTCP on the same host and port (``[::1]:4433`` for
        IPv6). ``ValueError`` naming what is wrong otherwise."""
        host, port = parse_host_port(text)
        return cls((host, port), (host, port))

    @classmethod
    def of(cls, given: Addresses | str | Mapping[str, Any]) -> Addresses:
        """``given`` as ``Addresses``: one already, ``"HOST:PORT"``, or a mapping with
        ``"quic"`` and/or ``"tcp"``, each ``"HOST:PORT"`` or ``(host, port)``."""
        if isinstance(given, Addresses):
            return given
        if isinstance(given, str):
            return cls.parse(given)
        if isinstance(given, Mapping) and given and set(given) <= {"quic", "tcp"}:
            quic, tcp = given.get("quic"), given.get("tcp")
            return cls(_address(quic, "quic"), _address(tcp, "tcp"))
        raise ValueError(
            f"addresses {given!r}: give Addresses, 'HOST:PORT', or {{'quic': ..., 'tcp': ...}}"
        )


@dataclass(frozen=True)
class Message:
    """A message delivered on a session: in order, exactly once, across restarts of either
    node (``seq`` counts them from 1 per session). Delivered means saved in this node's
    ledger, which happens before the application is handed it; a message saved and not yet
    taken by the application when its process died is not handed again after a restart —
    it stays in the ledger, and ``Session.delivered(after=seq)`` reads it back (decision 21
    in docs/spec-decisions.md)."""

    session_id: UUID
    seq: int
    data: bytes


@dataclass(frozen=True)
class StateChange:
    """A session moved from ``previous`` to ``state`` (a ``State`` value, or ``CLOSED``) at
    ``at_us`` (µs since the epoch, as the ledger records it). ``previous`` is ``None`` for a
    session this node had not seen move yet. ``reason``: a failed session's failure reason,
    a closed one's close reason."""

    session_id: UUID
    peer_did: str
    previous: str | None
    state: str
    at_us: int
    reason: str | None = None


# ---------------------------------------------------------------------------- sessions
class Session:
    """One session with a peer, as the application holds it (made by ``Node``; never
    constructed directly). Its history is in the node's ledger under ``id``."""

    def __init__(self, node: Node, session_id: UUID, peer_did: str, role: str, state: str):
        self._node = node
        self.id: UUID = session_id
        """The session's id: its aggregate's in the ledger (``audit replay --session``)."""
        self.peer_did: str = peer_did
        """The peer's DID (``did:key:z6Mk…``), proven by the handshake."""
        self.role: str = role
        """``"initiator"`` (this node established it) or ``"responder"``."""
        self._state = state
        self.failure_reason: str | None = None
        """Why it last failed (a ``FailureReason`` value), if it did."""
        self._transport: str | None = None
        self._inbox: deque[Message] = deque()
        self._offered = False  # handed to accept()
        self._arrived = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Session {self.id} with {self.peer_did} {self._state}>"

    @property
    def state(self) -> str:
        """The latest state saved for it: a ``State`` value, or ``CLOSED``."""
        return self._state

    @property
    def closed(self) -> bool:
        """Whether it is closed (by either end): it takes nothing more."""
        return self._state == CLOSED

    async def send(self, data: bytes) -> None:
        """Queue ``data`` to the peer; return once the message is saved in the ledger. From
        then on it is delivered exactly once, in order, into the peer's ledger, across
        restarts of either node, and handed to the peer's application after that (see
        ``Message``) — while the session is not established it waits, queued, and leaves
        when it is.
        Waits while the session's send window is full (backpressure). Raises
        ``MessageTooLarge``, ``SessionClosed``, or ``NodeClosed``; cancelled while it
        waits for room, the message is not queued."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send takes bytes, got {type(data).__name__}")
        await self._node._transport.send(self.id, bytes(data))

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message the peer sent on this session. ``SessionClosed`` once the session
        is closed and every message before the close was read; ``TimeoutError`` after
        ``timeout`` seconds, if given."""
        async with asyncio.timeout(timeout):
            while not self._inbox:
                if self.closed:
                    raise SessionClosed("receive()")
                self._arrived.clear()
                await self._arrived.wait()
        message = self._inbox.popleft()
        if not self.closed:  # a closed session's messages no longer count (Node._changed)
            self._node._taken()
        return message

    async def delivered(self, after: int = 0, limit: int = 1_000) -> list[Message]:
        """The messages of this session saved in this node's ledger with ``seq`` above
        ``after``, in order, at most ``limit`` of them: ``Node.delivered`` for this
        session."""
        return await self._node.delivered(self.id, after=after, limit=limit)

    def __aiter__(self) -> AsyncIterator[Message]:
        """``async for message in session``: every message, in order, until it is closed."""
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        """Every message, as it comes, until the session is closed."""
        while True:
            try:
                yield await self.receive()
            except SessionClosed:
                return

    async def wait(self, state: str, timeout: float = WAIT_S) -> None:
        """Until the session is in ``state`` (a ``State``, or ``CLOSED``); ``TimeoutError``
        after ``timeout`` seconds; ``SessionClosed`` if it closes first."""
        await self._node._until(self, lambda s: s == state, timeout)
        if self._state != state:
            raise SessionClosed(f"wait({state})")

    async def close(self, timeout: float = 5.0) -> None:
        """Close the session, telling the peer (SPEC-018 ``[cleanup]``); return once the
        close is saved. Closing a closed session does nothing."""
        if self.closed:
            return
        node = self._node
        with contextlib.suppress(SessionClosed):
            await node._transport.command(lambda: node.manager.close(self.id, node._now_us()))
        await node._until(self, lambda s: s == CLOSED, timeout)

    # the node's side
    def _moved(self, change: StateChange, transport: str | None) -> None:
        self._state = change.state
        if change.state == State.FAILED:
            self.failure_reason = change.reason
        self._transport = transport or self._transport
        self._arrived.set()

    def _delivered(self, message: Message) -> None:
        self._inbox.append(message)
        self._arrived.set()

    @property
    def transport(self) -> str | None:
        """What carries it: ``"quic"`` or ``"utcp"`` (decisions 20, 24), ``None`` until known;
        it follows the session's moves between them as each is saved."""
        return self._transport


# ---------------------------------------------------------------------------- nodes
class Node:
    """A node: one identity, one ledger, QUIC and μTCP listeners, its sessions.

    Open one with ``Node.open`` (an async context manager)::

        async with Node.open(identity="alice.keys", ledger="alice.sqlite3",
                             listen="127.0.0.1:4433") as node:
            session = await node.establish(bob_did, addresses="127.0.0.1:4434")
            await session.send(b"hello")

    SPEC-018 §5.2 maps onto it one to one:

    - ``establish(peer_did, config, ctx)``: ``await node.establish(peer_did,
      addresses=...)`` dials the peer (QUIC, μTCP beside it: §2.3), does the handshake and
      returns once the session is ``established``. ``config`` is the node's
      (``Node.open(config=...)``); ``ctx`` is the node itself.
    - ``accept(request, config, ctx)``: ``await node.accept()`` returns the next session a
      peer's request established with this node (requests are answered as they arrive;
      ``accept`` hands the application the result).
    - ``resume(peer_did, stored, ctx)``: ``await node.resume(peer_did)``; ``stored`` is the
      ledger: the session a restart (or a lost link) left suspended is established again
      with fresh keys.
    - ``tick(sessions, ctx)``: done by the node, whose timer task ticks the manager at every
      deadline.
    - ``State``, ``SessionError``: ``session.state``, ``node.state_changes()``; the
      ``SessionError`` family, exported here.

    A session then carries messages: ``await session.send(data)``, ``async for message in
    session``, ``await session.close()``.

    Its keys are real: X25519 + ML-KEM-768 handshakes authenticated by the node's Ed25519
    identity. (Simulations without sockets run the sans-I/O ``SessionManager`` with
    ``key_exchange="mock"`` and ``transports.mock.MockTransport``.)
    """

    def __init__(
        self,
        keys: KeyStore,
        ledger: SessionLedger,
        *,
        config: SessionConfig | None = None,
        quic_settings: QuicSettings | None = None,
        witness_interval_s: float = WITNESS_INTERVAL_US / 1e6,
        owns_ledger: bool = False,
    ) -> None:
        """A node over a key store and a ledger opened with its identity and storage key
        (``Node.open`` does both from paths, and listens). ``owns_ledger``: ``close`` closes
        the ledger too. The node starts working at its first ``await``."""
        if not isinstance(keys, KeyStore):
            raise TypeError(f"keys must be a KeyStore, got {type(keys).__name__}")
        if not isinstance(ledger, SessionLedger):
            raise TypeError(f"ledger must be a SessionLedger, got {type(ledger).__name__}")
        if ledger.identity is None or ledger.identity.did != keys.identity.did:
            raise ValueError("the ledger must be opened with the key store's identity")
        self.keys = keys
        self.ledger = ledger
        self._owns_ledger = owns_ledger
        self.timeline = SessionTimeline(SystemClock())
        self.directory = DidKeyResolver()
        now = self.timeline.now_us()
        identity = keys.identity
        secrets, bundle = node_prekeys(keys, now)
        self.bundle: bytes = bundle.encode()
        """This node's prekey bundle: what a peer needs to open a session with it (a node
        asks its peer for it over the connection when nobody handed it over)."""
        self.directory.publish_bundle(identity.did, self.bundle, now)
        exchange = PqxdhKeyExchange.with_prekeys(
            identity.private_key, Responder(identity.private_key, secrets, bundle), self.directory
        )
        exchange.on_prekeys_changed = keys.set_prekeys  # a spent one-time prekey
        self.manager = SessionManager(
            identity.did, ledger, config or SessionConfig(), key_exchange=exchange
        )
        """The sans-I/O ``SessionManager`` beneath (it belongs to the node's worker thread:
        call it only through ``transport.query`` / ``transport.command``)."""
        self._transport = TcpNode(
            self.manager, self.timeline.now_us,
            serve_bundle=self._serve_bundle,
            publish_bundle=self.directory.publish_bundle,
            # Beside the key store, as private: a restart resumes QUIC in 0-RTT with them.
            quic_tickets=keys.path.with_name(keys.path.name + ".quic-tickets"),
            quic_settings=quic_settings,
            # Its peers witness its ledger and it theirs, over their sessions (decision 25).
            witnessing=Witnessing(
                ledger, identity,
                min_gap_us=min(MIN_GAP_US, round(witness_interval_s * 1e6 / 2)),
            ),
            witness_interval_s=witness_interval_s,
        )  # fmt: skip
        exchange.source_of = self._transport.address_of  # rate limits by source address
        self.addresses = Addresses()
        """Where this node listens (``listen``), the ports as bound. A wildcard host
        (``0.0.0.0``, ``::``) is given as it is: peers elsewhere dial a host they can reach."""
        self.peers: dict[str, Addresses] = {}
        """The address book: where each peer was dialled, for ``resume`` and redials."""
        self._sessions: dict[UUID, Session] = {}
        # State changes saved on the worker, told on the loop after their stage's outcome.
        self._saved_changes: deque[tuple[StateChange, str, str | None]] = deque()
        self._closed_lately: OrderedDict[UUID, Session] = OrderedDict()  # the latest 1,024
        # On the worker: each session's last saved state and the transport it was saved over;
        # a move without a change of state (a fallback, a move back to QUIC: decision 24) is
        # told to its handle on the loop.
        self._last: dict[UUID, tuple[str, str]] = {}
        self._saved_moves: deque[tuple[UUID, str]] = deque()
        self._accepted: deque[Session] = deque(maxlen=MAX_PENDING)
        self._accept_ready = asyncio.Event()
        self._watchers: weakref.WeakSet[_Watcher] = weakref.WeakSet()  # dropped: gone
        self._waiters: dict[UUID, list[asyncio.Future[None]]] = {}
        self._unread = 0
        self._room = asyncio.Event()
        self._room.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._servers: list[asyncio.Server] = []
        self._closed = False
        for s in self.manager.sessions():  # recovered: suspended, waiting for their peers
            state = _state_name(s)
            self._last[s.id] = (state, s.transport)
            recovered = self._sessions[s.id] = Session(self, s.id, s.peer_did, s.role, state)
            recovered._transport = s.transport
            recovered._offered = True  # an old session: not new for accept()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        *,
        identity: str | os.PathLike[str] | KeyStore,
        ledger: str | os.PathLike[str],
        listen: str | Addresses | None = None,
        config: SessionConfig | None = None,
        durability: Literal["full", "normal"] = "full",
        quic_settings: QuicSettings | None = None,
    ) -> _Opening:
        """Open a node: ``async with Node.open(...) as node:`` (or ``node = await
        Node.open(...)``, then ``await node.close()``).

        - ``identity``: the key store file (created, owner-only, if it does not exist: a
          fresh Ed25519 identity, its ``did:key`` and the ledger's storage key), or a
          ``KeyStore``;
        - ``ledger``: a SQLite file (created if it does not exist) or a PostgreSQL URL;
          sessions a previous process left live are recovered from it;
        - ``listen``: ``"HOST:PORT"`` to serve QUIC (UDP) and μTCP (TCP) on that port (port
          0: one free port for both, if it is free for both), or ``Addresses`` for each;
          ``None`` to only dial;
        - ``config``: the ``SessionConfig`` of its sessions; ``durability``: ``"full"``
          (fsync per save) or ``"normal"``.

        Exits close the node with its sessions left resumable."""
        return _Opening(cls, identity, ledger, listen, config, durability, quic_settings)

    async def _start(self, listen: Addresses | None) -> None:
        self._loop = asyncio.get_running_loop()
        self.ledger.on_saved.append(self._saved)
        self._transport.on_outcome = self._after_outcome
        transport = self._transport
        try:
            quic = tcp = None
            if listen is not None and listen.quic is not None:
                with _naming("QUIC (UDP)", listen.quic):
                    quic = await transport.serve_quic(*listen.quic)
            if listen is not None and listen.tcp is not None:
                host, port = listen.tcp
                server = None
                if port == 0 and quic is not None and host == listen.quic[0]:  # type: ignore[index]
                    with contextlib.suppress(OSError):  # the same number, if free over TCP
                        server = await transport.serve(host, quic[1])
                if server is None:
                    with _naming("μTCP (TCP)", listen.tcp):
                        server = await transport.serve(host, port)
                self._servers.append(server)
                tcp = server.sockets[0].getsockname()[:2]
            self.addresses = Addresses(quic, tcp)
            transport.start_timers()
            self._tasks.append(asyncio.ensure_future(self._pump()))
        except BaseException:
            await self.close()
            raise

    # ------------------------------------------------------------------ the application
    @property
    def did(self) -> str:
        """This node's DID (``did:key:z6Mk…``, from its Ed25519 identity)."""
        return self.keys.identity.did

    @property
    def transport(self) -> TcpNode:
        """The transports beneath (``transports.tcp.TcpNode``), for what this class does not
        offer: counters, ``query`` and ``command`` on the manager."""
        return self._transport

    async def establish(
        self,
        peer_did: str,
        *,
        addresses: Addresses | str | Mapping[str, Any] | None = None,
        bundle: bytes | None = None,
        timeout: float = WAIT_S,
    ) -> Session:
        """A new session with ``peer_did``, once it is ``established`` (SPEC-018 §5.2
        ``establish``). The peer is dialled at ``addresses`` (QUIC first, μTCP if QUIC does
        not connect within its head start: §2.3) unless a connection to it is up; its prekey
        bundle is ``bundle`` if given, else asked of the peer over the connection.
        Raises the ``SessionError`` of the failure (``AuthenticationFailed``, ``Timeout``,
        ...), ``ConnectionError`` if the peer could not be reached, ``TimeoutError`` after
        ``timeout`` seconds (the session goes on trying: it is in ``sessions()``)."""
        _check_did(peer_did)
        if peer_did == self.did:
            raise ValueError(f"{peer_did} is this node: a session needs another node")
        async with _within(timeout, f"no session established with {peer_did}"):
            if bundle is not None:
                self.directory.publish_bundle(peer_did, bytes(bundle), self._now_us())
            await self._connect(peer_did, addresses)
            session_id = await self._transport.establish(peer_did)
            session = self._handle(session_id, peer_did, "initiator")
            await self._until(session, lambda s: s in (State.ESTABLISHED, State.FAILED, CLOSED))
        _raise_unless_established(session, self)
        return session

    async def accept(self, timeout: float | None = None) -> Session:
        """The next session a peer established with this node (SPEC-018 §5.2 ``accept``),
        once it is ``established``. Up to 1,024 wait to be accepted (the oldest are dropped
        from this queue beyond that; they run on, in ``sessions()``)."""
        async with _within(timeout, "no peer established a session with this node"):
            while not self._accepted:
                self._check_open()
                self._accept_ready.clear()
                await self._accept_ready.wait()
        return self._accepted.popleft()

    async def resume(
        self,
        peer_did: str,
        *,
        addresses: Addresses | str | Mapping[str, Any] | None = None,
        timeout: float = WAIT_S,
    ) -> Session:
        """The session with ``peer_did`` that a restart (or a lost connection) left
        suspended, ``established`` again with fresh keys from its stored secret (SPEC-018
        §5.2 ``resume``; decision 16). The peer is dialled at ``addresses`` (or where it was
        dialled before). ``NothingToResume`` if no live session with the peer is known."""
        _check_did(peer_did)
        live = [s for s in self._sessions.values() if s.peer_did == peer_did and not s.closed]
        if not live:
            raise NothingToResume(f"no live session with {peer_did} to resume")
        session = live[-1]
        async with _within(timeout, f"session {session.id} with {peer_did} not resumed"):
            if session.state != State.ESTABLISHED:
                await self._connect(peer_did, addresses)
            await self._until(session, lambda s: s in (State.ESTABLISHED, CLOSED))
        _raise_unless_established(session, self)
        return session

    def sessions(self) -> list[Session]:
        """The sessions not closed, in the order this node learnt of them."""
        return [s for s in self._sessions.values() if not s.closed]

    def session(self, session_id: UUID) -> Session:
        """The live session ``session_id``; ``UnknownSession`` if there is none."""
        found = self._sessions.get(session_id)
        if found is None or found.closed:
            raise UnknownSession(session_id)
        return found

    async def delivered(
        self, session_id: UUID, *, after: int = 0, limit: int = 1_000
    ) -> list[Message]:
        """The messages of session ``session_id`` saved in this node's ledger with ``seq``
        above ``after``, in order, at most ``limit`` of them — live or closed, whether or not
        this process made a handle for it. The way back to a message that was saved but not
        yet taken when the node's process died, which ``receive`` does not hand again
        (``Message``): an application that keeps the ``seq`` of the last message it handled,
        with what it did with it, asks for those after it when it starts again, and takes
        each ``seq`` once — ``receive`` hands the messages saved since this process started,
        some of which this may return too. Read from the ledger on the node's worker, newest
        first, back to ``after``. ``UnknownSession`` if the ledger holds no such session."""
        if not isinstance(session_id, UUID):
            raise TypeError(f"session_id must be a UUID, got {type(session_id).__name__}")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be a seq (an int >= 0), got {after!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        self._check_open()

        def read() -> list[Message]:
            found: list[Message] = []
            seen = False
            for event in self.ledger.events.get(session_id, desc=True):
                seen = True
                if isinstance(event, SessionAggregate.MessageDelivered):
                    if event.seq <= after:
                        break
                    found.append(Message(session_id, event.seq, event.payload))
            if not seen:
                raise UnknownSession(session_id)
            return found[::-1][:limit]

        return await self._transport.query(read)

    def state_changes(self) -> AsyncIterator[StateChange]:
        """Every state change of every session, in the order saved, from this call on (the
        iterator listens as soon as it is made: ``changes = node.state_changes()`` before
        ``establish`` misses none of its changes). It ends when the node closes. Memory is
        bounded: a reader that falls 1,024 changes behind loses the oldest (the ledger keeps
        them all: ``l2-session audit timeline``); an iterator dropped stops listening."""
        return _Watcher(self)

    async def close(self, *, end_sessions: bool = False) -> None:
        """Stop the node. Its sessions stay resumable (a node opened over the same files
        carries them on) unless ``end_sessions``: then each is closed and its peer told.
        The ledger is closed if the node opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._transport.close(end_sessions=end_sessions)
        with contextlib.suppress(ValueError):
            self.ledger.on_saved.remove(self._saved)
        if self._owns_ledger:
            self.ledger.close()
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self._accept_ready.set()
        for watcher in self._watchers:
            watcher.ready.set()
        for session in self._sessions.values():
            session._arrived.set()

    # ------------------------------------------------------------------ inside
    def _now_us(self) -> int:
        return self.timeline.now_us()

    def _check_open(self) -> None:
        if self._closed:
            raise NodeClosed("the node is closed")

    def _serve_bundle(self) -> bytes:
        """This node's bundle for one asker: with one of its one-time prekeys, never handed
        to another (none once the pool is spent: the handshake then goes without)."""
        return bytes(self.directory.directory.take(self.did).encode())

    async def connect(
        self,
        peer_did: str,
        *,
        addresses: Addresses | str | Mapping[str, Any] | None = None,
        timeout: float = WAIT_S,
    ) -> None:
        """What a session with ``peer_did`` needs of the network: a connection — dialled at
        ``addresses`` (kept in ``peers``), else where ``peers`` says, unless one is up — and
        the peer's prekey bundle, asked of it over the connection unless this node has it.
        ``establish`` and ``resume`` do this themselves; a node that dials by other means
        (``transport.dial``) calls it so that a session whose resumption the peer refuses
        can fall back to a full handshake (decision 16). ``ConnectionError`` without an
        address or a connection; ``TimeoutError`` after ``timeout`` seconds."""
        _check_did(peer_did)
        async with _within(timeout, f"no connection to {peer_did} with its bundle"):
            await self._connect(peer_did, addresses)

    async def _connect(
        self, peer_did: str, given: Addresses | str | Mapping[str, Any] | None
    ) -> None:
        if given is not None:
            self.peers[peer_did] = Addresses.of(given)
        transport = self._transport
        connected = await transport.query(lambda: transport.worker.transport_to(peer_did))
        if connected is None:
            book = self.peers.get(peer_did)
            if book is None:
                raise ConnectionError(
                    f"no connection to {peer_did} and no address for it: give addresses=..."
                )
            await transport.dial(peer_did, quic=book.quic, tcp=book.tcp)
        if peer_did not in self.directory.directory:
            # Its prekey bundle, asked of it over the connection: what a full handshake needs
            # — a new session's, or the one a refused resumption falls back to.
            await transport.fetch_bundle(peer_did)

    def _handle(self, session_id: UUID, peer_did: str, role: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            state = self._last.get(session_id, (State.IDLE, ""))[0]
            session = self._sessions[session_id] = Session(self, session_id, peer_did, role, state)
        return session

    async def _until(
        self, session: Session, done: Callable[[str], bool], timeout: float | None = None
    ) -> None:
        assert self._loop is not None
        async with asyncio.timeout(timeout):
            while not done(session.state):
                self._check_open()
                future = self._loop.create_future()
                self._waiters.setdefault(session.id, []).append(future)
                try:
                    await future
                finally:
                    waiting = self._waiters.get(session.id)
                    if waiting is not None and future in waiting:
                        waiting.remove(future)
                        if not waiting:
                            del self._waiters[session.id]

    def _saved(self, processing: Any) -> None:
        """On the saving thread, after each save: the state changes it recorded, posted to
        the loop in the order saved."""
        changes: list[tuple[StateChange, str, str | None]] = []
        moves: list[tuple[UUID, str]] = []
        last = self._last
        for event in processing.events:
            sid = event.originator_id
            aggregate = processing.aggregates.get(sid)
            if not isinstance(aggregate, SessionAggregate):
                continue
            state = getattr(event, "state", None)
            if state is None and not isinstance(event, SessionAggregate.Opened):
                continue
            name = State.IDLE.value if state is None else CLOSED if state == FINAL else str(state)
            previous, carried = last.get(sid, (None, None))
            transport = aggregate.transport
            if name == previous:
                if carried != transport:
                    last[sid] = (name, transport)
                    moves.append((sid, transport))
                continue
            if name == CLOSED:
                last.pop(sid, None)
            else:
                last[sid] = (name, transport)
            reason = getattr(event, "reason", None) or (
                aggregate.failure_reason if name == State.FAILED else None
            )
            at_us = event.at_us
            change = StateChange(sid, aggregate.peer_did, previous, name, at_us, reason)
            changes.append((change, aggregate.role, transport))
        # Told on the loop after the outcome of the stage that saved them: the messages it
        # delivered reach their sessions first (a session's last messages before its close
        # are read before it says it is closed).
        self._saved_moves.extend(moves)
        self._saved_changes.extend(changes)

    def _after_outcome(self) -> None:
        """On the loop, once a stage's outcome is applied: the state changes saved by then,
        and the moves between transports saved without one."""
        while self._saved_moves:
            sid, transport = self._saved_moves.popleft()
            if (moved := self._sessions.get(sid)) is not None:
                moved._transport = transport
        if not self._saved_changes:
            return
        changes = []
        while self._saved_changes:
            changes.append(self._saved_changes.popleft())
        if any(change.state == CLOSED for change, _, _ in changes):
            for delivered in self._transport.take_delivered():
                self._deliver(delivered)
        self._changed(changes)

    def _changed(self, changes: list[tuple[StateChange, str, str | None]]) -> None:
        """On the loop: sessions moved."""
        for change, role, transport in changes:
            sid = change.session_id
            session = self._handle(sid, change.peer_did, role)
            session._moved(change, transport)
            if change.state == State.ESTABLISHED and role == "responder" and not session._offered:
                session._offered = True  # a peer's new session: for accept(), once
                self._accepted.append(session)
                self._accept_ready.set()
            for future in self._waiters.pop(sid, []):
                if not future.done():
                    future.set_result(None)
            for watcher in self._watchers:
                watcher.add(change)
            if change.state == CLOSED:
                # Its handle keeps what was not read yet; the node stops counting it (a
                # closed session's messages hold no connection back).
                closed = self._sessions.pop(sid)
                self._unread -= len(closed._inbox)
                if self._unread < MAX_UNREAD // 2:
                    self._room.set()
                # A message decided with the close reaches its handle after this.
                self._closed_lately[sid] = closed
                while len(self._closed_lately) > MAX_PENDING:
                    self._closed_lately.popitem(last=False)

    async def _pump(self) -> None:
        """Messages from the transports to their sessions, while fewer than ``MAX_UNREAD``
        wait to be read (beyond, the transports stop reading: backpressure to the peers)."""
        transport = self._transport
        while True:
            while self._unread >= MAX_UNREAD:
                self._room.clear()
                await self._room.wait()
            delivered = await transport.receive()
            sid = delivered.session_id
            if sid not in self._sessions and sid not in self._closed_lately:
                # A session learnt of before its first state change: ask the manager.
                peer, role = await transport.query(
                    lambda: (self.manager.session(sid).peer_did, self.manager.session(sid).role)  # noqa: B023
                )
                self._handle(sid, peer, role)
            self._deliver(delivered)

    def _deliver(self, delivered: Deliver) -> None:
        """A message to its session's handle (a session closed lately: to the handle the
        application may still read)."""
        message = Message(delivered.session_id, delivered.seq, delivered.payload)
        session = self._sessions.get(delivered.session_id)
        if session is not None:
            self._unread += 1
            session._delivered(message)
        elif (late := self._closed_lately.get(delivered.session_id)) is not None:
            late._delivered(message)

    def _taken(self) -> None:
        self._unread -= 1
        if self._unread < MAX_UNREAD // 2:
            self._room.set()


class _Watcher:
    """What ``Node.state_changes`` returns: the changes saved since it was made."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.changes: deque[StateChange] = deque()
        self.ready = asyncio.Event()
        node._watchers.add(self)

    def add(self, change: StateChange) -> None:
        if len(self.changes) >= MAX_PENDING:
            self.changes.popleft()
        self.changes.append(change)
        self.ready.set()

    def __aiter__(self) -> _Watcher:
        return self

    async def __anext__(self) -> StateChange:
        while not self.changes:
            if self._node._closed:
                raise StopAsyncIteration
            self.ready.clear()
            await self.ready.wait()
        return self.changes.popleft()


class _Opening:
    """What ``Node.open`` returns: ``async with`` it, or ``await`` it."""

    def __init__(self, cls: type[Node], *args: Any) -> None:
        self._cls, self._args = cls, args
        self._node: Node | None = None

    async def _open(self) -> Node:
        identity, location, listen, config, durability, quic_settings = self._args
        listening = None if listen is None else Addresses.of(listen)
        if durability not in ("full", "normal"):
            raise ValueError(f"durability {durability!r}: 'full' or 'normal'")
        if isinstance(identity, KeyStore):
            keys = identity
        elif isinstance(identity, str | os.PathLike):
            path = Path(identity)
            keys = KeyStore.load(path) if path.exists() else KeyStore.create(path)
        else:
            raise TypeError(f"identity must be a key store path or a KeyStore, got {identity!r}")
        if not isinstance(location, str | os.PathLike):
            raise TypeError(f"ledger must be a SQLite path or a PostgreSQL URL, got {location!r}")
        ledger = SessionLedger(
            os.fspath(location), identity=keys.identity, storage_key=keys.storage_key,
            durability=durability,
        )  # fmt: skip
        try:
            node = self._cls(
                keys, ledger, config=config, quic_settings=quic_settings, owns_ledger=True,
            )  # fmt: skip
        except BaseException:
            ledger.close()
            raise
        await node._start(listening)
        return node

    def __await__(self) -> Generator[Any, None, Node]:
        return self._open().__await__()

    async def __aenter__(self) -> Node:
        self._node = await self._open()
        return self._node

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._node is not None:
            await self._node.close()


# ---------------------------------------------------------------------------- helpers
def node_prekeys(store: KeyStore, now_us: int) -> tuple[PrekeySecrets, PrekeyBundle]:
    """The prekeys a node publishes: those of its key store while they have more than half
    their life left — the same bundle as before a restart, less the one-time prekeys spent
    since — else fresh ones, kept in the key store before they are published."""
    kept = store.prekeys
    if kept is not None and kept.expires_at_us - now_us > PREKEYS_VALID_US // 2:
        return create_prekeys(  # the stored keys: Ed25519 signs them as it did before
            store.identity.private_key, expires_at_us=kept.expires_at_us,
            signed_prekey_id=kept.signed_prekey_id, kem_prekey_id=kept.kem_prekey_id,
            signed_prekey=kept.signed_prekey, kem_prekey=kept.kem_prekey,
            one_time_prekeys=kept.one_time_prekeys,
        )  # fmt: skip
    secrets, bundle = create_prekeys(
        store.identity.private_key,
        expires_at_us=now_us + PREKEYS_VALID_US,
        signed_prekey_id=new_prekey_id(),
        kem_prekey_id=new_prekey_id(),
        one_time_prekey_ids=tuple(range(1, ONE_TIME_PREKEYS + 1)),
    )
    store.set_prekeys(secrets)
    return secrets, bundle


def _state_name(session: SessionAggregate) -> str:
    return CLOSED if session.closed else str(session.state)


def _raise_unless_established(session: Session, node: Node) -> None:
    node._check_open()
    if session.state == State.ESTABLISHED:
        return
    if session.closed:
        raise SessionClosed("establish()")
    reason = session.failure_reason
    raise _FAILURES.get(reason or "", SessionError)(
        f"session {session.id} with {session.peer_did} is {session.state}"
        + (f": {reason}" if reason else "")
    )


@contextlib.contextmanager
def _naming(what: str, address: tuple[str, int]) -> Generator[None, None, None]:
    """An error to listen says where it could not."""
    try:
        yield
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot listen for {what} on {address[0]}:{address[1]}: {error.strerror or error}",
        ) from error


@contextlib.asynccontextmanager
async def _within(timeout: float | None, what: str) -> AsyncIterator[None]:
    """``asyncio.timeout``, its ``TimeoutError`` saying what did not happen in time."""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if not deadline.expired():
            raise  # a TimeoutError of something inside, which says what
        raise TimeoutError(f"{what} within {timeout:g} s") from None


def _check_did(did: object) -> None:
    if not isinstance(did, str) or not did.startswith("did:"):
        raise ValueError(f"peer {did!r} is not a DID (did:key:z6Mk…)")


def parse_host_port(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:PORT"`` for IPv6) as ``(host, port)``; ``ValueError`` naming
    what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {text!r}: give HOST:PORT, with a port of 0 to 65535")
    return host.strip("[]"), int(port)


def _address(value: Any, kind: str) -> tuple[str, int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_host_port(value)
    if (
        isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[0], str)
        and isinstance(value[1], int) and not isinstance(value[1], bool)
    ):  # fmt: skip
        return value[0], value[1]
    raise ValueError(f"{kind} address {value!r}: give 'HOST:PORT' or (host, port)")
