"""Two session managers with real PQxdh keys and signed SQLite ledgers, talking over loopback
TCP through ``Relay``: an on-path attacker that sees every frame and can hold, replay, alter
and reorder them (for tests of transports/tcp.py and transports/sealed.py)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from l2_session.domain.config import DEFAULT_CONFIG, SessionConfig
from l2_session.domain.keyexchange_pqxdh import PqxdhKeyExchange
from l2_session.domain.manager import SessionManager
from l2_session.domain.session import Session
from l2_session.domain.session_channel import RESERVATION_BLOCK
from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.resolver import DidKeyResolver
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
) -> Side:  # fmt: skip
    store = KeyStore.create(tmp_path / f"{name}.keys")
    exchange = PqxdhKeyExchange.for_node(
        store.identity.did, store.identity.private_key, directory,
        now_us=clock.now_us(), valid_for_us=DAY_US,
    )  # fmt: skip
    ledger = SessionLedger(
        tmp_path / f"{name}.sqlite3", identity=store.identity, storage_key=store.storage_key
    )
    manager = SessionManager(store.identity.did, ledger, config, key_exchange=exchange)
    node = TcpNode(manager, clock.now_us, reservation_block=reservation_block)
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
) -> Pair:
    """Alice connects to Bob through the relay and establishes a session with him."""
    clock, directory = VirtualTime(), DidKeyResolver()
    alice = make_side(tmp_path, "alice", directory, clock, config, reservation_block)
    bob = make_side(tmp_path, "bob", directory, clock, config, reservation_block)
    server = await bob.node.serve()
    relay = Relay(server.sockets[0].getsockname()[1])
    await alice.node.connect(bob.did, "127.0.0.1", await relay.start())
    sid, outputs = alice.manager.establish(bob.did, clock.now_us())
    alice.node.perform(outputs)
    pair = Pair(alice, bob, relay, clock, server, conversation=sid)
    await until(lambda: _established(bob, sid) and _established(alice, sid))
    return pair


def _established(side: Side, conversation: UUID) -> bool:
    session = side.manager.session_for(conversation)
    return session is not None and session.state == "established"


async def until(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds, as the nodes and the relay handle frames."""
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.001)
