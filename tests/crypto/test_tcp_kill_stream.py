"""Exactly once, in order, across SIGKILL of a sender in mid-stream (real processes, real keys,
loopback TCP, signed SQLite ledgers at durability ``normal``).

Alice's process streams numbered messages to Bob through ``TcpNode.send`` — every message at
once, the node holding each until the session's window has room — and says which ones it has
been told are queued (their save returned). It is SIGKILLed twice: once with its whole window
unacknowledged (the relay holds what it sends, so no acknowledgement comes back), once at a
random moment. Each new process finds the session in its ledger, resumes it with fresh keys
and streams on from the first message its ledger does not hold. Bob, in the test process
behind an on-path relay, must deliver every message exactly once, in order: those the killed
processes had queued (acknowledged or not) and the rest.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import verify
from l2_session.infrastructure.resolver import DidKeyResolver
from tcp_support import Relay, VirtualTime, is_sealed, make_side, until

TOTAL, WINDOW = 120, 16

SENDER = textwrap.dedent(
    """
    import asyncio, json, sys, uuid
    from pathlib import Path
    from l2_session.domain.handshake.engine import HandshakeEngine
    from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
    from l2_session.domain.manager.manager import SessionManager
    from l2_session.domain.session.config import SessionConfig
    from l2_session.infrastructure.clock import SessionTimeline, SystemClock
    from l2_session.infrastructure.keystore import KeyStore
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.infrastructure.resolver import DidKeyResolver
    from l2_session.transports.tcp import TcpNode

    keys, ledger_path, bob, port, bundle, total, window, session_id = sys.argv[1:9]

    def say(**what):
        print(json.dumps(what), flush=True)

    async def main():
        store = KeyStore.load(keys)
        ledger = SessionLedger(
            ledger_path, identity=store.identity, storage_key=store.storage_key,
            durability="normal",
        )
        timeline = SessionTimeline(SystemClock())
        directory = DidKeyResolver()
        directory.publish_bundle(bob, Path(bundle).read_bytes(), timeline.now_us())
        exchange = PqxdhKeyExchange(
            HandshakeEngine(store.identity.private_key),
            fetch_bundle=directory.fetch_bundle,
            identity_key_of=lambda did: bytes(directory.resolve(did).identity_key),
        )
        config = SessionConfig(send_window=int(window))
        manager = SessionManager(store.identity.did, ledger, config, key_exchange=exchange)
        node = TcpNode(manager, timeline.now_us)  # finds the session a killed process left
        exchange.source_of = node.address_of
        node.start_timers()
        await node.connect(bob, "127.0.0.1", int(port))  # and resumes it
        sid = uuid.UUID(session_id) if session_id != "-" else await node.establish(bob)
        await node.until(lambda: manager.session(sid).state == "established", 10)
        first = await node.query(lambda: manager.session(sid).next_seq)
        say(session=str(sid), first=first)

        async def send(seq):
            await node.send(sid, b"message %d" % seq)
            say(queued=seq)

        await asyncio.gather(*(send(seq) for seq in range(first, int(total) + 1)))
        await node.until(lambda: not manager.session(sid).outbox, 30)
        say(done=True)
        await node.close()
        ledger.close()

    asyncio.run(main())
    """
)


class Sender:
    """One of Alice's processes, and what it said."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.queued: list[int] = []
        self.said: list[dict[str, Any]] = []
        self._reading = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while line := await self.process.stdout.readline():
            said = json.loads(line)
            self.said.append(said)
            if "queued" in said:
                self.queued.append(said["queued"])

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self._reading


def test_a_stream_killed_twice_in_flight_arrives_once_in_order(tmp_path: Path) -> None:
    KeyStore.create(tmp_path / "alice.keys")
    clock, directory, rng = VirtualTime(), DidKeyResolver(), random.Random(13)
    expected = [b"message %d" % n for n in range(1, TOTAL + 1)]

    async def run() -> list[Sender]:
        bob = make_side(tmp_path, "bob", directory, clock)
        responder = bob.manager._kx.engine.responder  # type: ignore[attr-defined]
        (tmp_path / "bob.bundle").write_bytes(responder.bundle.encode())
        bob.node.start_timers()
        server = await bob.node.serve()
        relay = Relay(server.sockets[0].getsockname()[1])
        port = await relay.start()
        senders: list[Sender] = []

        async def start(session: str) -> Sender:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SENDER, str(tmp_path / "alice.keys"),
                str(tmp_path / "alice.sqlite3"), bob.did, str(port), str(tmp_path / "bob.bundle"),
                str(TOTAL), str(WINDOW), session, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            senders.append(Sender(process))
            return senders[-1]

        def delivered() -> int:
            return len(bob.node.delivered)

        try:
            # 1. Killed with its window full and unacknowledged: what it sends is held.
            first = await start("-")
            await until(lambda: delivered() >= 10)
            relay.hold = is_sealed
            await until(lambda: len(first.queued) >= delivered() + WINDOW)
            await first.kill()
            relay.hold = None
            relay.held.clear()  # lost with the process, as on a network
            session = first.said[0]["session"]

            # 2. Killed at a random moment while it streams.
            second = await start(session)
            await until(lambda: any("first" in said for said in second.said))
            await until(lambda: delivered() >= 50)
            await asyncio.sleep(rng.random() * 0.1)
            await second.kill()

            # 3. To the end.
            third = await start(session)
            assert await asyncio.wait_for(third.process.wait(), timeout=60) == 0
            await third._reading
            await until(lambda: delivered() >= TOTAL)
            await asyncio.sleep(0.2)  # anything sent twice would arrive meanwhile
        finally:
            await relay.close()
            server.close()
            await bob.node.close()
        assert [d.payload for d in bob.node.delivered] == expected
        assert bob.node.sealed.refused["replayed"] == 0
        report = verify(bob.ledger)
        assert report.ok, report.summary()
        bob.ledger.close()
        return senders

    senders = asyncio.run(run())
    first, second, third = senders
    # The first process was killed with a window of queued, unacknowledged messages; each
    # process streamed on from the first message its ledger did not hold.
    assert len(first.queued) >= 10 + WINDOW
    # (A message saved just before the kill may not have been reported.)
    assert second.said[0]["first"] > max(first.queued)
    assert third.said[0]["first"] > max(second.queued, default=max(first.queued))
    assert third.said[-1] == {"done": True}
    alice = KeyStore.load(tmp_path / "alice.keys")
    ledger = SessionLedger(
        tmp_path / "alice.sqlite3", identity=alice.identity, storage_key=alice.storage_key
    )
    try:
        report = verify(ledger)
        assert report.ok, report.summary()
    finally:
        ledger.close()
