"""Bad input and faults: each gets a clear error naming what was wrong; nothing committed is lost."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from l2_session.infrastructure.ledger import (
    ClockWentBackwards,
    LedgerCorrupted,
    LedgerError,
    LedgerNotFound,
    NotALedger,
    PayloadTooLarge,
    SealedFieldError,
    SessionChainError,
    UnknownEventType,
)
from l2_session.infrastructure.ledger.format import MAX_PAYLOAD_BYTES
from l2_session.infrastructure.ledger.verify import ProblemKind, verify
from ledger_aggregates import Conversation, populate, state_of


def count(ledger: Any) -> int:
    """Events stored, read through the ledger (so on either backend)."""
    return len(ledger.recorder.select_notifications(None, 1_000_000))


def test_a_missing_ledger_is_named(ledger_factory, tmp_path):
    missing = tmp_path / "nope.sqlite3"
    with pytest.raises(LedgerNotFound, match="nope.sqlite3"):
        ledger_factory(location=missing, create=False)
    with pytest.raises(LedgerNotFound, match="does not exist"):
        verify(missing)
    assert not missing.exists()


def test_a_file_that_is_not_a_database_is_refused_untouched(ledger_factory, tmp_path):
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is a text file, not a database" * 100)
    before = junk.read_bytes()
    with pytest.raises(NotALedger, match="not a readable SQLite database"):
        ledger_factory(location=junk)
    assert junk.read_bytes() == before


def test_another_applications_database_is_refused_untouched(ledger_factory, tmp_path):
    other = tmp_path / "other.sqlite3"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(NotALedger, match=r"not an l2-session ledger \(tables: invoices\)"):
        ledger_factory(location=other)
    assert sqlite3.connect(other).execute(
        "SELECT name FROM sqlite_master WHERE type='table'").fetchall() == [("invoices",)]  # fmt: skip


def test_a_ledger_of_a_newer_format_is_refused(ledger_factory, ledger_path, clock):
    ledger_factory().close()
    db = sqlite3.connect(ledger_path)
    db.execute("DROP TABLE ledger_meta")
    db.execute("CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        "INSERT INTO ledger_meta VALUES ('format', 'l2-session-ledger'), ('format_version', '9')"
    )
    db.commit()
    with pytest.raises(NotALedger, match="format version '9' is not supported"):
        ledger_factory()


def test_a_truncated_database_file_is_reported_not_crashed_on(
    ledger_factory, ledger_path, clock, tmp_path
):
    ledger = ledger_factory(snapshot_interval=None)
    populate(ledger, clock, sessions=40, notes=20)
    ledger.close()
    data = ledger_path.read_bytes()
    cut = tmp_path / "cut.sqlite3"
    cut.write_bytes(data[: len(data) // 2])
    try:
        report = verify(cut)
    except NotALedger as e:  # the cut may also leave the schema unreadable
        assert "cut.sqlite3" in str(e)
    else:
        assert not report.ok
        assert {p.kind for p in report.problems} & {
            ProblemKind.DATABASE_CORRUPT,
            ProblemKind.GLOBAL_CHAIN_BREAK,
        }


def test_a_malformed_row_is_named_by_position_on_read(ledger_factory, ledger_path, clock):
    ledger = ledger_factory()
    [conversation] = populate(ledger, clock, sessions=1, notes=2)
    db = sqlite3.connect(ledger_path)
    db.execute("DROP TRIGGER ledger_events_no_update")
    db.execute("UPDATE ledger_events SET payload = x'7b7d' WHERE position = 3")
    db.commit()
    fresh = ledger_factory()
    with pytest.raises(LedgerCorrupted, match="position 3"):
        fresh.repository.get(conversation.id)


def test_an_unknown_event_type_is_named_with_its_position(ledger_factory, clock):
    ledger = ledger_factory()
    sid = uuid.uuid4()
    ledger.recorder.insert_events(
        [
            StoredEvent(
                originator_id=sid, originator_version=1, topic="vanished.module:Gone", state=b"{}"
            )
        ]
    )
    with pytest.raises(
        UnknownEventType, match=r"'vanished.module:Gone' at session .* \(position 1\)"
    ):
        ledger.repository.get(sid)
    assert verify(ledger).ok  # the ledger itself is sound: only this program can't read it


def test_a_payload_over_the_limit_is_refused_and_nothing_is_written(ledger_factory, clock):
    ledger = ledger_factory()
    populate(ledger, clock, sessions=1, notes=1)
    before = count(ledger)
    big = Conversation(peer="p")
    big.note(text="x" * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(PayloadTooLarge, match=f"the limit is {MAX_PAYLOAD_BYTES} bytes"):
        ledger.save(big)
    assert count(ledger) == before
    assert verify(ledger).ok


def test_a_clock_that_goes_backwards_is_refused_with_both_values(ledger_factory, clock):
    ledger = ledger_factory()
    populate(ledger, clock, sessions=1, notes=1)
    before = count(ledger)
    head_time = clock.wall_us()
    clock.set_wall_us(head_time - 5_000_000)
    late = Conversation(peer="p")
    with pytest.raises(
        ClockWentBackwards, match=f"reads {head_time - 5_000_000} .* timestamp {head_time}"
    ):
        ledger.save(late)
    assert count(ledger) == before
    clock.set_wall_us(head_time)  # once the clock is right again, appends go on
    retried = Conversation(peer="p")  # (a refused save's events are not kept: retry the command)
    ledger.save(retried)
    assert state_of(ledger.repository.get(retried.id)) == state_of(retried)


def test_secret_fields_need_bytes_and_a_storage_key(ledger_factory, clock):
    ledger = ledger_factory()
    wrong = Conversation(peer="p")
    wrong.store_key("not bytes")  # type: ignore[arg-type]
    with pytest.raises(
        SealedFieldError, match="secret field 'session_key' .* must be bytes, got str"
    ):
        ledger.save(wrong)
    keyless = ledger_factory(storage_key=None)
    secret = Conversation(peer="p")
    secret.store_key(b"k" * 32)
    with pytest.raises(SealedFieldError, match="without a storage key"):
        keyless.save(secret)
    with pytest.raises(SealedFieldError, match="32 bytes, got 5"):
        ledger_factory(storage_key=b"short")
    assert count(ledger) == 0


def test_a_wrong_storage_key_cannot_open_sealed_fields(ledger_factory, clock):
    ledger = ledger_factory()
    [conversation] = populate(ledger, clock, sessions=1, notes=0)
    other = ledger_factory(storage_key=b"w" * 32, snapshot_interval=None)
    with pytest.raises(SealedFieldError, match="wrong storage key"):
        other.repository.get(conversation.id)


def test_a_read_only_ledger_refuses_appends(ledger_factory, clock):
    ledger_factory().close()
    auditor = ledger_factory(identity=None)
    with pytest.raises(LedgerError, match="read-only"):
        auditor.save(Conversation(peer="p"))


def test_an_append_that_skips_a_version_is_refused(ledger_factory):
    ledger = ledger_factory()
    sid = uuid.uuid4()
    with pytest.raises(SessionChainError, match="version 2 is not in the ledger"):
        ledger.recorder.insert_events(
            [StoredEvent(originator_id=sid, originator_version=3, topic="x:Y", state=b"{}")]
        )
    assert count(ledger) == 0


def test_bad_configuration_is_named(ledger_factory):
    with pytest.raises(ValueError, match="durability must be one of"):
        ledger_factory(durability="sometimes")
    with pytest.raises(ValueError, match="snapshot_interval must be >= 1"):
        ledger_factory(snapshot_interval=0)


def test_a_truncated_row_is_reported_by_position(ledger_factory, ledger_path, clock):
    ledger = ledger_factory()
    [conversation] = populate(ledger, clock, sessions=1, notes=3)
    db = sqlite3.connect(ledger_path)
    db.execute("DROP TRIGGER ledger_events_no_update")
    db.execute(
        "UPDATE ledger_events SET event_hash = substr(event_hash, 1, 16), "
        "payload = substr(payload, 1, 10) WHERE position = 4"
    )
    db.commit()
    report = verify(ledger_path)
    assert report.kinds_at(4) == {ProblemKind.MALFORMED_ROW}
    assert "expected 32 bytes" in str(report.problems[0])
    with pytest.raises(LedgerCorrupted, match="position 4"):
        ledger_factory(snapshot_interval=None).repository.get(conversation.id)
