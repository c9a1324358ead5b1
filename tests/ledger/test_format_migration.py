"""Ledger format 1 -> 2: a ledger written before the Merkle tree existed (the committed fixture,
tests/ledger/fixtures) still verifies as it is, with its format-1 checkpoint; a node that opens
it to write builds its tree in one transaction; PostgreSQL schemas migrate the same way."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import Checkpoint, SessionLedger
from l2_session.infrastructure.ledger.format import FORMAT_VERSION
from l2_session.infrastructure.ledger.merkle import leaf_hash, root
from l2_session.infrastructure.ledger.pg_import import import_sqlite_ledger
from l2_session.infrastructure.ledger.tree import MIGRATED_VERSION, TreeMissing
from l2_session.infrastructure.ledger.verify import verify
from ledger_aggregates import Conversation
from pgserver import open_raw
from test_tree import event_hashes, expected_nodes, mark_format, stored_nodes, stored_rows_of

FIXTURES = Path(__file__).parent / "fixtures"
IDENTITY_SEED = bytes(range(32))  # fixtures/make_stable_topics_ledger.py
STORAGE_KEY = bytes(range(32, 64))


@pytest.fixture
def format_1(tmp_path) -> tuple[Path, str]:
    path = tmp_path / "old.sqlite3"
    shutil.copy(FIXTURES / "stable_topics.sqlite3", path)
    checkpoint = (FIXTURES / "stable_topics.checkpoint").read_text(encoding="utf-8")
    return path, checkpoint


def save_noted(ledger: SessionLedger, count: int, text: str) -> None:
    """``count`` conversations of two events (opened, one note), one save each."""
    for i in range(count):
        conversation = Conversation(peer=f"peer {i}: {text}")
        conversation.note(text=text)
        ledger.save(conversation)


def format_version(path: Path) -> str:
    raw = sqlite3.connect(path)
    try:
        return raw.execute("SELECT value FROM ledger_meta WHERE key='format_version'").fetchone()[0]
    finally:
        raw.close()


def test_a_format_1_ledger_verifies_as_it_is_and_a_reader_changes_nothing(format_1):
    path, checkpoint = format_1
    assert Checkpoint.parse(checkpoint).version == 1
    before = path.read_bytes()
    report = verify(path, checkpoint)
    assert report.ok, report.summary()
    assert not report.tree_checked and "format 1: no stored tree" in report.summary()
    assert report.tree_root == root([leaf_hash(h) for h in event_hashes(path)])
    reader = SessionLedger(path, create=False)
    try:
        with pytest.raises(TreeMissing, match="open it once with its node's identity"):
            reader.inclusion_proof(1)
    finally:
        reader.close()
    assert format_version(path) == "1" and path.read_bytes() == before


def test_a_node_opening_a_format_1_ledger_builds_its_tree_and_old_checkpoints_still_hold(format_1):
    path, old_checkpoint = format_1
    identity = NodeIdentity.from_seed(IDENTITY_SEED)
    ledger = SessionLedger(path, identity=identity, storage_key=STORAGE_KEY, create=False)
    try:
        assert format_version(path) == MIGRATED_VERSION  # tiles: its events' rows stay as they are
        hashes = event_hashes(path)
        assert stored_nodes(path) == expected_nodes(hashes, tiled=True)
        conversation = Conversation(peer="after the migration")
        conversation.note(text="appended to the migrated tree")
        ledger.save(conversation)
        new_checkpoint = ledger.checkpoint()
        proof = ledger.consistency_proof(len(hashes))
        proof.check()
    finally:
        ledger.close()
    assert stored_nodes(path) == expected_nodes(event_hashes(path), tiled=True)
    report = verify(path, old_checkpoint, trusted_signers=[identity.did])
    assert report.ok and report.tree_checked, report.summary()
    assert report.stored_checkpoints == 2 and new_checkpoint.version == 2  # its own, and ours


@pytest.mark.postgres
def test_importing_a_format_1_ledger_into_postgresql_builds_its_tree(format_1, pg_url):
    path, old_checkpoint = format_1
    import_sqlite_ledger(path, pg_url)
    assert stored_nodes(pg_url) == expected_nodes(event_hashes(path))
    raw = open_raw(pg_url)
    (version,) = raw.execute("SELECT value FROM ledger_meta WHERE key='format_version'").fetchone()
    assert version == str(FORMAT_VERSION)
    assert verify(pg_url, old_checkpoint).ok


@pytest.mark.postgres
def test_a_postgresql_schema_of_version_1_migrates_with_its_tree(pg_url, clock, storage_key):
    from l2_session.infrastructure.ledger.pg_url import PostgresLocation

    identity = NodeIdentity.generate()
    ledger = SessionLedger(pg_url, identity=identity, storage_key=storage_key, clock=clock)
    save_noted(ledger, 20, "before the tree")
    ledger.close()
    expected = expected_nodes(event_hashes(pg_url), tiled=True)
    assert stored_nodes(pg_url) == expected  # 40 events: format 4 and tiles hold the same
    schema = PostgresLocation.parse(pg_url).schema
    raw = open_raw(pg_url)  # as the owner: make it the schema of version 1 it once was
    raw.execute(f"DROP TABLE {schema}.ledger_tree")
    raw.execute(f"DROP TABLE {schema}.ledger_cosignatures")
    raw.execute(f"ALTER TABLE {schema}.ledger_events DROP COLUMN tree")
    raw.execute(
        f"UPDATE {schema}.ledger_meta SET value='1' WHERE key IN ('schema_version', 'format_version')"
    )
    raw.commit()
    assert verify(pg_url).ok  # read as it is
    reopened = SessionLedger(pg_url, identity=identity, storage_key=storage_key, clock=clock)
    try:
        assert stored_nodes(pg_url) == expected
        assert len(stored_rows_of(pg_url)) == 8  # tiles of 8 (5), nodes of 16 (2) and 32
        assert reopened.tree_head()[0] == 40
        save_noted(reopened, 2, "after the migration")  # appended in format 3
        assert stored_nodes(pg_url) == expected_nodes(event_hashes(pg_url), tiled=True)
    finally:
        reopened.close()


def older_format_ledger(
    location: Path | str, identity: NodeIdentity, clock, version: str = "2"
) -> None:
    """A ledger at ``location`` in format ``version`` (2 or 3), as this program wrote them
    before format 4, of 10 events: created empty and marked before its first event, so that
    its tree is in ledger_tree from the first append on (format 2: a row per node)."""
    SessionLedger(location, identity=identity, storage_key=STORAGE_KEY, clock=clock).close()
    mark_format(location, version)
    ledger = SessionLedger(location, identity=identity, storage_key=STORAGE_KEY, clock=clock)
    save_noted(ledger, 5, f"in format {version}")
    ledger.close()


@pytest.mark.parametrize("version", ["2", "3"])
def test_an_older_format_ledger_keeps_its_layout_as_it_grows(ledger_location, clock, version):
    identity = NodeIdentity.generate()
    older_format_ledger(ledger_location, identity, clock, version)
    ledger = SessionLedger(ledger_location, identity=identity, storage_key=STORAGE_KEY, clock=clock)
    try:
        save_noted(ledger, 4, f"appended in format {version}")  # positions 11 to 18
        ledger.save(Conversation(peer="last"))
        hashes = event_hashes(ledger_location)
        raw = open_raw(ledger_location)
        found = raw.execute("SELECT value FROM ledger_meta WHERE key='format_version'")
        assert found.fetchone()[0] == version
        columns = raw.execute("SELECT COUNT(*) FROM ledger_events WHERE tree IS NOT NULL")
        assert columns.fetchone()[0] == 0  # format 4's column stays empty
        raw.close()
        tiled = version == "3"
        assert stored_nodes(ledger_location) == expected_nodes(hashes, tiled=tiled)
        rows = stored_rows_of(ledger_location)
        if tiled:  # 19 events: tiles ending at 8 and 16, the node of 16 events
            assert rows == [(8, 3), (16, 3), (16, 4)]
        else:
            assert (2, 1) in rows  # a row per node
        leaves = [leaf_hash(h) for h in hashes]
        for position in range(1, len(hashes) + 1):
            proof = ledger.inclusion_proof(position)
            proof.check()
            assert proof.root == root(leaves)
        for old_size in range(1, len(hashes)):
            proof = ledger.consistency_proof(old_size)
            proof.check()
            assert proof.old_root == root(leaves[:old_size])
    finally:
        ledger.close()
    report = verify(ledger_location, trusted_signers=[identity.did])
    assert report.ok and report.tree_checked, report.summary()


def test_a_changed_level_1_node_of_a_format_2_ledger_is_caught(ledger_path, clock):
    identity = NodeIdentity.generate()
    older_format_ledger(ledger_path, identity, clock)
    assert verify(ledger_path, trusted_signers=[identity.did]).ok
    raw = sqlite3.connect(ledger_path)
    raw.execute("DROP TRIGGER ledger_tree_no_update")
    raw.execute("UPDATE ledger_tree SET hash=zeroblob(32) WHERE node=64*6+1")
    raw.commit()
    raw.close()
    report = verify(ledger_path, trusted_signers=[identity.did])
    assert [(p.position, p.detail) for p in report.problems] == [
        (6, "tree node of level 1: the stored hash differs from the recomputed one")
    ]
