"""verify() and the Merkle tree: the root recomputed from the events, the stored tree compared
with it node by node (also across the ranges of parallel workers), every stored checkpoint
checked against it, and a report that says when its signers are anchored only in the file."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from l2_session.infrastructure.ledger import Checkpoint
from l2_session.infrastructure.ledger.format import FORMAT_VERSION
from l2_session.infrastructure.ledger.verify import ProblemKind as K
from l2_session.infrastructure.ledger.verify import verify
from ledger_aggregates import Conversation
from tampering import (
    add_level_1_node,
    change_node,
    cover_tracks,
    drop_top_node,
    format_of,
    open_as_attacker,
    rechain_from,
)
from test_tree import mark_format

CHUNK = 16  # rows per verify task: 100 events make several ranges, with seams


@pytest.fixture(params=["4", "3"])
def built(request, ledger_factory, ledger_location, clock, identity):
    """100 events in saves of one (round robin over 5 sessions), a checkpoint at 55 and 100,
    in format 4 (the tree in the events' rows) or 3 (tiles in ledger_tree: marked before the
    first event, as a ledger created before format 4 is)."""
    if request.param != str(FORMAT_VERSION):
        ledger_factory().close()
        mark_format(ledger_location, request.param)
    ledger = ledger_factory(snapshot_interval=None)
    conversations = [Conversation(peer=f"p{i}") for i in range(5)]
    for step in range(19):
        for c in conversations:
            c.note(text=f"step {step}")
            clock.advance(0.01)
            ledger.save(c)
        if step == 9:
            ledger.checkpoint()
    ledger.checkpoint()
    size, root = ledger.tree_head()
    assert size == 100
    ledger.close()
    return ledger, root


@pytest.mark.parametrize("workers", [1, 2])
def test_verify_recomputes_the_root_and_checks_stored_tree_and_checkpoints(built, workers):
    ledger, root = built
    report = verify(ledger, workers=workers, chunk_events=CHUNK)
    assert report.ok, report.summary()
    assert (report.tree_root, report.tree_checked, report.stored_checkpoints) == (root, True, 2)
    assert report.workers == workers


def test_a_stored_checkpoint_is_checked_against_the_root_it_signed(
    built, identity, tmp_path, ledger_path
):
    """A checkpoint whose head hash is right but whose root is not (the signer lied about the
    tree, or the tree changed since): caught by its root alone."""
    ledger, _ = built
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(ledger_path, copy)
    head = sqlite3.connect(copy).execute("SELECT event_hash FROM ledger_events WHERE position=60")
    lying = Checkpoint.sign(identity, ledger.ledger_id, 60, head.fetchone()[0], 1, bytes(32))
    report = verify(copy, lying.to_text())
    assert report.kinds_at(60) == {K.CHECKPOINT_MISMATCH}
    assert "Merkle root of the first 60 events" in str(report.problems[0])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("position", "level"),
    [(2, 1), (8, 3), (16, 4), (32, 5), (46, 1), (64, 6), (92, 2), (96, 5)],
)
def test_a_changed_stored_node_is_reported_where_it_ends(
    built, tmp_path, ledger_path, workers, position, level
):
    """Format 4 keeps a node in the row of the event that completes it; format 3 keeps levels
    1 to 3 in tiles (the row of a level-3 node holds the 7 nodes of its 8 events), and verify
    ranges of 16 events cut blocks of 8 in two where workers > 1."""
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(ledger_path, copy)
    change_node(open_as_attacker(copy), position, level)
    report = verify(copy, workers=workers, chunk_events=CHUNK)
    assert [(p.kind, p.position) for p in report.problems] == [(K.TREE_MISMATCH, position)]
    assert f"tree node of level {level}: the stored hash differs" in report.problems[0].detail


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tile_or_tree_column_of_the_wrong_length_is_reported_with_the_nodes_it_lost(
    built, tmp_path, ledger_path, workers
):
    """Cut to 64 bytes: format 4's column of position 24 (levels 1 to 3) loses its level-3
    node; format 3's tile ending at 24 (7 nodes) is no tile, and all its nodes are lost."""
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(ledger_path, copy)
    db = open_as_attacker(copy)
    if format_of(db) == b"4":
        db.execute("UPDATE ledger_events SET tree = substr(tree, 1, 64) WHERE position=24")
        lost = [(24, "tree node of level 3")]
    else:
        db.execute("UPDATE ledger_tree SET hash = substr(hash, 1, 64) WHERE node=64*24+3")
        lost = [
            (18, "tree node of level 1"),
            (20, "tree node of level 1"),
            (20, "tree node of level 2"),
            (22, "tree node of level 1"),
            (24, "tree node of level 1"),
            (24, "tree node of level 2"),
            (24, "tree node of level 3"),
        ]
    db.commit()
    report = verify(copy, workers=workers, chunk_events=CHUNK)
    found = sorted((p.position, p.detail.split(":")[0]) for p in report.problems)
    assert found == lost
    assert {p.kind for p in report.problems} == {K.TREE_MISMATCH}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_missing_and_an_extra_stored_node_are_reported(built, tmp_path, ledger_path, workers):
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(ledger_path, copy)
    db = open_as_attacker(copy)
    drop_top_node(db, 64, 6)
    add_level_1_node(db, 51)
    report = verify(copy, workers=workers, chunk_events=CHUNK)
    found = sorted((p.position, p.detail) for p in report.problems)
    assert found == [
        (51, "tree node of level 1: stored, but not a node of the tree"),
        (64, "tree node of level 6: missing from the stored tree"),
    ]


def test_events_rewritten_with_the_key_are_caught_by_what_the_file_still_holds(
    built, identity, tmp_path, ledger_path
):
    """An attacker who re-signs history but leaves the tree and the stored checkpoints: both
    tell. One who covers those tracks too is caught only by a checkpoint kept elsewhere."""
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(ledger_path, copy)
    db = open_as_attacker(copy)
    rechain_from(db, 30, identity, b'{"text":"another story"}')
    report = verify(copy)
    kinds = {p.kind for p in report.problems}
    assert kinds == {K.TREE_MISMATCH, K.CHECKPOINT_MISMATCH}
    assert {p.position for p in report.problems if p.kind is K.CHECKPOINT_MISMATCH} == {55, 100}
    cover_tracks(db)
    assert verify(copy).ok


def test_without_an_anchor_the_report_says_its_signers_are_unanchored(built, identity):
    ledger, _ = built
    plain = verify(ledger)
    assert plain.ok and not plain.anchored
    assert "UNANCHORED" in plain.summary()
    trusted = verify(ledger, trusted_signers=[identity.did])
    assert trusted.anchored and "signers: anchored" in trusted.summary()


@pytest.mark.parametrize("workers", [1, 2])
def test_check_tree_false_skips_the_tree_and_nothing_else(built, tmp_path, ledger_path, workers):
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(ledger_path, copy)
    change_node(open_as_attacker(copy), 64, 6)
    skipped = verify(copy, workers=workers, chunk_events=CHUNK, check_tree=False)
    assert skipped.ok and skipped.tree_root is None and not skipped.tree_checked
    assert skipped.stored_checkpoints == 2  # their head hashes are still checked
    assert not verify(copy, workers=workers, chunk_events=CHUNK).ok
