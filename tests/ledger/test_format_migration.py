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
from l2_session.infrastructure.ledger.merkle import leaf_hash, root
from l2_session.infrastructure.ledger.pg_import import import_sqlite_ledger
from l2_session.infrastructure.ledger.tree import TreeMissing
from l2_session.infrastructure.ledger.verify import verify
from ledger_aggregates import Conversation
from pgserver import open_raw
from test_tree import event_hashes, expected_nodes, stored_nodes

FIXTURES = Path(__file__).parent / "fixtures"
IDENTITY_SEED = bytes(range(32))  # fixtures/make_stable_topics_ledger.py
STORAGE_KEY = bytes(range(32, 64))


@pytest.fixture
def format_1(tmp_path) -> tuple[Path, str]:
    path = tmp_path / "old.sqlite3"
    shutil.copy(FIXTURES / "stable_topics.sqlite3", path)
    checkpoint = (FIXTURES / "stable_topics.checkpoint").read_text(encoding="utf-8")
    return path, checkpoint


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
        assert format_version(path) == "2"
        hashes = event_hashes(path)
        assert stored_nodes(path) == expected_nodes(hashes)
        conversation = Conversation(peer="after the migration")
        conversation.note(text="appended to the migrated tree")
        ledger.save(conversation)
        new_checkpoint = ledger.checkpoint()
        proof = ledger.consistency_proof(len(hashes))
        proof.check()
    finally:
        ledger.close()
    assert stored_nodes(path) == expected_nodes(event_hashes(path))
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
    assert version == "2"
    assert verify(pg_url, old_checkpoint).ok


@pytest.mark.postgres
def test_a_postgresql_schema_of_version_1_migrates_with_its_tree(pg_url, clock, storage_key):
    from l2_session.infrastructure.ledger.pg_url import PostgresLocation

    identity = NodeIdentity.generate()
    ledger = SessionLedger(pg_url, identity=identity, storage_key=storage_key, clock=clock)
    for i in range(5):
        conversation = Conversation(peer=f"p{i}")
        conversation.note(text="before the tree")
        ledger.save(conversation)
    ledger.close()
    expected = stored_nodes(pg_url)
    assert len(expected) == 8  # 10 events: 5 + 2 + 1 nodes
    schema = PostgresLocation.parse(pg_url).schema
    raw = open_raw(pg_url)  # as the owner: make it the schema of version 1 it once was
    raw.execute(f"DROP TABLE {schema}.ledger_tree")
    raw.execute(f"DROP TABLE {schema}.ledger_cosignatures")
    raw.execute(
        f"UPDATE {schema}.ledger_meta SET value='1' WHERE key IN ('schema_version', 'format_version')"
    )
    raw.commit()
    assert verify(pg_url).ok  # read as it is
    reopened = SessionLedger(pg_url, identity=identity, storage_key=storage_key, clock=clock)
    try:
        assert stored_nodes(pg_url) == expected
        assert reopened.tree_head()[0] == 10
    finally:
        reopened.close()
