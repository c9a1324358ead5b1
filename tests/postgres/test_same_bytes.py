"""One ledger, two backends: the same rows verify the same, and tampering is reported the same.

A ledger written on SQLite is moved row for row to PostgreSQL (pg_import.py). Nothing is
re-hashed or re-signed, so if the two backends hashed or signed different bytes, the copy would
not verify; and each tampering below, done identically to both copies, must yield identical
reports.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.domain import Aggregate, event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.pg_import import import_sqlite_ledger
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from l2_session.infrastructure.ledger.verify import VerificationReport, verify

pytestmark = pytest.mark.postgres


class Note(Aggregate):
    secret_fields = ("secret",)

    @event("Opened")
    def __init__(self, text: str, secret: bytes) -> None:
        self.text = text
        self.secret = secret

    @event("Edited")
    def edit(self, text: str) -> None:
        self.text = text


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A SQLite ledger of 6 sessions x 3 events and the checkpoint taken at its head."""
    path = tmp_path_factory.mktemp("same-bytes") / "ledger.sqlite3"
    clock = ManualClock()
    ledger = SessionLedger(path, identity=NodeIdentity.generate(), storage_key=os.urandom(32),
                           clock=clock)  # fmt: skip
    for i in range(6):
        note = Note(f"note {i}", secret=os.urandom(16))
        note.edit(f"note {i} edited")
        note.edit(f"note {i} final")
        ledger.save(note)
        clock.advance(0.001)
    text = ledger.checkpoint().to_text()
    ledger.close()
    return path, text


def summary(report: VerificationReport) -> Any:
    return (
        report.ok,
        report.events_checked,
        report.head_position,
        report.head_hash,
        report.signers_seen,
        sorted((p.kind, p.position, p.session_id) for p in report.problems),
    )


def test_a_sqlite_ledger_moved_to_postgresql_verifies_identically_and_continues(
    pristine: tuple[Path, str], pg_location: PostgresLocation, tmp_path: Path
) -> None:
    path, checkpoint = pristine
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(path, copy)
    assert import_sqlite_ledger(copy, pg_location.url()) == 18
    on_sqlite, on_pg = verify(copy, checkpoint), verify(pg_location.url(), checkpoint)
    assert on_sqlite.ok and on_sqlite.checkpoint_checked
    assert summary(on_pg) == summary(on_sqlite)
    # A node now appends on PostgreSQL: the chain continues from the file's head.
    ledger = SessionLedger(pg_location.url(), identity=NodeIdentity.generate())
    ledger.save(Note("after the move", secret=b""))
    report = verify(ledger, checkpoint)
    assert report.ok and report.events_checked == 19
    ledger.close()


def _flip_payload(db: Any, ph: str) -> None:
    row = db.execute(f"SELECT payload FROM ledger_events WHERE position = {ph}", (5,)).fetchone()
    payload = bytearray(row[0])
    payload[3] ^= 0x01
    db.execute(f"UPDATE ledger_events SET payload = {ph} WHERE position = {ph}",
               (bytes(payload), 5))  # fmt: skip


def _delete_row(db: Any, ph: str) -> None:
    db.execute(f"DELETE FROM ledger_events WHERE position = {ph}", (7,))


def _delete_session(db: Any, ph: str) -> None:
    sid = db.execute(f"SELECT session_id FROM ledger_events WHERE position = {ph}", (4,))
    db.execute(f"DELETE FROM ledger_events WHERE session_id = {ph}", (sid.fetchone()[0],))


def _swap_rows(db: Any, ph: str) -> None:
    cols = "session_id, version, topic, timestamp, payload, sealed, prev_session_hash, " \
           "prev_global_hash, event_hash, signer, signature"  # fmt: skip
    a = db.execute(f"SELECT {cols} FROM ledger_events WHERE position = {ph}", (9,)).fetchone()
    b = db.execute(f"SELECT {cols} FROM ledger_events WHERE position = {ph}", (10,)).fetchone()
    db.execute("DELETE FROM ledger_events WHERE position IN (9, 10)")
    marks = ", ".join([ph] * 12)
    for position, values in ((9, b), (10, a)):
        db.execute(f"INSERT INTO ledger_events (position, {cols}) VALUES ({marks})",
                   (position, *values))  # fmt: skip


def _truncate_tail(db: Any, ph: str) -> None:
    db.execute(f"DELETE FROM ledger_events WHERE position > {ph}", (15,))


