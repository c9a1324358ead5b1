"""Witnessing over real sessions (decision 25): two nodes on loopback TCP with real keys and
ledgers offer each other their checkpoints on a cadence, sealed in the session's channel, and
keep each other's cosignatures; a node that rewrites its ledger with its own key while it is
down, and comes back, is caught by its peer's ledger."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

from l2_session.domain.session.witnessed import witnessed_log_id
from l2_session.infrastructure.ledger.verify import ProblemKind as K
from l2_session.infrastructure.ledger.verify import verify
from tcp_support import WAIT_S, Pair, established, established_pair, make_side

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ledger"))
from tampering import cover_tracks, open_as_attacker, rechain_from

INTERVAL_S = 0.2


def cosigned_by(side, witness_did: str) -> int:
    return sum(1 for _, did, _ in side.ledger.cosignatures() if did == witness_did)


def origin_of(side) -> str:
    return f"l2-session/ledger/{side.ledger.ledger_id}"


async def cosigned_both_ways(pair: Pair, at_least: int = 1) -> None:
    alice, bob = pair.alice, pair.bob
    await alice.node.until(lambda: cosigned_by(alice, bob.did) >= at_least, WAIT_S)
    await bob.node.until(lambda: cosigned_by(bob, alice.did) >= at_least, WAIT_S)


def test_two_nodes_cosign_each_others_checkpoints_over_their_session(tmp_path):
    asyncio.run(_cosign(tmp_path))


async def _cosign(tmp_path):
    pair = await established_pair(tmp_path, witness_interval_s=INTERVAL_S)
    try:
        for side in (pair.alice, pair.bob):
            side.node.start_timers()
        await cosigned_both_ways(pair)
        for _ in range(5):  # the ledgers grow: the next offers prove the growth
            await pair.alice.node.send(pair.conversation, b"grow")
        await cosigned_both_ways(pair, at_least=2)
        seen = await pair.bob.node.query(
            lambda: pair.bob.ledger.repository.get(witnessed_log_id(origin_of(pair.alice)))
        )
        assert seen.witnessed >= 2 and seen.conflicts == 0
        # Sealed, never in clear: the relay saw no witnessing frame kind (15, 16) in clear.
        assert not [f for f in pair.relay.to_server + pair.relay.to_client if f[4] in (15, 16)]
    finally:
        await pair.close()
    report = verify(pair.alice.ledger.path, witnesses=[pair.bob.ledger.path])
    assert report.ok and report.witnessed_checkpoints >= 2, report.summary()
    assert report.cosignatures >= 2


def test_a_node_that_rewrote_its_ledger_with_its_own_key_is_caught_by_its_peer(tmp_path):
    asyncio.run(_rewrite(tmp_path))


async def _rewrite(tmp_path):
    pair = await established_pair(tmp_path, witness_interval_s=INTERVAL_S)
    for side in (pair.alice, pair.bob):
        side.node.start_timers()
    await cosigned_both_ways(pair)
    await pair.alice.node.close()
    pair.alice.ledger.close()
    db = open_as_attacker(pair.alice.ledger.path)
    rechain_from(db, 3, pair.alice.store.identity, None, later_by_us=1)  # history, re-signed
    cover_tracks(db)
    db.close()
    assert verify(pair.alice.ledger.path).ok  # the file alone is consistent

    alice = make_side(tmp_path, "alice", pair.directory, pair.clock, witness_interval_s=INTERVAL_S)
    pair.alice = alice
    try:
        await alice.node.connect(pair.bob.did, "127.0.0.1", pair.relay.server_port)
        alice.node.start_timers()
        await established(alice, pair.conversation)
        bob = pair.bob
        await bob.node.until(lambda: bob.node.worker.witnessing.counts["conflicts"] >= 1, WAIT_S)
        seen = await bob.node.query(
            lambda: bob.ledger.repository.get(witnessed_log_id(origin_of(alice)))
        )
        assert seen.last_conflict["reason"] == "rewritten"
        assert seen.last_conflict["offered"].startswith(origin_of(alice) + "\n")
    finally:
        await pair.close()
    report = verify(alice.ledger.path, witnesses=[pair.bob.ledger.path])
    kinds = {p.kind for p in report.problems}
    assert K.WITNESS_CONFLICT in kinds and K.CHECKPOINT_MISMATCH in kinds, report.summary()
    assert verify(pair.bob.ledger.path).ok
    with sqlite3.connect(pair.bob.ledger.path) as db:
        topics = [t for (t,) in db.execute("SELECT topic FROM ledger_events")]
    assert "l2_session.domain.witnessed:WitnessedLog.CheckpointConflict" in topics


def test_witnessing_rides_a_session_over_quic_too(tmp_path):
    from l2_session.infrastructure.resolver import DidKeyResolver
    from tcp_support import VirtualTime

    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice, bob = (
            make_side(tmp_path, name, directory, clock, durability="normal",
                      witness_interval_s=INTERVAL_S)
            for name in ("alice", "bob")
        )  # fmt: skip
        try:
            host, port = await bob.node.serve_quic()
            await alice.node.connect_quic(bob.did, host, port)
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            await established(bob, alice.session(sid).conversation)
            assert {link.kind for link in alice.node.connections.open} == {"quic"}
            for side in (alice, bob):
                side.node.start_timers()
            await alice.node.until(lambda: cosigned_by(alice, bob.did) >= 1, WAIT_S)
            await bob.node.until(lambda: cosigned_by(bob, alice.did) >= 1, WAIT_S)
        finally:
            for side in (alice, bob):
                await side.node.close()
                side.ledger.close()

    asyncio.run(run())
