"""Decision 16 with real parts: a node process holding established sessions (real PQxdh keys,
loopback TCP, a signed SQLite ledger) is SIGKILLed and started again over the same ledger.
Nobody tells the new process which sessions it had: it finds them, records the restart,
resumes each with fresh keys when it reaches the peer, and every message — the ones it had
sent that were never acknowledged, and the ones its peer sent while it was down — arrives
once. No key of the killed process is used after the kill, and both ledgers verify.

Bob runs in the test process, behind an on-path relay that logs (and, on demand, holds) every
frame Alice's process sends him.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any
from uuid import UUID

from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import verify
from l2_session.infrastructure.resolver import DidKeyResolver
from tcp_support import WAIT_S, Relay, VirtualTime, is_sealed, make_side, until
from test_sealed_kill import _records

SESSIONS = 2

ALICE = textwrap.dedent(
    """
    import asyncio, json, sys, uuid
    from pathlib import Path
    from l2_session.domain.handshake.engine import HandshakeEngine
    from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
    from l2_session.domain.manager.manager import SessionManager
    from l2_session.infrastructure.clock import SessionTimeline, SystemClock
    from l2_session.infrastructure.keystore import KeyStore
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.infrastructure.resolver import DidKeyResolver
    from l2_session.transports.tcp import TcpNode

    keys, ledger_path, bob, port, bundle, mode, count = sys.argv[1:8]

    def say(**what):
        print(json.dumps(what), flush=True)

    async def main():
        store = KeyStore.load(keys)
        ledger = SessionLedger(ledger_path, identity=store.identity, storage_key=store.storage_key)
        timeline = SessionTimeline(SystemClock())
        directory = DidKeyResolver()
        directory.publish_bundle(bob, Path(bundle).read_bytes(), timeline.now_us())
        exchange = PqxdhKeyExchange(
            HandshakeEngine(store.identity.private_key),
            fetch_bundle=directory.fetch_bundle,
            identity_key_of=lambda did: bytes(directory.resolve(did).identity_key),
        )
        manager = SessionManager(store.identity.did, ledger, key_exchange=exchange)
        node = TcpNode(manager, timeline.now_us)
        exchange.source_of = node.address_of
        if mode == "again":  # before connecting: what the node made of its ledger by itself
            ids = [uuid.UUID(i) for i in sys.argv[8].split(",")]
            found, states = len(manager), [manager.session(i).state for i in ids]
        node.start_timers()
        await node.connect(bob, "127.0.0.1", int(port))
        if mode == "first":
            ids = [await node.establish(bob) for _ in range(int(count))]
        sessions = await node.query(lambda: [manager.session(i) for i in ids])
        await node.until(lambda: all(s.state == "established" for s in sessions), 10)
        key_ids = await node.query(lambda: [s.key_id for s in sessions])
        if mode == "first":
            for n, s in enumerate(sessions):
                await node.send(s.id, b"before %d" % n)
            await node.until(lambda: not any(s.outbox for s in sessions), 10)
            say(sessions=[str(i) for i in ids], keys=key_ids)
            sys.stdin.readline()  # from here on, the relay holds what this process sends
            for n, s in enumerate(sessions):
                await node.send(s.id, b"unacknowledged %d" % n)
            say(submitted=True)
            await asyncio.sleep(3600)  # until killed
        await node.wait_for(lambda: len(node.delivered) >= len(sessions), 10)
        await node.until(lambda: not any(s.outbox for s in sessions), 10)
        say(
            found=found, states=states, keys=key_ids,
            delivered=[d.payload.decode() for d in node.delivered],
        )
        await node.close()
        ledger.close()

    asyncio.run(main())
    """
)


async def _child(tmp_path: Path, bob: Any, port: int, mode: str, *extra: str) -> Any:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", ALICE, str(tmp_path / "alice.keys"),
        str(tmp_path / "alice.sqlite3"), bob.did, str(port), str(tmp_path / "bob.bundle"), mode,
        str(SESSIONS), *extra, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _said(child: Any) -> dict[str, Any]:
    line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
    assert line, "the child process ended without reporting"
    return json.loads(line)  # type: ignore[no-any-return]


def test_a_sigkilled_node_resumes_its_sessions_with_fresh_keys_and_loses_nothing(
    tmp_path: Path,
) -> None:
    KeyStore.create(tmp_path / "alice.keys")
    clock, directory = VirtualTime(), DidKeyResolver()

    async def run() -> None:
        bob = make_side(tmp_path, "bob", directory, clock)
        responder = bob.manager._kx.engine.responder  # type: ignore[attr-defined]
        (tmp_path / "bob.bundle").write_bytes(responder.bundle.encode())
        bob.node.start_timers()
        server = await bob.node.serve()
        relay = Relay(server.sockets[0].getsockname()[1])
        port = await relay.start()
        try:
            first = await _child(tmp_path, bob, port, "first")
            started = await _said(first)
            ids = [UUID(i) for i in started["sessions"]]
            theirs = [bob.session(i) for i in ids]  # conversations are Alice's session ids
            assert [s.key_id for s in theirs] == started["keys"]

            relay.hold = is_sealed  # what Alice sends now never reaches Bob ...
            first.stdin.write(b"go\n")
            await first.stdin.drain()
            await _said(first)
            await until(lambda: len(relay.held) >= SESSIONS)
            first.send_signal(signal.SIGKILL)  # ... and Alice's process dies holding it
            await first.wait()
            relay.hold = None
            killed_at = len(relay.to_server)
            for n, s in enumerate(theirs):  # Bob writes while Alice is down
                await bob.node.send(s.id, b"while alice was down %d" % n)

            again = await _child(tmp_path, bob, port, "again", ",".join(map(str, ids)))
            report = await _said(again)
            assert await asyncio.wait_for(again.wait(), timeout=WAIT_S) == 0
            await until(lambda: len(bob.node.delivered) == 2 * SESSIONS)
        finally:
            await relay.close()
            server.close()
            await bob.node.close()

        # Found in the ledger without being named, and recorded as restarted: suspended.
        assert report["found"] == SESSIONS and report["states"] == ["suspended"] * SESSIONS
        # Resumed with fresh keys, the same at both ends.
        assert report["keys"] == [s.key_id for s in theirs]
        assert set(report["keys"]).isdisjoint(started["keys"])
        # Nothing lost, nothing twice: what Alice had sent unacknowledged, and what Bob sent
        # while she was down.
        assert sorted(d.payload.decode() for d in bob.node.delivered) == sorted(
            [f"before {n}" for n in range(SESSIONS)]
            + [f"unacknowledged {n}" for n in range(SESSIONS)]
        )
        assert sorted(report["delivered"]) == [f"while alice was down {n}" for n in range(SESSIONS)]
        # No key of the killed process sealed anything after the kill.
        after = {key for f in relay.to_server[killed_at:] if is_sealed(f) for key, _ in _records(f)}
        assert after and after <= set(report["keys"])
        assert bob.node.sealed.refused["replayed"] == 0
        # Alice's ledger records the restart of each session, then its resumption.
        alice_store = KeyStore.load(tmp_path / "alice.keys")
        alice_ledger = SessionLedger(
            tmp_path / "alice.sqlite3", identity=alice_store.identity,
            storage_key=alice_store.storage_key,
        )  # fmt: skip
        try:
            for sid in ids:
                events = list(alice_ledger.events.get(sid))
                names = [type(e).__name__ for e in events]
                at = names.index("NodeRestarted")
                assert events[at].state == "suspended"
                assert names[at + 1 : at + 3] == ["HandshakeInitiated", "Established"]
                assert events[at + 1].resuming and events[at + 2].new_keys is False
            for ledger in (alice_ledger, bob.ledger):
                result = verify(ledger)
                assert result.ok, result.summary()
        finally:
            alice_ledger.close()
            bob.ledger.close()

    asyncio.run(run())