def _move_far_past_the_head(db: Any, ph: str) -> None:
    # Chunking verify by arithmetic ranges up to this position would never end.
    db.execute(f"UPDATE ledger_events SET position = {ph} WHERE position = {ph}", (1 << 40, 12))


def _insert_before_position_one(db: Any, ph: str) -> None:
    cols = "session_id, version, topic, timestamp, payload, sealed, prev_session_hash, " \
           "prev_global_hash, event_hash, signer, signature"  # fmt: skip
    row = db.execute(f"SELECT {cols} FROM ledger_events WHERE position = {ph}", (2,)).fetchone()
    marks = ", ".join([ph] * 12)
    forged = (0, "f" * 32, *row[1:])  # a copied event, under a session of its own
    db.execute(f"INSERT INTO ledger_events (position, {cols}) VALUES ({marks})", forged)


TAMPERINGS: dict[str, Callable[[Any, str], None]] = {
    "flip a payload byte": _flip_payload,
    "delete a row": _delete_row,
    "delete a whole session": _delete_session,
    "swap two rows": _swap_rows,
    "truncate the tail": _truncate_tail,
    "move a row far past the head": _move_far_past_the_head,
    "insert a row before position 1": _insert_before_position_one,
}


@pytest.mark.parametrize("tamper", TAMPERINGS)
def test_tampering_is_reported_the_same_on_both_backends(
    pristine: tuple[Path, str], pg_location: PostgresLocation, tmp_path: Path, tamper: str
) -> None:
    path, checkpoint = pristine
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(path, copy)
    import_sqlite_ledger(copy, pg_location.url())
    # The attacker can write to the store and gets past its append-only triggers.
    db = sqlite3.connect(copy)
    db.execute("DROP TRIGGER ledger_events_no_update")
    db.execute("DROP TRIGGER ledger_events_no_delete")
    TAMPERINGS[tamper](db, "?")
    db.commit()
    db.close()
    with psycopg.connect(autocommit=False, **pg_location.connect_kwargs()) as pg:
        pg.execute(f"SET search_path TO {pg_location.schema}")
        pg.execute("ALTER TABLE ledger_events DISABLE TRIGGER USER")
        TAMPERINGS[tamper](pg, "%s")
        pg.commit()
    on_sqlite, on_pg = verify(copy, checkpoint), verify(pg_location.url(), checkpoint)
    assert not on_sqlite.ok, f"{tamper} went unnoticed"
    assert summary(on_pg) == summary(on_sqlite)


_FLIPPABLE = ("payload", "prev_session_hash", "prev_global_hash", "event_hash", "signature",
              "timestamp", "version")  # fmt: skip
_fresh = itertools.count(1)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    column=st.sampled_from(_FLIPPABLE),
    position=st.integers(min_value=1, max_value=18),
    offset=st.integers(min_value=0, max_value=10_000),
)
def test_random_flips_are_reported_the_same_on_both_backends(
    pristine: tuple[Path, str], pg_database: PostgresLocation, tmp_path: Path,
    column: str, position: int, offset: int,
) -> None:  # fmt: skip
    path, checkpoint = pristine
    copy = tmp_path / f"flip-{next(_fresh)}.sqlite3"
    shutil.copy(path, copy)
    pg = pg_database.with_schema(f"flip_{next(_fresh)}")
    import_sqlite_ledger(copy, pg.url())

    def flip(db: Any, ph: str) -> None:
        value = db.execute(f"SELECT {column} FROM ledger_events WHERE position = {ph}",
                           (position,)).fetchone()[0]  # fmt: skip
        if isinstance(value, int):
            # A version no event of the session has, or a timestamp off by one bit.
            changed: Any = value ^ (1 << (8 + offset % 30 if column == "version" else offset % 40))
        else:
            data = bytearray(value)
            data[offset % len(data)] ^= 1 << (offset % 8)
            changed = bytes(data)
        db.execute(f"UPDATE ledger_events SET {column} = {ph} WHERE position = {ph}",
                   (changed, position))  # fmt: skip

    db = sqlite3.connect(copy)
    db.execute("DROP TRIGGER ledger_events_no_update")
    flip(db, "?")
    db.commit()
    db.close()
    with psycopg.connect(autocommit=False, **pg.connect_kwargs()) as conn:
        conn.execute(f"SET search_path TO {pg.schema}")
        conn.execute("ALTER TABLE ledger_events DISABLE TRIGGER USER")
        flip(conn, "%s")
        conn.commit()
    on_sqlite, on_pg = verify(copy, checkpoint), verify(pg.url(), checkpoint)
    assert not on_sqlite.ok
    assert summary(on_pg) == summary(on_sqlite)
