"""WAL checkpoints run on the ledger's checkpointer thread, not inside an append's commit
(infrastructure/ledger/walcheckpoint.py); the connections keep SQLite's own checkpoint only as
a backstop, far past its default. Real SQLite files."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import verify
from l2_session.infrastructure.ledger.walcheckpoint import WAL_BACKSTOP_PAGES, WalCheckpointer
from ledger_aggregates import populate

WAIT_S = 10  # a bound for a wait that should end at once; never a measurement


def _until(condition) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _checkpointer(ledger: SessionLedger) -> WalCheckpointer:
    found: WalCheckpointer = ledger.datastore.checkpointer  # type: ignore[attr-defined]
    return found


def test_appends_leave_the_checkpoint_to_the_checkpointer_thread(
    ledger_factory, ledger_path, clock
):
    ledger = ledger_factory()
    writer = ledger.datastore.writer.connection
    assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_BACKSTOP_PAGES
    checkpointer = _checkpointer(ledger)
    assert checkpointer.checkpoints == 0  # nothing appended, no thread yet
    populate(ledger, clock, sessions=20)
    _until(lambda: checkpointer.last is not None and checkpointer.last[2] > 0)
    busy, logged, copied = checkpointer.last
    assert busy == 0 and 0 < copied <= logged
    assert verify(ledger).ok


def test_closing_the_ledger_stops_the_thread(ledger_factory, ledger_path, clock):
    ledger = ledger_factory()
    populate(ledger, clock, sessions=2)
    checkpointer = _checkpointer(ledger)
    _until(lambda: checkpointer.checkpoints >= 1)
    thread = checkpointer._thread
    assert thread is not None and thread.is_alive()
    ledger.close()
    assert not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("wal-checkpoint")]


def test_a_checkpoint_that_fails_is_logged_and_the_next_round_runs(tmp_path: Path, caplog):
    """The thread outlives a failing round (here: the file is not a database)."""
    path = tmp_path / "not-a-database"
    path.write_bytes(b"x" * 4096)
    checkpointer = WalCheckpointer(str(path), "NORMAL", lock_timeout=1, min_interval_s=0.001)
    try:
        checkpointer.notify()
        _until(lambda: "WAL checkpoint of" in caplog.text)
        path.unlink()
        sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").fetchone()
        checkpointer.notify()
        _until(lambda: checkpointer.checkpoints >= 1)
    finally:
        checkpointer.close()
