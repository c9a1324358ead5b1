"""Ledgers built once and kept under benchmarks/.work/, keyed by what they contain.

A cached file's name carries the ledger format version, the workload version and its size, so a
change to either builds a new one. A ledger is built under a temporary name and renamed only
when complete, so an interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from uuid import UUID

from blake3 import blake3
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.format import FORMAT_VERSION
from l2_session.infrastructure.ledger.schema import EVENTS_TABLE

from benchmarks.common import WORK_DIR, WORKLOAD_VERSION
from benchmarks.workload import (
    EVENTS_PER_SESSION,
    BenchSession,
    add_change,
    chunks,
    new_session,
    session_stream,
)

# Benchmark data only: a fixed storage key, so that a cached ledger's snapshots can be read
# back by a later run. Never a key for real data.
BENCH_STORAGE_KEY = blake3(b"l2-session benchmarks: storage key for cached data sets").digest()
_BUILD_BATCH_SESSIONS = 400


def _cached(kind: str, events: int) -> Path:
    return WORK_DIR / f"{kind}-f{FORMAT_VERSION}-w{WORKLOAD_VERSION}-{events}.sqlite3"


def _finish(ledger: SessionLedger, building: Path, final: Path) -> Path:
    # Fold the WAL into the main file so that the single renamed file is the whole ledger.
    with ledger.datastore.get_connection(commit=True) as connection:
        connection._sqlite_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.close()
    building.replace(final)
    for suffix in ("-wal", "-shm"):
        Path(str(building) + suffix).unlink(missing_ok=True)
    return final


def _start(path: Path) -> tuple[Path, SessionLedger]:
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".building")
    for suffix in ("", "-wal", "-shm"):
        Path(str(building) + suffix).unlink(missing_ok=True)
    # Building is not timed: durability "off" only makes it quicker to produce the same rows.
    ledger = SessionLedger(
        building, identity=NodeIdentity.generate(), storage_key=BENCH_STORAGE_KEY, durability="off"
    )
    return building, ledger


def many_sessions_ledger(events: int) -> Path:
    """A ledger of ``events`` events in sessions of 5 (the verify suite's data set)."""
    path = _cached("verify", events)
    if path.exists():
        return path
    building, ledger = _start(path)
    stream = session_stream(events // EVENTS_PER_SESSION, seed=7)
    for batch in chunks(stream, _BUILD_BATCH_SESSIONS):
        ledger.save(*batch)
    return _finish(ledger, building, path)


def long_session_ledger(events: int) -> tuple[Path, UUID]:
    """A ledger holding one session of ``events`` events, saved every snapshot interval so
    that a snapshot is taken at each multiple of it (the replay suite's data set)."""
    path = _cached("replay", events)
    if not path.exists():
        building, ledger = _start(path)
        session: BenchSession = new_session(random.Random(11), events=1)
        interval = ledger.snapshot_interval or 100
        rng = random.Random(12)
        for version in range(2, events + 1):
            add_change(session, rng)
            if version % interval == 0 or version == events:
                ledger.save(session)
        _finish(ledger, building, path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (session_id,) = conn.execute(f"SELECT session_id FROM {EVENTS_TABLE} LIMIT 1").fetchone()
    finally:
        conn.close()
    return path, UUID(session_id)
