"""SPEC-018 §2.1 "Session resumption", as the spec means it: a process restarts, rebuilds the
session from the ledger on disk (the key material is sealed in it), and re-establishes it over a
loopback TCP socket (asyncio) to a running peer with real crypto — without a new KEM exchange,
the peer's prekeys being unchanged. Nobody names the session: the node finds it in its ledger
and resumes it when it reaches the peer (decision 16).

The fresh process reports how long it took, from connecting to the peer (and from opening the
ledger) to ``established``; the test prints it and asserts behaviour only (no timing assertion:
the figure is the benchmark's, benchmarks/bench_handshake.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from uuid import UUID

from kem_counting import CountingKemKey, KemCounts
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.infrastructure.clock import ManualClock, SessionTimeline, SystemClock
from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.mock import MockTransport, Simulation
from l2_session.transports.tcp import TcpNode
from ledger_sessions import open_ledger

DAY_US = 86_400_000_000

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time, uuid
    from l2_session.domain.handshake.engine import HandshakeEngine
    from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
    from l2_session.domain.manager.manager import SessionManager
    from l2_session.infrastructure.clock import SessionTimeline, SystemClock
    from l2_session.infrastructure.keystore import KeyStore
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.infrastructure.resolver import DidKeyResolver
    from l2_session.transports.tcp import TcpNode

    keys, ledger_path, session_id, peer_did, port = sys.argv[1:6]

    async def main():
        opened = time.perf_counter()
        store = KeyStore.load(keys)
        ledger = SessionLedger(ledger_path, identity=store.identity, storage_key=store.storage_key)
        directory = DidKeyResolver()  # did:key resolves offline; no bundle: no full handshake
        exchange = PqxdhKeyExchange(
            HandshakeEngine(store.identity.private_key),
            fetch_bundle=directory.fetch_bundle,
            identity_key_of=lambda did: bytes(directory.resolve(did).identity_key),
        )
        manager = SessionManager(store.identity.did, ledger, key_exchange=exchange)
        timeline = SessionTimeline(SystemClock())
        node = TcpNode(manager, timeline.now_us)  # recovers the session from the ledger file
        exchange.source_of = node.address_of  # the engine keys its gate by address
        sid = uuid.UUID(session_id)
        session = manager.session(sid)  # found without being named: recorded as restarted
        restarted = session.state == "suspended"
        called = time.perf_counter()
        await node.connect(peer_did, "127.0.0.1", int(port))  # the peer reached: it resumes
        await node.until(lambda: session.state == "established", timeout_s=10)
        established = time.perf_counter()
        await node.send(sid, b"hello after restart")
        await node.until(lambda: not session.outbox, timeout_s=10)  # acknowledged
        await node.close()
        ledger.close()
        print(json.dumps({
            "from_resume_ms": (established - called) * 1000,
            "from_open_ms": (established - opened) * 1000,
            "key_id": session.key_id,
            "events": session.version,
            "restarted": restarted,
        }))

    asyncio.run(main())
    """
)


def _suspended_pair(tmp_path: Path) -> tuple[KeyStore, SessionManager, str, PqxdhKeyExchange]:
    """Alice and Bob established a session over a mock network an hour ago, lost each other
    until both ends were suspended, and Alice's process went away. Returns Alice's key store,
    Bob's (still running) manager, Alice's session id and Bob's key exchange."""
    alice = KeyStore.create(tmp_path / "alice.keys")
    bob = KeyStore.create(tmp_path / "bob.keys")
    clock = ManualClock(wall_us=time.time_ns() // 1000 - 3_600_000_000)
    directory = DidKeyResolver()
    sim = Simulation(clock, MockTransport(clock, seed=1))
    managers, exchanges = {}, {}
    for name, store in (("alice", alice), ("bob", bob)):
        exchange = PqxdhKeyExchange.for_node(
            store.identity.did, store.identity.private_key, directory,
            now_us=clock.wall_us(), valid_for_us=DAY_US,
        )  # fmt: skip
        exchanges[name] = exchange
        ledger = open_ledger(store, tmp_path / f"{name}.sqlite3")
        managers[name] = sim.add(SessionManager(store.identity.did, ledger, key_exchange=exchange))
    sid, outputs = managers["alice"].establish(bob.identity.did, clock.wall_us())
    sim.perform(alice.identity.did, outputs)
    sim.run_for(1)
    sim.transport.partition(alice.identity.did, bob.identity.did)
    mine = managers["alice"].session(sid)
    while mine.state != "suspended":
        sim.run_for(1)
    theirs = managers["bob"].session_for(mine.conversation)
    assert theirs is not None and theirs.state == "suspended"
    managers["alice"].ledger.close()  # type: ignore[attr-defined]
    return alice, managers["bob"], str(sid), exchanges["bob"]


def test_a_fresh_process_resumes_from_its_ledger_over_loopback_tcp(tmp_path: Path) -> None:
    alice, bob, sid, exchange = _suspended_pair(tmp_path)
    conversation = UUID(sid)  # frames name the conversation by the initiator's session id
    theirs = bob.session_for(conversation)
    assert theirs is not None
    key_id_before = theirs.key_id
    responder = exchange.engine.responder
    assert responder is not None
    kem = KemCounts()
    secrets = responder.secrets
    responder.secrets = replace(secrets, kem_prekey=CountingKemKey(secrets.kem_prekey, kem))

    async def run() -> dict[str, object]:
        node = TcpNode(bob, SessionTimeline(SystemClock()).now_us)
        exchange.source_of = node.address_of
        # Bob's timers run only once the resumption is done: before, his own recovery attempt
        # (a responder's retry() waits in handshake_initiated for 5 s) would race it, and is
        # not what is tested. After, they send his delayed acknowledgement of the message.
        server = await node.serve()
        port = server.sockets[0].getsockname()[1]
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(alice.path), str(tmp_path / "alice.sqlite3"), sid,
            bob.local_did, str(port), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        session = bob.session_for(conversation)
        await node.wait_for(lambda: session is not None and session.state == "established", 60)
        node.start_timers()
        out, _ = await asyncio.wait_for(child.communicate(), timeout=60)
        assert child.returncode == 0
        await node.wait_for(lambda: bool(node.delivered), timeout_s=5)
        server.close()
        await node.close()
        assert node.delivered[0].payload == b"hello after restart"
        # It came sealed under the resumed keys (transports/sealed.py), and nothing was refused.
        assert node.sealed.opened >= 1 and not node.sealed.refused
        return json.loads(out)  # type: ignore[no-any-return]

    figures = asyncio.run(run())
    theirs = bob.session_for(conversation)
    assert theirs is not None and theirs.state == "established"
    assert figures["restarted"]  # the node recorded its restart before resuming
    assert theirs.key_id == figures["key_id"] != key_id_before  # fresh keys, both ends agree
    assert kem.decapsulations == 0  # no KEM exchange: Bob decapsulated nothing
    print(
        f"\nresume in a fresh process over loopback TCP: {figures['from_resume_ms']:.1f} ms from "
        f"connecting, {figures['from_open_ms']:.1f} ms from opening the ledger "
        f"({figures['events']} events replayed)"
    )
