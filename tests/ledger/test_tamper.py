"""Tamper evidence: every edit an attacker with file access can make is reported by verify(),
with the position and the kind of the problem."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import ProblemKind as K
from l2_session.infrastructure.ledger.verify import verify
from ledger_aggregates import populate
from tampering import (
    COLUMNS,
    append_forged,
    cover_tracks,
    flip_byte,
    open_as_attacker,
    rechain_from,
    swap_rows,
)

SESSIONS, NOTES = 4, 3  # 4 sessions x (open + key + 3 notes) = 20 events
EVENTS = SESSIONS * (NOTES + 2)

# What flipping a byte of each column must be reported as, at the row's position.
EXPECTED = {
    "position": {K.POSITION_GAP, K.HASH_MISMATCH},
    "session_id": {K.HASH_MISMATCH, K.MALFORMED_ROW},
    "version": {K.HASH_MISMATCH},
    "topic": {K.HASH_MISMATCH, K.MALFORMED_ROW},
    "timestamp": {K.HASH_MISMATCH},
    "payload": {K.HASH_MISMATCH},
    "sealed": {K.SEALED_MISMATCH},
    "prev_session_hash": {K.HASH_MISMATCH},
    "prev_global_hash": {K.HASH_MISMATCH, K.GLOBAL_CHAIN_BREAK},
    "event_hash": {K.HASH_MISMATCH},
    "signer": {K.UNKNOWN_SIGNER, K.MALFORMED_ROW},
    "signature": {K.BAD_SIGNATURE},
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, NodeIdentity, str]:
    """One ledger built once; each test works on its own copy."""
    path = tmp_path_factory.mktemp("pristine") / "ledger.sqlite3"
    identity, clock = NodeIdentity.generate(), ManualClock()
    ledger = SessionLedger(path, identity=identity, storage_key=b"s" * 32, clock=clock)
    populate(ledger, clock, sessions=SESSIONS, notes=NOTES)
    checkpoint = ledger.checkpoint().to_text()
    ledger.close()
    assert verify(path).ok
    return path, identity, checkpoint


def copy_of(pristine: tuple[Path, NodeIdentity, str], tmp: Path) -> Path:
    # A fresh folder per copy: hypothesis runs many examples in one test's tmp_path, and a -wal
    # or -shm file left by one example must never be read with the next example's database.
    target = Path(tempfile.mkdtemp(dir=tmp)) / "copy.sqlite3"
    shutil.copy(pristine[0], target)
    return target


def sealed_positions(path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT position FROM ledger_events WHERE sealed IS NOT NULL")
        return [r[0] for r in rows]


@pytest.mark.parametrize("column", COLUMNS)
def test_flipping_a_byte_of_any_column_is_reported_at_its_position(pristine, tmp_path, column):
    path = copy_of(pristine, tmp_path)
    position = sealed_positions(path)[1] if column == "sealed" else 7
    db = open_as_attacker(path)
    where = flip_byte(db, position, column, offset=5)
    db.close()
    report = verify(path)
    assert not report.ok
    kinds = report.kinds_at(where) | (
        report.kinds_at(position + 1) if column == "position" else set()
    )
    assert kinds & EXPECTED[column], (column, report.summary())


@settings(
    max_examples=int(os.environ.get("L2S_TAMPER_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    column=st.sampled_from(COLUMNS),
    position=st.integers(min_value=1, max_value=EVENTS),
    offset=st.integers(min_value=0, max_value=10_000),
)
def test_random_byte_flips_are_always_detected(pristine, tmp_path, column, position, offset):
    path = copy_of(pristine, tmp_path)
    if column == "sealed":
        candidates = sealed_positions(path)
        position = candidates[position % len(candidates)]
    db = open_as_attacker(path)
    where = flip_byte(db, position, column, offset)
    db.close()
    report = verify(path)
    kinds = report.kinds_at(where) | (
        report.kinds_at(position + 1) if column == "position" else set()
    )
    assert kinds & EXPECTED[column], (column, position, offset, report.summary())


def test_a_deleted_row_breaks_the_global_chain_after_it(pristine, tmp_path):
    path = copy_of(pristine, tmp_path)
    db = open_as_attacker(path)
    db.execute("DELETE FROM ledger_events WHERE position = 9")
    db.commit()
    report = verify(path)
    assert K.GLOBAL_CHAIN_BREAK in report.kinds_at(10)
    assert K.POSITION_GAP in report.kinds_at(10)


def test_deleting_a_whole_session_is_detected(pristine, tmp_path):
    path = copy_of(pristine, tmp_path)
    db = open_as_attacker(path)
    sid = db.execute("SELECT session_id FROM ledger_events WHERE position = 6").fetchone()[0]
    db.execute("DELETE FROM ledger_events WHERE session_id = ?", (sid.decode(),))
    db.commit()
    report = verify(path)
    assert K.GLOBAL_CHAIN_BREAK in report.kinds_at(11)  # the session held positions 6..10


def test_swapped_rows_are_reported_at_both_positions(pristine, tmp_path):
    path = copy_of(pristine, tmp_path)
    db = open_as_attacker(path)
    swap_rows(db, 4, 13)
    report = verify(path)
    assert K.HASH_MISMATCH in report.kinds_at(4)
    assert K.HASH_MISMATCH in report.kinds_at(13)


def test_a_forged_row_signed_by_an_unknown_key_is_reported(pristine, tmp_path):
    path = copy_of(pristine, tmp_path)
    db = open_as_attacker(path)
    position = append_forged(db, NodeIdentity.generate())
    report = verify(path)
    assert report.kinds_at(position) == {K.UNKNOWN_SIGNER}
    assert len(report.problems) == 1


def test_a_forger_who_registers_their_key_is_caught_by_explicit_trust(pristine, tmp_path):
    path, node, _ = pristine
    path = copy_of(pristine, tmp_path)
    db = open_as_attacker(path)
    position = append_forged(db, NodeIdentity.generate(), register=True)
    cover_tracks(db)
    unanchored = verify(path)
    assert unanchored.ok  # the ledger's own signer list was rewritten too ...
    assert not unanchored.anchored and "signers: UNANCHORED" in unanchored.summary()  # ... said
    report = verify(path, trusted_signers=[node.did])  # ... so auditors pin the node keys
    assert report.kinds_at(position) == {K.UNKNOWN_SIGNER}


def test_a_truncated_tail_is_detected_against_an_earlier_checkpoint(pristine, tmp_path):
    path = copy_of(pristine, tmp_path)
    _, _, checkpoint = pristine
    db = open_as_attacker(path)
    db.execute("DELETE FROM ledger_events WHERE position > ?", (EVENTS - 3,))
    db.commit()
    cover_tracks(db)
    assert verify(path).ok  # a clean prefix looks like a shorter ledger ...
    report = verify(path, checkpoint)  # ... but not to someone who kept a checkpoint
    assert report.kinds_at(EVENTS) == {K.CHECKPOINT_MISMATCH}
    assert "truncated" in report.problems[0].detail


def test_history_rewritten_with_a_stolen_key_is_detected_against_a_checkpoint(pristine, tmp_path):
    path = copy_of(pristine, tmp_path)
    _, node, checkpoint = pristine
    db = open_as_attacker(path)
    rechain_from(db, 5, node, b'{"text":"what really happened"}')
    cover_tracks(db)
    assert verify(path).ok  # every hash and signature checks out: the key signed it
    report = verify(path, checkpoint)
    assert report.kinds_at(EVENTS) == {K.CHECKPOINT_MISMATCH}
    assert "rewritten" in report.problems[0].detail


def test_the_store_refuses_update_and_delete(pristine, tmp_path):
    path = copy_of(pristine, tmp_path)
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only: UPDATE refused"):
        db.execute("UPDATE ledger_events SET payload = x'00' WHERE position = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only: DELETE refused"):
        db.execute("DELETE FROM ledger_events WHERE position = 1")
    db.rollback()
    assert verify(path).ok


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("position", [2, 9, 10, 17])
def test_an_event_moved_back_in_time_and_re_signed_is_reported(
    pristine, tmp_path, workers, position
):
    """Timestamps never decrease along positions (the writer refuses to append out of time
    order): a key holder who re-signs an event as earlier than the one before is reported at
    that event — also at the seam between two workers' ranges (chunks of 8 events)."""
    path = copy_of(pristine, tmp_path)
    _, node, _ = pristine
    db = open_as_attacker(path)
    rechain_from(db, position, node, None, later_by_us=-10_000_000)
    cover_tracks(db)
    report = verify(path, workers=workers, chunk_events=8)
    assert [(p.kind, p.position) for p in report.problems] == [(K.TIME_REVERSED, position)]
