"""verify() across worker processes: the same report as one process, and problems found at the
seams between the ranges the workers checked."""

from __future__ import annotations

import itertools
import shutil
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from l2_session.infrastructure.ledger.verify import SIGNATURE_BLOCK, plan_ranges, verify
from l2_session.infrastructure.ledger.verify import ProblemKind as K
from ledger_aggregates import Conversation, populate
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
def test_a_row_deleted_at_a_seam_is_found_by_the_stitching(
    interleaved, ledger_path, tmp_path, position
):
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(ledger_path, copy)
    db = open_as_attacker(copy)
    sid = db.execute(
        "SELECT session_id FROM ledger_events WHERE position=?", (position,)
    ).fetchone()[0]
    db.execute("DELETE FROM ledger_events WHERE position=?", (position,))
    db.commit()
    report = verify(copy, workers=2, chunk_events=CHUNK)
    assert report.workers == 2
    assert K.GLOBAL_CHAIN_BREAK in report.kinds_at(position + 1)
    # The session lost a middle event: its next event, in a later range, shows the gap.
    later = (
        sqlite3.connect(copy)
        .execute(
            "SELECT MIN(position) FROM ledger_events WHERE session_id=? AND position>?",
            (sid.decode(), position),
        )
        .fetchone()[0]
    )
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


def _covered(ranges: list[tuple[int, int]]) -> list[int]:
    return [p for lo, hi in ranges for p in range(lo, hi + 1)]


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_planned_ranges_cover_every_position_once_in_order(workers):
    bounds = list(range(1, 1001, 10))  # every 10th of positions 1..1000
    ranges = plan_ranges(bounds, 1000, steps_per_chunk=8, workers=workers)
    assert _covered(ranges) == list(range(1, 1001))
    sizes = [hi - lo + 1 for lo, hi in ranges]
    assert sizes[0] == 80  # whole chunks while much is left
    if workers == 1:
        assert set(sizes) == {80, 1000 % 80}  # one process: no reason to split the tail
    else:
        assert (
            sizes == sorted(sizes, reverse=True) and sizes[-1] == 10
        )  # the tail shrinks to a step


@settings(max_examples=200)
@given(
    positions=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=300, unique=True),
    step=st.integers(1, 20),
    steps_per_chunk=st.integers(1, 10),
    workers=st.integers(1, 8),
)
def test_planned_ranges_hold_every_stored_position_exactly_once(
    positions, step, steps_per_chunk, workers
):
    """Whatever positions an attacker left (gaps, rows moved far away), every stored row falls in
    exactly one range."""
    positions.sort()
    bounds = positions[::step]
    ranges = plan_ranges(bounds, positions[-1], steps_per_chunk, workers)
    assert all(lo <= hi for lo, hi in ranges)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))
    for p in positions:
        assert sum(lo <= p <= hi for lo, hi in ranges) == 1


def test_the_structural_check_runs_beside_the_workers(ledger_factory, ledger_path, clock, tmp_path):
    """PRAGMA quick_check runs in a thread beside the worker processes; a damaged index page
    is still reported."""
    ledger = ledger_factory(snapshot_interval=None)
    populate(ledger, clock, sessions=40, notes=20)
    ledger.close()
    db = sqlite3.connect(ledger_path)
    index_root = db.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_ledger_events_1'"
    ).fetchone()[0]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    damaged = tmp_path / "damaged.sqlite3"
    data = bytearray(ledger_path.read_bytes())
    start = (index_root - 1) * page_size
    data[start + 3 : start + 5] = b"\xff\xff"  # the index page now claims 65535 cells
    damaged.write_bytes(bytes(data))
    report = verify(damaged, workers=2, chunk_events=64)
    assert report.workers == 2
    assert {p.kind for p in report.problems} == {K.DATABASE_CORRUPT}
    # The rows themselves are intact and all checked: 40 sessions of 22 events.
    assert report.events_checked == 40 * 22


def test_bad_signatures_are_found_in_every_block_of_signature_checks(
    ledger_factory, ledger_path, clock
):
    """Signatures are checked in blocks of SIGNATURE_BLOCK after the rows' other checks: a bad
    one is named by its own position in the first block, a middle one and the last partial one."""
    ledger = ledger_factory(snapshot_interval=None)
    populate(ledger, clock, sessions=30, notes=20)  # 660 events: blocks 1-256, 257-512, 513-660
    ledger.close()
    db = open_as_attacker(ledger_path)
    forged = [1, SIGNATURE_BLOCK, SIGNATURE_BLOCK + 1, 600]
    for position in forged:
        db.execute(
            "UPDATE ledger_events SET signature = ? WHERE position = ?", (bytes(64), position)
        )
    db.commit()
    report = verify(ledger_path, workers=1)
    assert report.events_checked == 660
    assert sorted(p.position for p in report.problems) == forged
    assert {p.kind for p in report.problems} == {K.BAD_SIGNATURE}
