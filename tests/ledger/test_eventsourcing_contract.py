"""eventsourcing's own recorder contract, run against the ledger's recorders on both backends.

The test cases eventsourcing ships for recorder authors (``eventsourcing.tests.persistence``) are
subclassed here for the signed application recorder and the signed snapshot recorder, on SQLite
and on PostgreSQL, and run unchanged — except where the ledger deviates on purpose. Each such
override says what the deviation is and why, and a test beside it pins what the ledger does
instead:

- **Versions start at 1 and follow each other.** A session's versions are links of its hash
  chain (docs/ledger-format.md §1, §3): the first event is version 1 (its ``prev_session_hash``
  is zero), each next one is the previous + 1. eventsourcing's aggregates number their events the
  same way, but some of its recorder tests number theirs from 0. Those tests run here with every
  event's version one higher — nothing else about them changes.
- **Snapshots are a cache.** A snapshot at a version that already has one replaces it (it is
  re-taken after the storage key or signer changed, say), and a snapshot must be anchored to
  the event stored at its version (docs/ledger-format.md §6).

eventsourcing's application test cases (``eventsourcing.tests.application``) run against these
recorders in test_eventsourcing_application.py.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import TestCase, mock
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.tests import persistence as contract
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import InvalidEvent, LedgerError, SessionLedger
from l2_session.infrastructure.ledger.verify import verify
from pgserver import ThrowAwayDatabase

_names = itertools.count(1)


def _shifted_stored_event(**fields: Any) -> StoredEvent:
    fields["originator_version"] += 1
    return StoredEvent(**fields)


@contextmanager
def versions_from_one() -> Iterator[None]:
    """While it lasts, every StoredEvent eventsourcing's test module makes is one version
    higher than the test wrote: its sessions start at 1, as the ledger's do."""
    with mock.patch.object(contract, "StoredEvent", _shifted_stored_event):
        yield


# -- where the ledgers live ------------------------------------------------------------------
class Ledgers(TestCase):
    """Opens the test's ledgers (at ``location()``) and closes them when it ends."""

    __test__ = True  # the contract classes mixed in below say False

    def setUp(self) -> None:
        super().setUp()
        self.directory = Path(tempfile.mkdtemp(prefix="l2s-contract-"))
        self.ledgers: list[SessionLedger] = []

    def tearDown(self) -> None:
        for ledger in self.ledgers:
            ledger.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        super().tearDown()

    def location(self) -> str | Path:
        raise NotImplementedError

    def open_ledger(self) -> SessionLedger:
        ledger = SessionLedger(
            self.location(),
            identity=NodeIdentity.generate(),
            storage_key=os.urandom(32),
            durability="normal",
        )
        self.ledgers.append(ledger)
        return ledger


class SQLiteLedgers(Ledgers):
    """Each test opens its ledgers as SQLite files in a directory of its own."""

    def location(self) -> str | Path:
        return self.directory / f"ledger-{next(_names)}.sqlite3"


@pytest.mark.postgres
class PostgresLedgers(ThrowAwayDatabase, Ledgers):
    """Each test opens its ledgers as fresh schemas of one throw-away database per class."""

    def location(self) -> str | Path:
        return self.database.with_schema(f"contract_{os.getpid()}_{next(_names)}").url()


# -- the application recorder -------------------------------------------------------------
class ApplicationRecorderContract(contract.ApplicationRecorderTestCase):
    __test__ = False  # collected through the backends' subclasses below

    def create_recorder(self) -> Any:
        return self.open_ledger().recorder  # type: ignore[attr-defined]

    def test_concurrent_no_conflicts(self, initial_position: int = 0) -> None:
        """Deviation: versions start at 1. The library's test numbers each writer's events
        from 0; here each is one higher."""
        with versions_from_one():
            super().test_concurrent_no_conflicts(initial_position)

    def test_concurrent_throughput(self) -> None:
        """Deviation: versions start at 1. The library's test numbers each writer's events
        from 0; here each is one higher."""
        with versions_from_one():
            super().test_concurrent_throughput()

    # What the ledger does instead of accepting a session that starts at version 0.
    def test_a_session_starts_at_version_1_and_its_versions_follow_each_other(self) -> None:
        recorder = self.create_recorder()
        session = uuid4()

        def event(version: int) -> StoredEvent:
            return StoredEvent(
                originator_id=session, originator_version=version, topic="t", state=b"{}"
            )

        with self.assertRaisesRegex(InvalidEvent, "version 0 .* versions start at 1"):
            recorder.insert_events([event(0)])
        with self.assertRaisesRegex(LedgerError, "cannot append version 3 because version 2"):
            recorder.insert_events([event(1), event(3)])
        self.assertIsNone(recorder.max_notification_id())  # neither request left anything
        self.assertEqual(recorder.insert_events([event(1), event(2)]), [1, 2])
        self.assertEqual([e.originator_version for e in recorder.select_events(session)], [1, 2])


