"""Witnessing over MockTransport sessions (decision 25), deterministic: two managers with real
did:keys and ledgers witness each other on the simulation's clock through loss and a
partition; the node that rewrote its ledger with its own key (its file replaced by a rewritten
copy while it was down) is caught by its peer's ledger."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session.witnessed import witnessed_log_id
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import ProblemKind as K
from l2_session.infrastructure.ledger.verify import verify
from l2_session.infrastructure.ledger.witness import Witnessing
from l2_session.transports.mock import LinkProfile, MockTransport, Simulation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ledger"))
from tampering import cover_tracks, open_as_attacker, rechain_from

INTERVAL_US = 60_000_000


class World:
    def __init__(self, tmp_path: Path, profile: LinkProfile | None = None) -> None:
        self.tmp, self.clock = tmp_path, ManualClock()
        self.ids = {name: NodeIdentity.generate() for name in ("alice", "bob")}
        self.sim = Simulation(self.clock, MockTransport(self.clock, seed=3, profile=profile))
        self.sim.witness_interval_us = INTERVAL_US
        self.ledgers: dict[str, SessionLedger] = {}
        for name in self.ids:
            self.start(name)

    def did(self, name: str) -> str:
        return self.ids[name].did

    def start(self, name: str) -> None:
        identity = self.ids[name]
        ledger = SessionLedger(
            self.tmp / f"{name}.sqlite3", identity=identity, storage_key=b"s" * 32,
            clock=self.clock, durability="normal",
        )  # fmt: skip
        self.ledgers[name] = ledger
        prekeys = {self.did(n): f"prekeys-{n}" for n in self.ids}
        manager = SessionManager(
            identity.did,
            ledger,
            prekeys_of=prekeys.__getitem__,
            own_prekeys=prekeys[identity.did],
            key_exchange="mock",
        )
        self.sim.add(manager)
        self.sim.witnessing[identity.did] = Witnessing(ledger, identity)

    def stop(self, name: str) -> None:
        did = self.did(name)
        self.sim.nodes.pop(did)
        self.sim.witnessing.pop(did)
        self.ledgers.pop(name).close()

    def seen(self, witness: str, origin: str):
        ledger = self.ledgers[witness]
        lid = f"l2-session/ledger/{self.ledgers[origin].ledger_id}"
        return ledger.repository.get(witnessed_log_id(lid))

    def close(self) -> None:
        for ledger in self.ledgers.values():
            ledger.close()


def test_peers_witness_each_other_through_loss_and_a_partition(tmp_path):
    world = World(tmp_path, LinkProfile(loss=0.2))
    try:
        alice = world.sim.nodes[world.did("alice")]
        sid, outputs = alice.establish(world.did("bob"), world.clock.wall_us())
        world.sim.perform(world.did("alice"), outputs)
        world.sim.run_for(30)
        assert alice.session(sid).state == "established"
        world.sim.run_for(600)  # ten intervals, a fifth of the frames lost
        assert world.seen("bob", "alice").witnessed >= 3
        assert world.seen("alice", "bob").witnessed >= 3
        world.sim.transport.partition(world.did("alice"), world.did("bob"))
        world.sim.run_for(20)
        world.sim.transport.heal(world.did("alice"), world.did("bob"))
        world.sim.run_for(600)
        assert world.seen("bob", "alice").conflicts == 0
        assert len(world.ledgers["alice"].cosignatures()) >= 3
    finally:
        world.close()
    report = verify(tmp_path / "alice.sqlite3", witnesses=[tmp_path / "bob.sqlite3"])
    assert report.ok and report.witnessed_checkpoints >= 3, report.summary()


def test_a_node_that_rewrote_its_ledger_is_caught_by_its_peers_ledger(tmp_path):
    world = World(tmp_path)
    try:
        alice = world.sim.nodes[world.did("alice")]
        sid, outputs = alice.establish(world.did("bob"), world.clock.wall_us())
        world.sim.perform(world.did("alice"), outputs)
        world.sim.run_for(200)
        witnessed = world.seen("bob", "alice").size
        assert witnessed > 0
        world.stop("alice")
        path = tmp_path / "alice.sqlite3"
        shutil.copy(path, tmp_path / "before.sqlite3")
        db = open_as_attacker(path)
        rechain_from(db, 2, world.ids["alice"], None, later_by_us=1)
        cover_tracks(db)
        db.close()
        world.start("alice")
        restarted = world.sim.nodes[world.did("alice")]
        world.sim.perform(world.did("alice"), restarted.resume(sid, world.clock.wall_us()))
        world.sim.run_for(400)
        seen = world.seen("bob", "alice")
        assert seen.conflicts >= 1 and seen.last_conflict["reason"] == "rewritten"
        assert seen.size == witnessed  # the reference stays what was witnessed
    finally:
        world.close()
    report = verify(path, witnesses=[tmp_path / "bob.sqlite3"])
    assert K.WITNESS_CONFLICT in {p.kind for p in report.problems}
    assert verify(tmp_path / "before.sqlite3", witnesses=[tmp_path / "bob.sqlite3"]).problems


def test_a_node_restored_from_an_old_backup_is_caught_as_truncated(tmp_path):
    """Alice's ledger is put back to a copy taken before what Bob witnessed (a restore from an
    old backup: history her peers saw is gone). Her next offer covers fewer events than the
    checkpoint Bob holds: recorded as truncated, with both signed checkpoints."""
    world = World(tmp_path)
    try:
        alice = world.sim.nodes[world.did("alice")]
        sid, outputs = alice.establish(world.did("bob"), world.clock.wall_us())
        world.sim.perform(world.did("alice"), outputs)
        world.sim.run_for(5)
        world.stop("alice")
        shutil.copy(tmp_path / "alice.sqlite3", tmp_path / "backup.sqlite3")
        world.start("alice")
        world.sim.run_for(900)  # three offers witnessed: Bob holds a bigger tree than the copy
        witnessed = world.seen("bob", "alice").size
        world.stop("alice")
        for suffix in ("-wal", "-shm"):
            (tmp_path / f"alice.sqlite3{suffix}").unlink(missing_ok=True)
        shutil.copy(tmp_path / "backup.sqlite3", tmp_path / "alice.sqlite3")
        world.start("alice")
        restarted = world.sim.nodes[world.did("alice")]
        world.sim.perform(world.did("alice"), restarted.resume(sid, world.clock.wall_us()))
        world.sim.run_for(90)  # the next offer falls due
        seen = world.seen("bob", "alice")
        assert seen.conflicts >= 1 and seen.last_conflict["reason"] == "truncated"
        assert seen.size == witnessed
    finally:
        world.close()
    report = verify(tmp_path / "alice.sqlite3", witnesses=[tmp_path / "bob.sqlite3"])
    assert any("truncated" in p.detail for p in report.problems), report.summary()
