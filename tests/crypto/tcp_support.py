"""Two session managers with real PQxdh keys and signed SQLite ledgers, talking over loopback
TCP through ``Relay``: an on-path attacker that sees every frame and can hold, replay, alter
and reorder them (for tests of transports/tcp.py and transports/sealed.py).

Each node's manager belongs to the node's worker thread: a test changes it only through the
node (``establish``, ``send``, ``command``, ``query``) and waits on its sessions with
``node.until`` (checked on the worker, between batches). ``until`` here polls from the event
loop, for what the loop holds (deliveries, connections, counters)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from kem_counting import CountingKemKey, KemCounts
from l2_session.domain.handshake.bundle import PrekeyBundle
from l2_session.domain.handshake.protocol import InitiatorHandshake
from l2_session.domain.manager.channel import RESERVATION_BLOCK
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.domain.session.commands import HandshakeRequest
from l2_session.domain.session.config import DEFAULT_CONFIG, SessionConfig
from l2_session.domain.session.session import Session
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.application import Durability
from l2_session.infrastructure.ledger.witness import Witnessing
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.frames import encode
from l2_session.transports.sealed import SEALED_KIND
from l2_session.transports.tcp import TcpNode

DAY_US = 86_400_000_000
WAIT_S = 10  # a bound for waits that should end at once; never a measurement


class VirtualTime:
    """Real time plus the silences a test skips: one timeline for both nodes."""

    def __init__(self) -> None:
        self._start = time.time_ns() // 1000
        self._mono0 = time.monotonic_ns() // 1000
        self.skipped = 0

    def now_us(self) -> int:
        return self._start + self.skipped + time.monotonic_ns() // 1000 - self._mono0

    def skip(self, seconds: float) -> int:
        self.skipped += int(seconds * 1_000_000)
        return self.now_us()


class Relay:
    """Forwards a client's connection to a server frame by frame, recording each frame
    (length prefix included) in both directions. Frames to the server for which ``hold``
    answers True are kept in ``held`` instead; ``inject`` writes any bytes to the server."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.hold: Callable[[bytes], bool] | None = None
        self.held: list[bytes] = []
        self._upstream: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        return self.port

    @property
    def port(self) -> int:
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.server_port)
        self._upstream = up_writer
        self._writers += [writer, up_writer]
        (n,) = struct.unpack(">H", await reader.readexactly(2))
        up_writer.write(struct.pack(">H", n) + await reader.readexactly(n))  # the hello
        for task in (
            self._pump(reader, up_writer, self.to_server, holding=True),
            self._pump(up_reader, writer, self.to_client, holding=False),
        ):
            running = asyncio.ensure_future(task)
            self._tasks.add(running)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        log: list[bytes],
        holding: bool,
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                prefix = await reader.readexactly(4)
                frame = prefix + await reader.readexactly(struct.unpack(">I", prefix)[0])
                log.append(frame)
                if holding and self.hold is not None and self.hold(frame):
                    self.held.append(frame)
                else:
                    writer.write(frame)
        writer.close()

    def inject(self, data: bytes) -> None:
        assert self._upstream is not None, "no client connected yet"
        self._upstream.write(data)

    async def close(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()


def is_sealed(frame: bytes) -> bool:
    return frame[4] == SEALED_KIND


@dataclass
class Side:
    manager: SessionManager
    node: TcpNode
    store: KeyStore
    ledger: SessionLedger

    @property
    def did(self) -> str:
        return self.manager.local_did

    def session(self, conversation: UUID) -> Session:
        found = self.manager.session_for(conversation)
        assert found is not None
        return found


def make_side(
    tmp_path: Path, name: str, directory: DidKeyResolver, clock: VirtualTime,
    config: SessionConfig = DEFAULT_CONFIG, reservation_block: int = RESERVATION_BLOCK,
    *, node_options: dict[str, Any] | None = None, engine_options: dict[str, Any] | None = None,
    manager_options: dict[str, Any] | None = None, kem: KemCounts | None = None,
    durability: Durability = "full", witness_interval_s: float | None = None,
) -> Side:  # fmt: skip
    """A node with real keys (made, or those a side of that name made before) on its own
    signed SQLite ledger. ``kem`` counts the decapsulations its responder makes (the KEM
    work a request costs it)."""
    keys = tmp_path / f"{name}.keys"
    store = KeyStore.load(keys) if keys.exists() else KeyStore.create(keys)  # a restart: its keys
    exchange = PqxdhKeyExchange.for_node(
        store.identity.did, store.identity.private_key, directory,
        now_us=clock.now_us(), valid_for_us=DAY_US, engine_options=engine_options,
    )  # fmt: skip
    responder = exchange.engine.responder
    if kem is not None and responder is not None:
        responder.secrets = replace(
            responder.secrets, kem_prekey=CountingKemKey(responder.secrets.kem_prekey, kem)
        )
    ledger = SessionLedger(
        tmp_path / f"{name}.sqlite3", identity=store.identity, storage_key=store.storage_key,
        durability=durability,
    )  # fmt: skip
    manager = SessionManager(
        store.identity.did, ledger, config, key_exchange=exchange, **(manager_options or {})
    )
    options = dict(node_options or {})
    if witness_interval_s is not None:  # peers witness each other's ledgers (decision 25)
        gap = round(witness_interval_s * 1e6 / 2)  # a peer offers about once an interval
        options["witnessing"] = Witnessing(ledger, store.identity, min_gap_us=gap)
        options["witness_interval_s"] = witness_interval_s
    node = TcpNode(manager, clock.now_us, reservation_block=reservation_block, **options)
    exchange.source_of = node.address_of  # the engine keys its gate by address
    return Side(manager, node, store, ledger)


@dataclass
class Pair:
    alice: Side
    bob: Side
    relay: Relay
    clock: VirtualTime
    server: asyncio.Server
    conversation: UUID
    directory: DidKeyResolver

    async def close(self) -> None:
        await self.alice.node.close()
        await self.relay.close()
        self.server.close()
        await self.bob.node.close()
        for side in (self.alice, self.bob):
            side.ledger.close()


async def established_pair(
    tmp_path: Path,
    config: SessionConfig = DEFAULT_CONFIG,
    reservation_block: int = RESERVATION_BLOCK,
    durability: Durability = "full",
    witness_interval_s: float | None = None,
) -> Pair:
    """Alice connects to Bob through the relay and establishes a session with him."""
    clock, directory = VirtualTime(), DidKeyResolver()
    alice = make_side(tmp_path, "alice", directory, clock, config, reservation_block,
                      durability=durability, witness_interval_s=witness_interval_s)  # fmt: skip
    bob = make_side(tmp_path, "bob", directory, clock, config, reservation_block,
                    durability=durability, witness_interval_s=witness_interval_s)  # fmt: skip
    server = await bob.node.serve()
    relay = Relay(server.sockets[0].getsockname()[1])
    await alice.node.connect(bob.did, "127.0.0.1", await relay.start())
    sid = await alice.node.establish(bob.did)
    pair = Pair(alice, bob, relay, clock, server, sid, directory)
    await established(alice, sid)
    await established(bob, sid)
    return pair


def _established(side: Side, conversation: UUID) -> bool:
    session = side.manager.session_for(conversation)
    return session is not None and session.state == "established"


async def established(side: Side, conversation: UUID) -> None:
    """Until ``side``'s session of ``conversation`` is established, as its node's worker
    sees it after a batch — saved, and what the batch proved applied."""
    await side.node.until(lambda: _established(side, conversation), WAIT_S)


async def until(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds, as the nodes and the relay handle frames."""
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.001)


async def acknowledged(pair: Pair) -> None:
    """Until Bob acknowledged Alice's messages. A lone message is acknowledged after
    ``max_ack_delay`` (25 ms), by Bob's timer: these tests run the timers by hand, through
    each node's worker (the only thread that touches its manager)."""
    alice = pair.alice.session(pair.conversation)
    async with asyncio.timeout(WAIT_S):
        while await pair.alice.node.query(lambda: bool(alice.outbox)):
            await pair.bob.node.command(lambda: pair.bob.manager.tick(pair.clock.now_us()))
            await asyncio.sleep(0.001)


async def until_steady(condition: Callable[[], bool], polls: int = 3) -> None:
    """Until ``condition()`` holds on ``polls`` polls in a row: a connection the server cut
    keeps its socket until the loop's next turn, and its client sees it closed turns later."""
    async with asyncio.timeout(WAIT_S):
        held = 0
        while held < polls:
            held = held + 1 if condition() else 0
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------ an attacker's tools
def hello(did: str | bytes) -> bytes:
    """What a connection opens with: the DID it claims (``u16 length | UTF-8``)."""
    data = did.encode() if isinstance(did, str) else did
    return struct.pack(">H", len(data)) + data


def fresh_did() -> str:
    """A well-formed did:key of a key nobody here holds."""
    return NodeIdentity.generate().did


def request_frame(identity: NodeIdentity, bundle: PrekeyBundle, now_us: int) -> bytes:
    """A genuine INIT signed by ``identity`` to the owner of ``bundle``, as a frame: it
    passes every check of the responder, and costs it the DH and ML-KEM work."""
    _, init = InitiatorHandshake.start(identity.private_key, bundle, now_us=now_us)
    return encode(HandshakeRequest(uuid4(), init))


async def open_raw(
    port: int, data: bytes = b"", *, local_ip: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare connection to ``port`` from ``local_ip`` (any of 127.0.0.0/8), ``data`` sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local_ip, 0))
    if data:
        writer.write(data)
    return reader, writer


class Watched:
    """Client connections, each watched for the server closing it (``closed`` counts them)."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.closed = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        self._tasks.add(asyncio.ensure_future(self._until_closed(reader)))

    async def open(self, port: int, data: bytes = b"", *, local_ip: str = "127.0.0.1") -> None:
        self.add(*await open_raw(port, data, local_ip=local_ip))

    async def _until_closed(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1 << 16):
                pass
        self.closed += 1

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.sleep(0)


def held_connections(port: int) -> int:
    """Connections this process holds open on the server's side of ``port``: its sockets
    whose local port is ``port``, the listening one aside (Linux: /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local_port, state, inode = (
                    int(fields[1].rsplit(":", 1)[1], 16),
                    fields[3],
                    fields[9],
                )
                if local_port == port and state != "0A":  # 0A: LISTEN
                    inodes.add(inode)
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


def unread_bytes(port: int) -> int:
    """Bytes that reached the server's side of ``port`` and that this process has not read
    yet (the kernel's receive queues; Linux: /proc)."""
    unread = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != "0A":
                    unread += int(fields[4].split(":")[1], 16)
    return unread


@dataclass
class Attacked:
    """A server node (Bob) on loopback with real keys and its signed SQLite ledger, open to
    anyone; ``kem`` counts the decapsulations its handshakes cost it."""

    bob: Side
    port: int
    directory: DidKeyResolver
    clock: VirtualTime
    kem: KemCounts
    tmp_path: Path
    watched: Watched
    clients: list[Side]

    def request(self, identity: NodeIdentity) -> bytes:
        bundle = self.directory.fetch_bundle(self.bob.did, self.clock.now_us())
        return request_frame(identity, bundle, self.clock.now_us())

    async def flood(self, count: int, *, local_ip: Callable[[int], str] | None = None) -> None:
        """``count`` connections, each from a new identity (the ``i``-th from
        ``local_ip(i)``, else 127.0.0.1) with a genuine INIT that is never confirmed."""
        for i in range(count):
            identity = NodeIdentity.generate()
            request = hello(identity.did) + self.request(identity)
            await self.watched.open(
                self.port, request, local_ip=local_ip(i) if local_ip else "127.0.0.1"
            )

    async def tick(self, skip_s: float = 0) -> None:
        """Bob's timers, ``skip_s`` seconds later."""
        now = self.clock.skip(skip_s)
        await self.bob.node.command(lambda: self.bob.manager.tick(now))

    async def newcomer(self, name: str) -> tuple[Side, UUID]:
        """A legitimate peer connects (from 127.0.0.1), asks for a session and gets it —
        established at both ends — or the wait for it fails."""
        side = make_side(self.tmp_path, name, self.directory, self.clock)
        self.clients.append(side)
        await side.node.connect(self.bob.did, "127.0.0.1", self.port)
        return side, await self.another_session(side)

    async def another_session(self, side: Side) -> UUID:
        """A new session between ``side`` (connected already) and Bob, established."""
        sid = await side.node.establish(self.bob.did)
        await established(side, sid)
        await established(self.bob, sid)
        return sid


def run_attacked(
    tmp_path: Path,
    test: Callable[[Attacked], Coroutine[Any, Any, None]],
    *,
    node_options: dict[str, Any] | None = None,
    engine_options: dict[str, Any] | None = None,
    manager_options: dict[str, Any] | None = None,
) -> None:
    async def main() -> None:
        clock, directory, kem = VirtualTime(), DidKeyResolver(), KemCounts()
        bob = make_side(
            tmp_path, "bob", directory, clock, node_options=node_options,
            engine_options=engine_options, manager_options=manager_options, kem=kem,
        )  # fmt: skip
        server = await bob.node.serve()
        attacked = Attacked(
            bob, server.sockets[0].getsockname()[1], directory, clock, kem, tmp_path, Watched(), []
        )
        try:
            await test(attacked)
        finally:
            await attacked.watched.close()
            for client in attacked.clients:
                await client.node.close()
                client.ledger.close()
            server.close()
            await bob.node.close()
            bob.ledger.close()

    asyncio.run(main())