class TestSQLiteApplicationRecorder(SQLiteLedgers, ApplicationRecorderContract):
    pass


class TestPostgresApplicationRecorder(PostgresLedgers, ApplicationRecorderContract):
    def test_insert_subscribe(self) -> None:
        """eventsourcing's subscription (LISTEN/NOTIFY) over the ledger's PostgreSQL table;
        the library runs this for its own PostgreSQL recorder."""
        self.optional_test_insert_subscribe()


# -- notification ids of concurrent writers do not interleave -------------------------------
class NonInterleavingContract(contract.NonInterleavingNotificationIDsBaseCase):
    __test__ = False  # collected through the backends' subclasses below

    def create_recorder(self) -> Any:
        return self.open_ledger().recorder  # type: ignore[attr-defined]

    def create_stack(self, originator_id: UUID | str) -> Any:
        """Deviation: versions start at 1. The library's stack numbers its events from 0;
        here each is one higher."""
        with versions_from_one():
            return super().create_stack(originator_id)


class TestSQLiteNonInterleavingNotificationIDs(SQLiteLedgers, NonInterleavingContract):
    pass


class TestPostgresNonInterleavingNotificationIDs(PostgresLedgers, NonInterleavingContract):
    pass


# -- the snapshot recorder, as an aggregate recorder ------------------------------------------
class SnapshotRecorderContract(contract.AggregateRecorderTestCase):
    """Snapshots are anchored to the ledger's events, so every session a test makes up is
    given three events first (new_originator_id): a snapshot at versions 1 to 3 then has
    something to anchor to."""

    __test__ = False  # collected through the backends' subclasses below

    def create_recorder(self) -> Any:
        self.ledger = self.open_ledger()  # type: ignore[attr-defined]
        assert self.ledger.snapshots is not None
        return self.ledger.snapshots.recorder

    def new_originator_id(self) -> UUID:
        session = uuid4()
        self.ledger.recorder.insert_events(
            [
                StoredEvent(originator_id=session, originator_version=v, topic="t", state=b"e")
                for v in (1, 2, 3)
            ]
        )
        return session

    def test_insert_and_select(self) -> None:
        """Deviation: snapshots are a cache. Writing a snapshot at a version that has one
        replaces it instead of raising IntegrityError (the library's test expects the error
        twice), and a snapshot at a version with no event (the library's test writes version
        0) is refused. What the ledger does instead is pinned by the tests below; the rest of
        the library's checks (empty insert, select by gt/lte/desc/limit, sessions kept apart)
        are made here as the library makes them."""
        recorder = self.create_recorder()
        self.assertIsNone(recorder.insert_events([]))
        session = self.new_originator_id()
        self.assertEqual(recorder.select_events(session, desc=True, limit=1), [])
        snapshots = [
            StoredEvent(originator_id=session, originator_version=v, topic=f"t{v}", state=b"s")
            for v in (1, 2, 3)
        ]
        self.assertIsNone(recorder.insert_events(snapshots))
        self.assert_events_eq(recorder.select_events(session), snapshots)
        self.assert_events_eq(recorder.select_events(session, desc=True, limit=1), snapshots[2:])
        self.assert_events_eq(
            recorder.select_events(session, lte=2, desc=True, limit=1), snapshots[1:2]
        )
        self.assert_events_eq(recorder.select_events(session, gt=1, lte=2), snapshots[1:2])
        self.assertEqual(recorder.select_events(self.new_originator_id()), [])

    def test_a_snapshot_at_a_version_that_has_one_replaces_it(self) -> None:
        recorder = self.create_recorder()
        session = self.new_originator_id()
        first = StoredEvent(originator_id=session, originator_version=2, topic="t", state=b"a")
        again = StoredEvent(originator_id=session, originator_version=2, topic="t", state=b"b")
        recorder.insert_events([first])
        recorder.insert_events([again])
        self.assert_events_eq(recorder.select_events(session), [again])
        self.assertTrue(verify(self.ledger).ok)

    def test_a_snapshot_with_no_event_at_its_version_is_refused(self) -> None:
        recorder = self.create_recorder()
        session = self.new_originator_id()
        anchored = StoredEvent(originator_id=session, originator_version=3, topic="t", state=b"")
        loose = StoredEvent(originator_id=session, originator_version=4, topic="t", state=b"")
        with self.assertRaisesRegex(
            LedgerError,
            f"snapshot of session {session.hex} at version 4: the session has no version 4",
        ):
            recorder.insert_events([anchored, loose])
        self.assertEqual(recorder.select_events(session), [])  # all or nothing, as inserts are


class TestSQLiteSnapshotRecorder(SQLiteLedgers, SnapshotRecorderContract):
    pass


class TestPostgresSnapshotRecorder(PostgresLedgers, SnapshotRecorderContract):
    pass
