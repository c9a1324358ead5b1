"""verify() across worker processes: the same report as one process, and problems found at the
seams between the ranges the workers checked."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from l2_session.infrastructure.ledger.verify import ProblemKind as K
from l2_session.infrastructure.ledger.verify import verify
from ledger_aggregates import Conversation
from tampering import flip_byte, open_as_attacker

CHUNK = 16


@pytest.fixture
def interleaved(ledger_factory, clock):
    """Sessions whose events interleave across many chunks (one save per step, round robin)."""
    ledger = ledger_factory(snapshot_interval=None)
    conversations = [Conversation(peer=f"p{i}") for i in range(5)]
    for step in range(20):
        for c in conversations:
            c.note(text=f"step {step}")
            clock.advance(0.01)
            ledger.save(c)
    ledger.close()
    return ledger  # verify() takes the (closed) ledger: its file or its PostgreSQL schema


def test_parallel_and_single_process_reports_agree(interleaved):
    one = verify(interleaved, workers=1, chunk_events=CHUNK)
    many = verify(interleaved, workers=2, chunk_events=CHUNK)
    assert many.workers == 2 and one.workers == 1
    assert one.ok and many.ok
    assert (one.events_checked, one.sessions, one.head_hash, one.signers_seen) == (
        many.events_checked, many.sessions, many.head_hash, many.signers_seen,
    )  # fmt: skip
    assert many.events_checked == 105


@pytest.mark.parametrize("position", [CHUNK, CHUNK + 1, 3 * CHUNK + 1])
def test_a_row_deleted_at_a_seam_is_found_by_the_stitching(interleaved, ledger_path, tmp_path, position):
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(ledger_path, copy)
    db = open_as_attacker(copy)
    sid = db.execute("SELECT session_id FROM ledger_events WHERE position=?", (position,)).fetchone()[0]
    db.execute("DELETE FROM ledger_events WHERE position=?", (position,))
    db.commit()
    report = verify(copy, workers=2, chunk_events=CHUNK)
    assert report.workers == 2
    assert K.GLOBAL_CHAIN_BREAK in report.kinds_at(position + 1)
    # The session lost a middle event: its next event, in a later range, shows the gap.
    later = sqlite3.connect(copy).execute(
        "SELECT MIN(position) FROM ledger_events WHERE session_id=? AND position>?", (sid.decode(), position)
    ).fetchone()[0]
    assert {K.VERSION_GAP, K.SESSION_CHAIN_BREAK} <= report.kinds_at(later)


def test_a_byte_flip_in_a_later_range_is_found_by_its_worker(interleaved, ledger_path, tmp_path):
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(ledger_path, copy)
    db = open_as_attacker(copy)
    flip_byte(db, 5 * CHUNK + 3, "signature", 9)
    db.close()
    report = verify(copy, workers=2, chunk_events=CHUNK)
    assert report.kinds_at(5 * CHUNK + 3) == {K.BAD_SIGNATURE}
    assert len(report.problems) == 1


def test_chunk_size_must_be_positive(interleaved):
    with pytest.raises(ValueError, match="chunk_events must be >= 1, got 0"):
        verify(interleaved, chunk_events=0)
