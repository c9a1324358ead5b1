"""A lone caller's append: committed on its own thread, in one transaction with no savepoint,
durable and refused per request exactly as a group commit's (the SIGKILL test in
test_crash_and_concurrency.py drives this path too: its writer saves alone)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

import pytest
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import StoredEvent
from l2_session.infrastructure.ledger import ConcurrencyConflict, PayloadTooLarge, SessionLedger
from l2_session.infrastructure.ledger.groupcommit import GroupCommitConfig, GroupCommitter
from l2_session.infrastructure.ledger.verify import verify
from ledger_aggregates import Conversation, populate, state_of


def traced(ledger: SessionLedger) -> list[str]:
    """Statements run from now on: appends (on the recorder's writer) and reads (on the pool's
    connection, one for a single-threaded caller)."""
    statements: list[str] = []
    ledger.datastore.writer.connection.set_trace_callback(statements.append)
    with ledger.datastore.get_connection(commit=False) as connection:
        connection._sqlite_conn.set_trace_callback(statements.append)
    return statements


def test_a_lone_caller_commits_on_its_own_thread_without_waiting():
    threads: list[int] = []

    def commit(requests: list[Sequence[int]]) -> list[list[int] | BaseException]:
        threads.append(threading.get_ident())
        return [list(r) for r in requests]

    committer: GroupCommitter[int, list[int]] = GroupCommitter(commit, GroupCommitConfig())
    assert committer.submit([1, 2]) == [1, 2]
    assert committer.submit([3]) == [3]
    assert threads == [threading.get_ident()] * 2  # no hand-off to another thread
    assert (committer.batches, committer.requests) == (2, 2)


def test_a_lone_append_is_one_transaction_without_a_savepoint(ledger_factory, ledger_path):
    ledger = ledger_factory()
    populate(ledger, ledger.clock, sessions=2, notes=1)  # the pool's connection exists
    statements = traced(ledger)
    conversation = Conversation(peer="p")
    conversation.note(text="hello")
    ledger.save(conversation)
    kinds = [s.split()[0] for s in statements]
    # Positions 7 and 8 are inserted; position 8 completes the tree's nodes of 2, 4 and 8
    # events, which its row holds: the tree costs no statement of its own.
    assert kinds == ["BEGIN", "SELECT", *["INSERT"] * 2, "COMMIT"], statements
    assert statements[0] == "BEGIN IMMEDIATE"
    assert [s.split()[2] for s in statements[2:4]] == ["ledger_events"] * 2
    raw = sqlite3.connect(ledger_path)
    columns = raw.execute("SELECT position, length(tree) FROM ledger_events WHERE position > 6")
    assert columns.fetchall() == [(7, None), (8, 3 * 32)]
    raw.close()
    reopened = ledger_factory()
    assert state_of(reopened.repository.get(conversation.id)) == state_of(conversation)


@pytest.mark.parametrize(("durability", "synchronous"), [("full", 2), ("normal", 1)])
def test_the_writer_connection_keeps_the_ledgers_durability(
    ledger_factory, ledger_path, durability, synchronous
):
    """Appends run on a connection of their own, made by the pool's factory: an append that
    returned is fsynced at "full", as on every other connection of the ledger."""
    writer = ledger_factory(durability=durability).datastore.writer.connection
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == synchronous
    assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_closing_the_ledger_closes_its_writer(ledger_factory, ledger_path):
    ledger = ledger_factory()
    populate(ledger, ledger.clock, sessions=1, notes=0)
    writer = ledger.datastore.writer.connection
    ledger.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        writer.execute("SELECT 1")


def test_a_lone_conflicting_append_is_refused_and_changes_nothing(ledger_factory):
    ledger = ledger_factory()
    [existing] = populate(ledger, ledger.clock, sessions=1, notes=1)
    clash = StoredEvent(originator_id=existing.id, originator_version=2, topic="x:Y", state=b"{}")
    head_before = ledger.ledger_recorder.head()
    with pytest.raises(ConcurrencyConflict, match=f"session {existing.id.hex} version 2 was"):
        ledger.recorder.insert_events([clash])
    assert ledger.ledger_recorder.head() == head_before
    existing.note(text="after the refused append")  # the session's own next append still fits
    ledger.save(existing)
    assert state_of(ledger.repository.get(existing.id)) == state_of(existing)
    assert verify(ledger).ok


def test_a_lone_append_refused_by_the_ledger_leaves_no_trace(ledger_factory):
    ledger = ledger_factory()
    populate(ledger, ledger.clock, sessions=1, notes=0)
    head_before = ledger.ledger_recorder.head()
    conversation = Conversation(peer="p")
    [opened] = [ledger.mapper.to_stored_event(e) for e in conversation.collect_events()]
    too_long = StoredEvent(
        originator_id=opened.originator_id,
        originator_version=1,
        topic="x:" + "Y" * 10_000,
        state=b"{}",
    )
    with pytest.raises(PayloadTooLarge, match="event type .* too long"):
        ledger.recorder.insert_events([too_long])
    assert ledger.ledger_recorder.head() == head_before
    assert ledger.recorder.insert_events([opened]) == [head_before[0] + 1]  # no hole left
    assert verify(ledger).ok


def test_an_unknown_session_is_answered_by_one_read(ledger_factory, ledger_path):
    """A session manager asks about conversations it never had on every new handshake."""
    ledger = ledger_factory(snapshot_interval=2)
    [known] = populate(ledger, ledger.clock, sessions=1, notes=5)  # snapshots taken
    statements = traced(ledger)
    with pytest.raises(AggregateNotFoundError):
        ledger.repository.get(Conversation(peer="never saved").id)
    assert [s.split()[0] for s in statements].count("SELECT") == 1, statements
    assert state_of(ledger.repository.get(known.id)) == state_of(known)  # from its snapshot
    assert ledger.repository.get(known.id, version=2).version == 2
