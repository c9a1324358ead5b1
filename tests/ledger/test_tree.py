"""The ledger's Merkle tree (infrastructure/ledger/tree.py) as the backends keep it: built in
the transaction of every append, equal to the tree recomputed from the events, and serving
proofs that check — on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.infrastructure.ledger import Checkpoint, SessionLedger
from l2_session.infrastructure.ledger.errors import LedgerCorrupted, ProofRequestError
from l2_session.infrastructure.ledger.merkle import (
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
)
from l2_session.infrastructure.ledger.tree import (
    MAX_SELECTS,
    ConsistencyProof,
    InclusionProof,
    TreeSQL,
    inline_nodes,
    tree_layout,
    with_tree_column,
)
from l2_session.infrastructure.ledger.verify_tree import stored_rows
from ledger_aggregates import Conversation, populate
from pgserver import open_raw


def event_hashes(location) -> list[bytes]:
    raw = open_raw(location)
    rows = raw.execute("SELECT event_hash FROM ledger_events ORDER BY position").fetchall()
    return [bytes(r[0]) for r in rows]


def stored_nodes(location) -> list[tuple[int, int, bytes]]:
    """(position, level, hash) of every stored node, in order (docs/ledger-format.md §13): in
    format 4 from the events' tree column (the nodes an event completes, levels 1, 2, ...);
    before, from ledger_tree, where a node's key is 64 * position + level, and in format 3 the
    row of a level-3 node holds the 7 nodes of its 8 events."""
    raw = open_raw(location)
    version = raw.execute("SELECT value FROM ledger_meta WHERE key='format_version'")
    layout = tree_layout(version.fetchone()[0])
    if layout == "inline":
        rows = raw.execute(
            "SELECT position, tree FROM ledger_events WHERE tree IS NOT NULL ORDER BY position"
        )
        return [node for p, column in rows.fetchall() for node in inline_nodes(p, bytes(column))]
    rows = raw.execute("SELECT node, hash FROM ledger_tree ORDER BY node")
    return list(stored_rows(((r[0], bytes(r[1])) for r in rows.fetchall()), layout))


def mark_format(location, version: str) -> None:
    """Mark the ledger at ``location`` as of format ``version`` (2 or 3): done to a new, empty
    ledger, it makes one that keeps its tree as a ledger created before format 4 does."""
    raw = open_raw(location)
    assert raw.execute("SELECT COUNT(*) FROM ledger_events").fetchone()[0] == 0
    raw.execute("UPDATE ledger_meta SET value=? WHERE key='format_version'", (version,))
    raw.commit()
    raw.close()


def stored_rows_of(location) -> list[tuple[int, int]]:
    """(position, level) of each ledger_tree row, as stored."""
    rows = open_raw(location).execute("SELECT node FROM ledger_tree ORDER BY node").fetchall()
    return [(r[0] // 64, r[0] % 64) for r in rows]


def expected_nodes(hashes: list[bytes], tiled: bool = False) -> list[tuple[int, int, bytes]]:
    """Every perfect subtree of two or more leaves, computed from scratch: a format-2 or 4
    ledger stores them all; a format-3 one (``tiled``) all but those of its last, unfinished
    block of 8, whose tile is not written yet."""
    leaves = [leaf_hash(h) for h in hashes]
    complete = len(leaves) // 8 * 8 if tiled else len(leaves)
    found = []
    for position in range(1, complete + 1):
        level = 1
        while position % (1 << level) == 0:
            found.append((position, level, root(leaves[position - (1 << level) : position])))
            level += 1
    return found


def test_the_stored_tree_is_the_tree_of_the_events(ledger_factory, clock, ledger_location):
    ledger = ledger_factory()
    populate(ledger, clock, sessions=7, notes=5)  # 49 events, saves of 7
    hashes = event_hashes(ledger_location)
    assert len(hashes) == 49
    assert stored_nodes(ledger_location) == expected_nodes(hashes)
    size, tree_root = ledger.tree_head()
    assert (size, tree_root) == (49, root([leaf_hash(h) for h in hashes]))


def test_every_proof_served_equals_the_recomputed_one_and_checks(
    ledger_factory, clock, ledger_location
):
    ledger = ledger_factory()
    populate(ledger, clock, sessions=5, notes=2, with_keys=False)  # 15 events
    leaves = [leaf_hash(h) for h in event_hashes(ledger_location)]
    for size in range(1, len(leaves) + 1):
        for position in range(1, size + 1):
            proof = ledger.inclusion_proof(position, size)
            assert list(proof.hashes) == inclusion_proof(position - 1, leaves[:size])
            assert proof.root == root(leaves[:size])
            proof.check()
        for old in range(1, size + 1):
            proof = ledger.consistency_proof(old, size)
            expected = consistency_proof(old, leaves[:size]) if old < size else []
            assert list(proof.hashes) == expected
            proof.check()


def test_proofs_round_trip_through_json_and_a_changed_one_fails(ledger_factory, clock):
    ledger = ledger_factory()
    populate(ledger, clock, sessions=3, notes=3)
    inclusion = ledger.inclusion_proof(5)
    assert InclusionProof.from_json(inclusion.to_json()) == inclusion
    consistency = ledger.consistency_proof(3)
    assert ConsistencyProof.from_json(consistency.to_json()) == consistency
    with pytest.raises(ProofError, match="'sha256' hashes"):
        InclusionProof.from_json({**inclusion.to_json(), "hash": "sha256"})
    forged = InclusionProof(**{**inclusion.__dict__, "event_hash": bytes(32)})
    with pytest.raises(ProofError):
        forged.check()
    moved = InclusionProof(**{**inclusion.__dict__, "position": 6})
    with pytest.raises(ProofError):
        moved.check()
    shortened = ConsistencyProof(**{**consistency.__dict__, "hashes": consistency.hashes[:-1]})
    with pytest.raises(ProofError):
        shortened.check()


def test_a_proof_the_ledger_cannot_give_is_refused_by_name(ledger_factory, clock):
    ledger = ledger_factory()
    populate(ledger, clock, sessions=2, notes=1, with_keys=False)  # 4 events
    with pytest.raises(ProofRequestError, match="position 5 is not in a tree of 4"):
        ledger.inclusion_proof(5)
    with pytest.raises(ProofRequestError, match="position 0"):
        ledger.inclusion_proof(0)
    with pytest.raises(ProofRequestError, match="tree size 9"):
        ledger.inclusion_proof(1, 9)
    with pytest.raises(ProofRequestError, match="from 5 to 4"):
        ledger.consistency_proof(5)


def test_a_checkpoint_signs_the_root_and_is_a_c2sp_note(ledger_factory, clock, identity):
    from l2_session.infrastructure.ledger.checkpoint import verifier_key
    from l2_session.infrastructure.ledger.note import Verifier, open_note
    from l2_session.infrastructure.ledger.tree_head import TreeHead

    ledger = ledger_factory()
    populate(ledger, clock, sessions=3, notes=2)
    cp = ledger.checkpoint()
    size, tree_root = ledger.tree_head()
    assert (cp.version, cp.size, cp.root) == (2, size, tree_root)
    text, signers = open_note(cp.to_text(), [Verifier.parse(verifier_key(identity.did))])
    assert [v.name for v in signers] == [identity.did]
    head = TreeHead.parse(text)
    assert (head.origin, head.size, head.root) == (
        f"l2-session/ledger/{ledger.ledger_id}",
        size,
        tree_root,
    )
    assert ledger.checkpoints() == [cp]
    assert Checkpoint.parse(cp.to_text()) == cp and cp.signature_valid()


@pytest.mark.parametrize("version", ["4", "3"])
def test_a_damaged_stored_node_is_named_not_served(ledger_factory, clock, ledger_path, version):
    if version != "4":
        ledger_factory().close()
        mark_format(ledger_path, version)
    ledger = ledger_factory()
    populate(ledger, clock, sessions=4, notes=3, with_keys=False)  # 16 events
    ledger.close()
    raw = sqlite3.connect(ledger_path)
    if version == "4":  # the node of level 3 ending at 8 is the third hash of the event's row
        raw.execute("DROP TRIGGER ledger_events_no_update")
        raw.execute("UPDATE ledger_events SET tree=substr(tree, 1, 64) WHERE position=8")
    else:  # the tile of the first 8 events is the row of that node
        raw.execute("DROP TRIGGER ledger_tree_no_delete")
        raw.execute("DELETE FROM ledger_tree WHERE node=8*64+3")
    raw.commit()
    raw.close()
    reopened = ledger_factory()
    with pytest.raises(LedgerCorrupted, match="level 3 ending at position 8"):
        reopened.inclusion_proof(12)


@pytest.mark.parametrize("version", ["4", "3"])
def test_the_stored_tree_is_append_only(ledger_factory, clock, ledger_path, version):
    if version != "4":
        ledger_factory().close()
        mark_format(ledger_path, version)
    ledger = ledger_factory()
    populate(ledger, clock, sessions=3, notes=1)  # 9 events: the node of the first 8 is stored
    raw = sqlite3.connect(ledger_path)
    if version == "4":
        column = raw.execute("SELECT tree FROM ledger_events WHERE position=8").fetchone()[0]
        assert len(column) == 3 * 32  # the nodes of 2, 4 and 8 events ending there
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("UPDATE ledger_events SET tree=zeroblob(96) WHERE position=8")
        assert raw.execute("SELECT count(*) FROM ledger_tree").fetchone() == (0,)
        return
    assert raw.execute("SELECT count(*) FROM ledger_tree").fetchone() == (1,)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("UPDATE ledger_tree SET hash=zeroblob(32)")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("DELETE FROM ledger_tree")


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(saves=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=8))
def test_any_sequence_of_saves_and_reopenings_keeps_the_tree_equal_to_a_rebuilt_one(
    new_ledger_location, identity, storage_key, clock, saves
):
    location = new_ledger_location()
    for i, notes in enumerate(saves):
        ledger = SessionLedger(location, identity=identity, storage_key=storage_key, clock=clock)
        try:
            conversation = Conversation(peer=f"did:key:p{i}")
            for j in range(notes):
                conversation.note(text=f"{i}.{j}")
            ledger.save(conversation)
        finally:
            ledger.close()
    hashes = event_hashes(location)
    assert stored_nodes(location) == expected_nodes(hashes)


def test_proofs_stay_right_past_what_the_tree_keeps_in_memory(
    ledger_factory, clock, monkeypatch, ledger_location
):
    """The roots and upper nodes a TreeSQL keeps are dropped when full: proofs over more sizes
    than it keeps are still the recomputed ones."""
    from l2_session.infrastructure.ledger import tree

    monkeypatch.setattr(tree, "MAX_ROOTS", 3)
    monkeypatch.setattr(tree, "MAX_CACHED", 4)
    monkeypatch.setattr(tree, "CACHED_LEVEL", 1)
    ledger = ledger_factory()
    populate(ledger, clock, sessions=6, notes=3, with_keys=False)  # 24 events
    leaves = [leaf_hash(h) for h in event_hashes(ledger_location)]
    for size in range(2, 25):
        proof = ledger.consistency_proof(size - 1, size)
        assert proof.root == root(leaves[:size]) and proof.old_root == root(leaves[: size - 1])
        proof.check()
        inclusion = ledger.inclusion_proof(size // 2, size)
        assert list(inclusion.hashes) == inclusion_proof(size // 2 - 1, leaves[:size])


@pytest.mark.parametrize(
    "cached_level, max_cached, max_paths", [(1, 1000, 1000), (2, 1000, 3), (1, 5, 2)]
)
def test_every_proof_is_right_with_its_upper_levels_kept_partly_kept_or_dropped(
    ledger_factory, clock, monkeypatch, ledger_location, cached_level, max_cached, max_paths
):
    """A proof climbs its leaf's part: levels below the kept ones are read, kept ones come
    from memory (a block's whole upper path, once climbed), and a kept level not read yet is
    read with the rest. Two passes over every (position, size) and (old, size) pair — the
    second with what the first kept — each equal to the recomputation."""
    from l2_session.infrastructure.ledger import tree

    monkeypatch.setattr(tree, "CACHED_LEVEL", cached_level)
    monkeypatch.setattr(tree, "MAX_CACHED", max_cached)
    monkeypatch.setattr(tree, "MAX_PATHS", max_paths)
    ledger = ledger_factory()
    populate(ledger, clock, sessions=9, notes=2, with_keys=False)  # 27 events
    leaves = [leaf_hash(h) for h in event_hashes(ledger_location)]
    kept = ledger.ledger_recorder.tree_sql._nodes
    for _ in range(2):
        for size in range(1, len(leaves) + 1):
            for k in range(1, size + 1):
                proof = ledger.inclusion_proof(k, size)
                assert list(proof.hashes) == inclusion_proof(k - 1, leaves[:size])
                consistency = ledger.consistency_proof(k, size)
                assert consistency.old_root == root(leaves[:k])
                expected = consistency_proof(k, leaves[:size]) if k < size else []
                assert list(consistency.hashes) == expected
        assert kept and len(kept) <= max_cached
        assert min(node & tree.LEVEL_MASK for node in kept) >= cached_level
        paths = ledger.ledger_recorder.tree_sql._paths
        assert paths and len(paths) <= max_paths


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    saves=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=6),
    picks=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=30
    ),
)
def test_any_proof_served_is_the_naive_one(
    new_ledger_location, identity, storage_key, clock, saves, picks
):
    """Random saves, then proofs for random (position, size) and (old, new) pairs: each the
    recomputation from all the leaves gives, and each checks."""
    location = new_ledger_location()
    ledger = SessionLedger(location, identity=identity, storage_key=storage_key, clock=clock)
    try:
        for i, notes in enumerate(saves):
            conversation = Conversation(peer=f"did:key:p{i}")
            for j in range(notes):
                conversation.note(text=f"{i}.{j}")
            ledger.save(conversation)
        leaves = [leaf_hash(h) for h in event_hashes(location)]
        n = len(leaves)
        for a, b in picks:
            size = 1 + b % n
            position = 1 + a % size
            proof = ledger.inclusion_proof(position, size)
            assert list(proof.hashes) == inclusion_proof(position - 1, leaves[:size])
            assert proof.root == root(leaves[:size])
            proof.check()
            old = 1 + a % size
            consistency = ledger.consistency_proof(old, size)
            assert consistency.old_root == root(leaves[:old])
            expected = consistency_proof(old, leaves[:size]) if old < size else []
            assert list(consistency.hashes) == expected
            consistency.check()
    finally:
        ledger.close()


def test_many_inclusion_proofs_from_one_statement_are_each_the_single_one(
    ledger_factory, clock, ledger_location
):
    ledger = ledger_factory()
    populate(ledger, clock, sessions=7, notes=2, with_keys=False)  # 21 events
    positions = [1, 21, 7, 7, 13, 2]
    many = ledger.inclusion_proofs(positions)
    assert [p.position for p in many] == positions
    assert many == [ledger.inclusion_proof(p) for p in positions]
    for proof in many:
        proof.check()
    with pytest.raises(ProofRequestError, match="position 22"):
        ledger.inclusion_proofs([3, 22])


@pytest.mark.parametrize("version", ["4", "3"])
def test_thousands_of_inclusion_proofs_asked_at_once_are_each_the_single_one(
    ledger_factory, clock, ledger_path, version
):
    """More than one statement can hold (SQLite: 500 parts, 32,766 parameters): read in
    several, in one transaction, and each proof is the one asked alone."""
    if version != "4":
        ledger_factory().close()
        mark_format(ledger_path, version)
    ledger = ledger_factory()
    conversations = [Conversation(peer=f"p{i}") for i in range(300)]
    for c in conversations:
        for n in range(9):
            c.note(text=f"note {n}")
    ledger.save(*conversations)  # 3,000 events in one transaction
    positions = [*range(2999, 0, -2), 3000]
    many = ledger.inclusion_proofs(positions)
    assert [p.position for p in many] == positions
    for position in positions[::97]:
        assert many[positions.index(position)] == ledger.inclusion_proof(position)
    for proof in many:
        proof.check()


def test_each_events_tree_column_holds_the_nodes_it_completes_and_a_gap_is_refused():
    """Format 4's column of the event at position p: the nodes ending at p, levels 1, 2, ...
    (p's trailing zero bits say how many), as the naive recomputation has them; rows with a
    gap in their positions are refused by name, not given a tree."""
    hashes = [bytes([i]) * 32 for i in range(1, 41)]
    rows = [(p, *[None] * 8, h) for p, h in enumerate(hashes, start=1)]
    columns = [row[-1] for row in with_tree_column(rows)]
    assert [len(c or b"") // 32 for c in columns[:8]] == [0, 1, 0, 2, 0, 1, 0, 3]
    found = [n for p, c in enumerate(columns, start=1) if c for n in inline_nodes(p, c)]
    assert found == expected_nodes(hashes)
    with pytest.raises(LedgerCorrupted, match="position 12 follows 10"):
        list(with_tree_column(rows[:10] + rows[11:]))


def test_the_statements_kept_for_shapes_of_reads_are_bounded():
    """Proofs asked together come in as many shapes of read as there are batch sizes: the
    statements kept for them start over rather than grow with a long-lived ledger."""
    sql = TreeSQL("?", "ledger_events", "ledger_tree")
    for n in range(1, 3 * MAX_SELECTS):
        statement = sql._select_inline(n, n % 3)
        assert statement.count("?") == n + 2 * (n % 3)
        assert len(sql._selects) <= MAX_SELECTS
