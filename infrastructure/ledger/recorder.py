"""The signed application recorder: where chaining and signing happen, inside the insert.

eventsourcing hands an Application's new events to its recorder's ``insert_events``. This
recorder assigns each event its global position inside the write transaction, links it to the
previous event of its session and to the previous event of the ledger, hashes it with BLAKE3,
signs the hash with the node's Ed25519 key and inserts it; many callers' events share one
transaction through group commit. See docs/ledger-format.md.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder
from l2_session.infrastructure.clock import TimeSource
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger.chain import (
    ROW_COLUMNS,
    SIGNER_DOMAIN,
    LedgerChain,
    NotificationRow,
    Row,
    notification_filter,
    session_key,
    version_filter,
)
from l2_session.infrastructure.ledger.errors import LedgerCorrupted, LedgerError
from l2_session.infrastructure.ledger.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ZERO_HASH,
    genesis_hash,
)
from l2_session.infrastructure.ledger.groupcommit import GroupCommitConfig, GroupCommitter
from l2_session.infrastructure.ledger.schema import (
    CREATE_STATEMENTS,
    EVENTS_TABLE,
    META_TABLE,
    SIGNERS_TABLE,
    TREE_STATEMENTS,
)
from l2_session.infrastructure.ledger.sqlite_store import LedgerDatastore
from l2_session.infrastructure.ledger.tree import (
    MIGRATED_VERSION,
    TREE_TABLE,
    TreeSQL,
    build_rows,
    tree_layout,
)

__all__ = ["SIGNER_DOMAIN", "SignedSQLiteRecorder", "session_key"]

_INSERT = f"INSERT INTO {EVENTS_TABLE} ({ROW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
# Format 4: each row with its tree column (chain.py, _append_rows).
_INSERT_INLINE = (
    f"INSERT INTO {EVENTS_TABLE} ({ROW_COLUMNS}, tree) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_HEAD = f"SELECT position, event_hash, timestamp FROM {EVENTS_TABLE} ORDER BY position DESC LIMIT 1"
_SESSION_EVENT_HASH = f"SELECT event_hash FROM {EVENTS_TABLE} WHERE session_id=? AND version=?"
_HAS_SESSION = f"SELECT 1 FROM {EVENTS_TABLE} WHERE session_id=? LIMIT 1"
_INSERT_SIGNER = (
    f"INSERT OR IGNORE INTO {SIGNERS_TABLE} (did, registered_at, signature) VALUES (?,?,?)"
)


class SignedSQLiteRecorder(LedgerChain, SQLiteApplicationRecorder):
    """eventsourcing's SQLite application recorder, writing the signed, chained ledger table."""

    datastore: LedgerDatastore

    def __init__(
        self,
        datastore: LedgerDatastore,
        *,
        identity: NodeIdentity | None,
        clock: TimeSource,
        group_commit: GroupCommitConfig | None = None,
        session_cache_size: int = 100_000,
        verify_on_read: bool = True,
    ) -> None:
        super().__init__(datastore, events_table_name=EVENTS_TABLE)
        self._init_chain(identity, clock, session_cache_size, verify_on_read)
        self.committer: GroupCommitter[StoredEvent, list[int]] = GroupCommitter(
            self._commit_batch, group_commit or GroupCommitConfig()
        )
        self.ledger_id = ""
        self.genesis = ZERO_HASH
        self.tree_sql = TreeSQL("?", EVENTS_TABLE, TREE_TABLE)
        self._event_insert = _INSERT_INLINE  # by the ledger's format (load_meta)

    # -- schema -------------------------------------------------------------------------
    def construct_create_table_statements(self) -> list[str]:
        return list(CREATE_STATEMENTS)

    def create_table(self) -> None:
        import uuid

        with self.datastore.writer.transaction() as c:
            for statement in self.create_table_statements:
                c.execute(statement)
            c.execute(
                f"INSERT OR IGNORE INTO {META_TABLE} (key, value) VALUES "
                "('format', ?), ('format_version', ?), ('ledger_id', ?), ('created_at', ?)",
                (FORMAT_NAME, str(FORMAT_VERSION), uuid.uuid4().hex, str(self.clock.wall_us())),
            )
        self.load_meta()

    def load_meta(self) -> None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT value FROM {META_TABLE} WHERE key='ledger_id'")
            row = c.fetchone()
        if row is None:
            raise LedgerCorrupted("ledger_meta has no ledger_id: the ledger's identity is missing")
        self.ledger_id = row[0]
        self.genesis = genesis_hash(self.ledger_id)
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT value FROM {META_TABLE} WHERE key='format_version'")
            version = c.fetchone()
        if version is not None and version[0] == "1":
            if self.identity is None:
                self.has_tree = False  # read as it is: a reader changes nothing
            else:
                self._migrate_to_tree()
        elif version is not None:
            self._layout(tree_layout(version[0]))

    def _layout(self, layout: str | None) -> None:
        if layout is not None:
            self.tree_sql.layout = layout
            self._event_insert = _INSERT_INLINE if layout == "inline" else _INSERT

    def _migrate_to_tree(self) -> None:
        """Format 1 -> 3: build the Merkle tree of every event already in the ledger, in one
        transaction with the format's new version (a crash leaves the ledger at format 1).
        The events themselves are only read."""
        with self.datastore.writer.transaction() as cur:
            cur.execute(f"SELECT value FROM {META_TABLE} WHERE key='format_version'")
            found = cur.fetchone()[0]
            if found != "1":
                self._layout(tree_layout(found))
                return  # another process migrated it first
            self._layout("tiles")
            for statement in TREE_STATEMENTS:
                cur.execute(statement)
            hashes = cur.connection.execute(
                f"SELECT position, event_hash FROM {EVENTS_TABLE} ORDER BY position"
            )
            for chunk in build_rows(hashes, tiled=True):
                cur.executemany(self.tree_sql.insert, chunk)
            cur.execute(
                f"UPDATE {META_TABLE} SET value=? WHERE key='format_version'", (MIGRATED_VERSION,)
            )

    # -- writes: every one through the datastore's writer (sqlite_store.py) ---------------
    @contextmanager
    def write(self) -> Iterator[sqlite3.Cursor]:
        """A write transaction of this node: on the datastore's one writer, begun IMMEDIATE,
        registering the node as a signer of the ledger with its first write (chain.py)."""
        registering = None
        with self.datastore.writer.transaction() as cur:
            yield cur
            # Unless the block rolled back (a refused append): nothing of it stays.
            if cur.connection.in_transaction:
                registering = self._signer_to_register()
                if registering is not None:
                    cur.execute(_INSERT_SIGNER, registering)
        if registering is not None:
            self._signer_registered()

    # -- appends (insert_events: chain.py) -----------------------------------------------
    def _commit_batch(
        self, requests: list[Sequence[StoredEvent]]
    ) -> list[list[int] | BaseException]:
        outcomes = self._commit(requests)
        # The log grew: its checkpoint runs on the checkpointer's thread, not in a commit.
        self.datastore.checkpointer.notify()
        return outcomes

    def _commit(self, requests: list[Sequence[StoredEvent]]) -> list[list[int] | BaseException]:
        outcomes: list[list[int] | BaseException] = []
        try:
            with self.write() as cur:
                row = cur.execute(_HEAD).fetchone()
                position, prev_global, last_ts = (
                    (row[0], row[1], row[2]) if row else (0, self.genesis, None)
                )
                timestamp = self.clock.wall_us()
                self._check_clock(timestamp, last_ts, position)
                self._tree_at(cur, position)
                if len(requests) == 1:
                    return [self._insert_alone(cur, requests[0], position, prev_global, timestamp)]
                together = self._insert_together(cur, requests, position, prev_global, timestamp)
                if together is not None:
                    return together
                for events in requests:
                    cur.execute("SAVEPOINT request")
                    try:
                        rows, heads = self._rows(cur, events, position, prev_global, timestamp)
                        self._append_rows(cur, rows)
                    except sqlite3.IntegrityError:
                        cur.execute("ROLLBACK TO request")
                        cur.execute("RELEASE request")
                        outcomes.append(self._conflict(cur, events))
                        continue
                    except (LedgerError, ValueError) as error:
                        cur.execute("ROLLBACK TO request")
                        cur.execute("RELEASE request")
                        outcomes.append(error)
                        continue
                    cur.execute("RELEASE request")
                    outcomes.append([r[0] for r in rows])
                    position, prev_global = rows[-1][0], rows[-1][9]
                    self._remember(heads)
                if all(isinstance(outcome, BaseException) for outcome in outcomes):
                    cur.execute("ROLLBACK")  # every request refused: nothing to commit
        except BaseException:
            self._forget_heads()
            raise
        return outcomes

    def _insert_alone(
        self,
        cur: sqlite3.Cursor,
        events: Sequence[StoredEvent],
        position: int,
        prev_global: bytes,
        timestamp: int,
    ) -> list[int] | BaseException:
        """A request no other caller shares the transaction with (the common case of one
        session manager saving command by command): its failure is the whole transaction's,
        so it needs no savepoint — two statements fewer on every append. A refused request
        rolls the transaction back here; a conflict is named as in a group commit."""
        try:
            rows, heads = self._rows(cur, events, position, prev_global, timestamp)
            self._append_rows(cur, rows)
        except sqlite3.IntegrityError:
            cur.execute("ROLLBACK")
            return self._conflict(cur, events)
        except (LedgerError, ValueError) as error:
            cur.execute("ROLLBACK")
            return error
        self._remember(heads)  # committed as the writer's transaction ends (a failure forgets)
        return [row[0] for row in rows]

    def _insert_together(
        self,
        cur: sqlite3.Cursor,
        requests: list[Sequence[StoredEvent]],
        position: int,
        prev_global: bytes,
        timestamp: int,
    ) -> list[list[int] | BaseException] | None:
        """The common case: every request of the batch chained, signed (on both cores) and
        inserted as one. None if any request fails: then nothing of this stays, and the batch
        is redone request by request, so that only the failing one is refused."""
        if len(requests) < 2:
            return None
        cur.execute("SAVEPOINT batch")
        try:
            everything = [event for events in requests for event in events]
            rows, heads = self._rows(cur, everything, position, prev_global, timestamp)
            self._append_rows(cur, rows)
        except (sqlite3.IntegrityError, LedgerError, ValueError):
            cur.execute("ROLLBACK TO batch")
            cur.execute("RELEASE batch")
            return None
        cur.execute("RELEASE batch")
        self._remember(heads)
        outcomes: list[list[int] | BaseException] = []
        start = 0
        for events in requests:
            outcomes.append([row[0] for row in rows[start : start + len(events)]])
            start += len(events)
        return outcomes

    def _head_in(self, cur: Any) -> tuple[int, bytes]:
        cur.execute(_HEAD)
        row = cur.fetchone()
        return (row[0], bytes(row[1])) if row else (0, self.genesis)

    def _insert_rows(self, cur: sqlite3.Cursor, rows: list[Row]) -> None:
        cur.executemany(self._event_insert, rows)

    def _fetch_session_hash(self, cur: sqlite3.Cursor, sid: str, version: int) -> bytes | None:
        row = cur.execute(_SESSION_EVENT_HASH, (sid, version)).fetchone()
        return None if row is None else bytes(row[0])

    # -- reads --------------------------------------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[Any]:
        """A cursor in one read transaction: what it reads is one state of the ledger."""
        with self.datastore.transaction(commit=False) as c:
            yield c

    def lone_read(self) -> Any:
        """A cursor outside any transaction, on the datastore's connection for such reads:
        each statement reads one state of the ledger (sqlite_store.LoneReader)."""
        return self.datastore.lone.cursor()

    def has_session(self, originator_id: UUID | str) -> bool:
        """Whether the ledger holds any event of the session: one statement on the
        (session_id, version) index, outside a transaction (a lone read sees one state)."""
        with self.datastore.get_connection(commit=False) as connection:
            cursor = connection._sqlite_conn.execute(_HAS_SESSION, (session_key(originator_id),))
            return cursor.fetchone() is not None

    def head(self) -> tuple[int, bytes, int | None]:
        """(position, event hash, timestamp) of the newest event; (0, genesis, None) if empty."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(_HEAD)
            row = c.fetchone()
        return (row[0], bytes(row[1]), row[2]) if row else (0, self.genesis, None)

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        statement = (
            "SELECT position, session_id, version, topic, timestamp, payload, sealed, "
            f"prev_session_hash, prev_global_hash, event_hash, signer FROM {EVENTS_TABLE} "
            "WHERE session_id=? "
        )
        tail, params = version_filter("version", "?", gt=gt, lte=lte, desc=desc, limit=limit)
        statement += tail
        params.insert(0, session_key(originator_id))
        try:
            with self.datastore.transaction(commit=False) as c:
                c.execute(statement, params)
                rows = c.fetchall()
        except sqlite3.DatabaseError as e:
            raise LedgerCorrupted(f"cannot read session {originator_id}: {e}") from e
        return [self._stored_event(originator_id, row) for row in rows]

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        where, params = notification_filter(
            "?", start=start, stop=stop, topics=topics, inclusive_of_start=inclusive_of_start
        )
        statement = (
            f"SELECT position, session_id, version, topic, payload FROM {EVENTS_TABLE} "
            f"{where}ORDER BY position LIMIT ?"
        )
        params.append(limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, params)
            return [
                Notification(
                    id=row[0],
                    originator_id=self.convert_originator_id(row[1]),
                    originator_version=row[2],
                    topic=row[3],
                    state=bytes(row[4]),
                )
                for row in c.fetchall()
            ]

    def notification_rows(
        self, after: int, stop: int, part: int = 0, parts: int = 1
    ) -> list[NotificationRow]:
        """Positions ``after`` + 1 to ``stop`` as plain rows (a read model's fast path: no
        objects per row); with ``parts`` > 1, only the rows of the sessions in ``part``
        (``row_part``)."""
        split = " AND unicode(substr(session_id, -1)) % ? = ?" if parts > 1 else ""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT position, session_id, version, topic, payload FROM "
                f"{EVENTS_TABLE} WHERE position > ? AND position <= ?{split} ORDER BY position",
                (after, stop, parts, part) if parts > 1 else (after, stop),
            )
            return [tuple(row) for row in c.fetchall()]

    # ApplicationRecorder's signature and contract (None for an empty ledger), which
    # eventsourcing's SQLite recorder narrows to int.
    def max_notification_id(self) -> int | None:  # type: ignore[override]
        """The newest position; None for an empty ledger."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT MAX(position) FROM {EVENTS_TABLE}")
            found: int | None = c.fetchone()[0]
        return found
