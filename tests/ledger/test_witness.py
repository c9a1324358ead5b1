"""Peers witnessing each other's ledgers (infrastructure/ledger/witness.py, decision 25), on
real ledgers: honest logs cosigned with proofs from the last checkpoint witnessed; a log
rewritten with its owner's key, a truncated log and a forked log caught and recorded with both
signed checkpoints; and `verify --witness` catching the rewritten ledger from the witness's."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from l2_session.domain.session.witnessed import WitnessedLog, witnessed_log_id
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity, public_key_from_did_key
from l2_session.infrastructure.ledger import Checkpoint, SessionLedger
from l2_session.infrastructure.ledger.tree_head import verify_cosignature
from l2_session.infrastructure.ledger.verify import ProblemKind as K
from l2_session.infrastructure.ledger.verify import verify
from l2_session.infrastructure.ledger.witness import Offer, Witnessing
from ledger_aggregates import Conversation
from tampering import cover_tracks, open_as_attacker, rechain_from


class Node:
    def __init__(self, path: Path, clock: ManualClock, identity: NodeIdentity | None = None):
        self.path, self.identity = path, identity or NodeIdentity.generate()
        self.ledger = SessionLedger(
            path, identity=self.identity, storage_key=b"k" * 32, clock=clock
        )
        # The clock of these tests does not move between exchanges: no gap between offers.
        self.witnessing = Witnessing(self.ledger, self.identity, min_gap_us=0)

    @property
    def did(self) -> str:
        return self.identity.did

    def grow(self, n: int, label: str = "x") -> None:
        for i in range(n):
            conversation = Conversation(peer=f"{label}{i}")
            conversation.note(text=f"{label} {i}")
            self.ledger.save(conversation)

    def reopen(self, clock: ManualClock) -> None:
        self.ledger.close()
        self.__init__(self.path, clock, self.identity)


def exchange(origin: Node, witness: Node, clock: ManualClock):
    """One offer from ``origin`` to ``witness`` and its reply back; the reply."""
    offer = origin.witnessing.offer(witness.did)
    assert offer is not None
    reply = witness.witnessing.witness(origin.did, offer, clock.wall_us())
    origin.witnessing.accept_reply(witness.did, reply, clock.wall_us())
    return reply


def seen(witness: Node, origin: Node) -> WitnessedLog:
    return witness.ledger.repository.get(
        witnessed_log_id(f"l2-session/ledger/{origin.ledger.ledger_id}")
    )


@pytest.fixture
def pair(tmp_path, clock):
    a, b = Node(tmp_path / "a.sqlite3", clock), Node(tmp_path / "b.sqlite3", clock)
    yield a, b
    a.ledger.close()
    b.ledger.close()


def test_honest_logs_are_cosigned_both_ways_with_proofs_from_the_last_witnessed(pair, clock):
    a, b = pair
    a.grow(3)
    b.grow(2)
    reply = exchange(a, b, clock)
    assert reply.cosignature and not reply.reason
    assert a.witnessing.offer(b.did) is None  # nothing new: nothing to say
    reply = exchange(b, a, clock)  # which a records: its own ledger grows by what it witnessed
    assert reply.cosignature and not reply.reason
    a.grow(3)
    offer = a.witnessing.offer(b.did)
    assert offer is not None and offer.old_size == 6 and len(offer.proof) >= 1
    reply = b.witnessing.witness(a.did, offer, clock.wall_us())
    assert a.witnessing.accept_reply(b.did, reply, clock.wall_us())
    log = seen(b, a)
    assert (log.witnessed, log.conflicts, log.size) == (2, 0, 14)
    # The origin keeps each cosignature beside its checkpoint; each verifies.
    kept = a.ledger.cosignatures()
    assert len(kept) == 2
    checkpoints = dict(a.ledger.stored_checkpoints())
    for checkpoint_id, witness_did, line in kept:
        body = checkpoints[checkpoint_id].body().decode()
        verify_cosignature(witness_did, public_key_from_did_key(witness_did), body, line)
    # And the witnessed checkpoints check against the origin's ledger.
    report = verify(a.path, witnesses=[b.path])
    assert report.ok and report.witnessed_checkpoints == 2, report.summary()


def test_a_restarted_witness_remembers_what_it_witnessed(pair, clock):
    a, b = pair
    a.grow(4)
    exchange(a, b, clock)
    b.reopen(clock)
    a.grow(3)
    assert exchange(a, b, clock).cosignature
    assert seen(b, a).size == 14


def test_a_proof_from_another_size_is_refused_and_the_next_offer_starts_right(pair, clock):
    a, b = pair
    a.grow(4)
    exchange(a, b, clock)
    a.grow(2)
    offer = a.witnessing.offer(b.did)
    wrong = Offer(offer.checkpoint, 3, offer.proof)
    reply = b.witnessing.witness(a.did, wrong, clock.wall_us())
    assert (
        not reply.cosignature and reply.reason == "a proof from 3, not 8" and reply.witnessed == 8
    )
    assert seen(b, a).conflicts == 0  # an unsigned proof is no evidence
    a.witnessing.accept_reply(b.did, reply, clock.wall_us())
    assert exchange(a, b, clock).cosignature


def test_a_checkpoint_not_signed_by_the_peer_is_refused_without_a_record(pair, clock, tmp_path):
    a, b = pair
    a.grow(2)
    offer = a.witnessing.offer(b.did)
    stranger = NodeIdentity.generate()
    reply = b.witnessing.witness(stranger.did, offer, clock.wall_us())
    assert not reply.cosignature and "not the peer" in reply.reason
    cp = Checkpoint.parse(offer.checkpoint)
    forged = offer.checkpoint.replace(
        cp.root and __import__("base64").b64encode(cp.root).decode(), "A" * 43 + "="
    )
    reply = b.witnessing.witness(a.did, Offer(forged, 0, ()), clock.wall_us())
    assert not reply.cosignature and "does not verify" in reply.reason


def rewrite(node: Node, clock: ManualClock, edit) -> None:
    """The owner rewrites its own ledger with its own key and covers its tracks, then goes on
    as if nothing happened (a new checkpoint over the new history)."""
    node.ledger.close()
    db = open_as_attacker(node.path)
    edit(db)
    cover_tracks(db)
    db.close()
    node.reopen(clock)


def test_a_log_rewritten_with_its_own_key_is_caught_and_recorded(pair, clock):
    a, b = pair
    a.grow(6)
    exchange(a, b, clock)
    witnessed = seen(b, a).checkpoint
    rewrite(a, clock, lambda db: rechain_from(db, 4, a.identity, b'{"text":"never said"}'))
    assert verify(a.path).ok  # the file alone is consistent again
    a.grow(1)
    # The cosignatures went with the tracks: the origin does not know where b stands, and b
    # tells it; the proof from there fails.
    assert exchange(a, b, clock).reason == "a proof from 0, not 12"
    reply = exchange(a, b, clock)
    assert reply.reason == "conflict: rewritten" and not reply.cosignature
    log = seen(b, a)
    assert (log.conflicts, log.size) == (1, 12)
    assert log.last_conflict["witnessed"] == witnessed
    offered = Checkpoint.parse(log.last_conflict["offered"])
    assert offered.signer == a.did and offered.signature_valid()
    (listed,) = b.witnessing.witnessed()  # what `l2-session node`'s "witnessed" op shows
    assert (listed["origin"], listed["size"], listed["signer"]) == (log.origin, 12, a.did)
    assert (listed["conflicts"], listed["last_conflict"]) == (1, "rewritten")
    # The witness's ledger convicts the origin's: its witnessed checkpoint no longer matches.
    report = verify(a.path, witnesses=[b.path])
    assert K.WITNESS_CONFLICT in {p.kind for p in report.problems}
    mismatches = [p for p in report.problems if p.kind is K.CHECKPOINT_MISMATCH]
    assert mismatches and "rewritten" in mismatches[0].detail
    own = verify(b.path)  # the witness's own ledger is intact, and says what it found
    assert own.ok and own.conflicts_recorded == [
        f"l2-session/ledger/{a.ledger.ledger_id}: rewritten (position {own.head_position})"
    ]
    assert "conflicts this node recorded in others' ledgers: 1" in own.summary()


def test_a_truncated_log_is_caught(pair, clock):
    a, b = pair
    a.grow(6)
    exchange(a, b, clock)
    rewrite(a, clock, lambda db: db.execute("DELETE FROM ledger_events WHERE position > 7"))
    reply = exchange(a, b, clock)
    assert reply.reason == "conflict: truncated"
    report = verify(a.path, witnesses=[b.path])
    assert any("truncated" in p.detail for p in report.problems)


def test_a_forked_log_two_checkpoints_of_one_size_is_caught(pair, clock, tmp_path):
    a, b = pair
    a.grow(4)
    exchange(a, b, clock)
    a.ledger.close()
    shutil.copy(a.path, tmp_path / "fork.sqlite3")
    fork = Node(tmp_path / "fork.sqlite3", clock, a.identity)  # the same node, another history
    a.reopen(clock)
    a.grow(1, "left")
    fork.grow(1, "right")
    assert exchange(a, b, clock).cosignature
    reply = exchange(fork, b, clock)
    assert reply.reason == "conflict: forked"
    left = Checkpoint.parse(seen(b, a).last_conflict["witnessed"])
    right = Checkpoint.parse(seen(b, a).last_conflict["offered"])
    assert left.size == right.size and left.root != right.root  # both signed by a's key
    assert left.signer == right.signer == a.did
    fork.ledger.close()


def test_verify_checks_the_cosignatures_kept_and_names_a_forged_one(pair, clock):
    a, b = pair
    a.grow(3)
    exchange(a, b, clock)
    a.grow(2)
    exchange(a, b, clock)
    report = verify(a.path)
    assert report.ok and report.cosignatures == 2, report.summary()
    a.ledger.close()
    db = sqlite3.connect(a.path)
    line = db.execute("SELECT cosignature FROM ledger_cosignatures WHERE id=1").fetchone()[0]
    db.execute(
        "INSERT INTO ledger_cosignatures (checkpoint_id, witness, cosignature, received_at) "
        "VALUES (2, ?, ?, 0)",  # b's cosignature of checkpoint 1, claimed for checkpoint 2
        (b.did, line),
    )
    db.commit()
    db.close()
    report = verify(a.path)
    assert [p.detail for p in report.problems] == [
        f"cosignature #3 by {b.did} does not verify (the cosignature of {b.did} does not verify)"
    ]
    a.reopen(clock)


def test_a_peer_that_offers_without_pause_costs_one_append_per_gap(tmp_path, clock):
    """Offers come at most one per ``min_gap_us`` from a peer: the others are refused unread,
    append nothing, and leave the origin's hint alone; after the gap, the next is witnessed."""
    a, b = Node(tmp_path / "a.sqlite3", clock), Node(tmp_path / "b.sqlite3", clock)
    try:
        b.witnessing = Witnessing(b.ledger, b.identity, min_gap_us=10_000_000)
        a.grow(2)
        assert exchange(a, b, clock).cosignature
        events = len(b.ledger.notification_log.select(1, 1000))
        for n in range(20):  # a new checkpoint every time, as fast as it can
            a.grow(1, f"spam{n}")
            reply = exchange(a, b, clock)
            assert reply.reason.startswith("too soon") and not reply.cosignature
        assert len(b.ledger.notification_log.select(1, 1000)) == events
        assert b.witnessing.counts["too_soon"] == 20 and a.witnessing.counts["too_soon"] == 20
        clock.advance(10)
        reply = exchange(a, b, clock)  # the proof starts where b stands: the hint was kept
        assert reply.cosignature and seen(b, a).witnessed == 2
    finally:
        a.ledger.close()
        b.ledger.close()
