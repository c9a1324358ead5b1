"""The SQLite ledger's datastore: eventsourcing's, with one write connection for every write.

Reads use eventsourcing's connection pool. Every write of the process — appends (the group-commit
leader), snapshots, checkpoints, the schema — goes through one ``SQLiteWriter``: one connection,
one lock, each transaction begun ``IMMEDIATE``. Two things follow:

- A write never fails for locking inside the process. A transaction begun with a plain
  ``BEGIN`` starts as a read and takes the write lock at its first write; in WAL mode, if another
  connection committed in between, SQLite refuses the upgrade at once (``database is locked``,
  without waiting: waiting cannot help a reader whose snapshot is stale). ``BEGIN IMMEDIATE``
  takes the write lock first, and the lock in front of it means only another *process* can hold
  it — then SQLite waits for up to the ledger's ``lock_timeout``.
- Closing is safe while writes are in flight: ``close()`` takes the same lock, so it waits for
  the transaction under way, and every write after it raises ``LedgerClosed`` instead of using a
  closed connection (which crashed the process: SQLite's statements were freed under the thread
  still stepping them).

Reads are made safe the same way: eventsourcing's pool closes the connections in use when it is
closed (the same crash, for a read in flight); the ledger's pool refuses new readers once closing
and waits for those under way to give their connection back.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteDatastore
from l2_session.infrastructure.ledger.errors import LedgerClosed
from l2_session.infrastructure.ledger.walcheckpoint import WAL_BACKSTOP_PAGES, WalCheckpointer

log = logging.getLogger(__name__)

Durability = Literal["full", "normal", "off"]
SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


def _closed(what: str) -> LedgerClosed:
    return LedgerClosed(f"{what} was closed: open it again to use it")


class SQLiteWriter:
    """The one connection a process writes a ledger file on (see the module's docstring)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], what: str) -> None:
        self._connect = connect
        self._what = what
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """A write transaction, begun IMMEDIATE; committed when the block ends unless the block
        already ended it (a lone append rolls back its own failure), rolled back if it raises."""
        with self._lock:
            connection = self._open()
            cursor = connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
                if connection.in_transaction:
                    cursor.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.rollback()
                raise

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection itself, for a test that traces or inspects it; write through
        ``transaction()``."""
        with self._lock:
            return self._open()

    def _open(self) -> sqlite3.Connection:
        if self._closed:
            raise _closed(self._what)
        if self._connection is None:
            self._connection = self._connect()
            self._connection.row_factory = None  # rows are read by position
        return self._connection

    def close(self) -> None:
        """Wait for the transaction under way, if any; then close. Idempotent."""
        with self._lock:
            self._closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class LoneReader(SQLiteWriter):
    """One connection, made on first use, for reads of a single statement each (a Merkle
    proof, tree.py): no transaction around it — a statement reads one state of the file — and
    no pool round trip. One such read at a time; closed with the ledger."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], what: str) -> None:
        super().__init__(connect, what)
        self._cursor: sqlite3.Cursor | None = None

    @contextmanager
    def cursor(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cursor = self._cursor
            if cursor is None or self._connection is None:
                cursor = self._cursor = self._open().cursor()
            yield cursor

    def close(self) -> None:
        super().close()
        self._cursor = None


class ReaderPool(SQLiteConnectionPool):
    """eventsourcing's SQLite pool, whose ``close()`` waits for the connections in use."""

    def __init__(self, db_name: str, lock_timeout: int, what: str) -> None:
        super().__init__(db_name=db_name, lock_timeout=lock_timeout)
        self._what = what
        self._users = 0  # connections handed out and not yet given back (or being handed out)
        self._users_changed = threading.Condition()
        self._closing = False

    def get_connection(
        self, timeout: float | None = None, *, is_writer: bool | None = None
    ) -> SQLiteConnection:
        with self._users_changed:
            if self._closing:
                raise _closed(self._what)
            self._users += 1
        try:
            return super().get_connection(timeout, is_writer=is_writer)
        except BaseException:
            self._given_back()
            raise

    def put_connection(self, conn: SQLiteConnection) -> None:
        try:
            super().put_connection(conn)
        finally:
            self._given_back()

    def _given_back(self) -> None:
        with self._users_changed:
            self._users -= 1
            self._users_changed.notify_all()

    def close(self) -> None:
        """Refuse new readers; wait (up to the lock timeout) for those under way; close."""
        with self._users_changed:
            self._closing = True
            waited = self._users_changed.wait_for(
                lambda: self._users == 0, timeout=self.lock_timeout
            )
        if not waited:
            log.warning(
                "closing %s while %d reads still hold a connection after %s s",
                self._what, self._users, self.lock_timeout,
            )  # fmt: skip
        super().close()


class LedgerDatastore(SQLiteDatastore):
    """eventsourcing's SQLite datastore with the ledger's durability setting on each connection,
    the writer every write goes through, and the WAL checkpointer."""

    def __init__(self, db_name: str, durability: Durability, lock_timeout: int) -> None:
        super().__init__(db_name, lock_timeout=lock_timeout, originator_id_type="uuid")
        what = f"the ledger {db_name}"
        self.pool.close()  # made by eventsourcing, unused (it connects on demand)
        self.pool = pool = ReaderPool(db_name, lock_timeout, what)
        create = pool._create_connection
        pragma = f"PRAGMA synchronous={SYNCHRONOUS[durability]}"
        # Checkpoints run on a thread of their own, not inside a commit (walcheckpoint.py).
        self.checkpointer = WalCheckpointer(db_name, SYNCHRONOUS[durability], lock_timeout)

        def create_connection() -> Any:
            connection = create()
            connection._sqlite_conn.execute(pragma)
            connection._sqlite_conn.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
            return connection

        pool._create_connection = create_connection  # type: ignore[method-assign]
        # Made by the pool's own factory: the same durability setting and lock timeout.
        self.writer = SQLiteWriter(lambda: pool._create_connection()._sqlite_conn, what)
        self.lone = LoneReader(lambda: pool._create_connection()._sqlite_conn, what)

    def close(self) -> None:
        # Also run by eventsourcing's __del__, possibly on a half-made datastore.
        if hasattr(self, "writer"):
            self.writer.close()
            self.lone.close()
            self.checkpointer.close()
        super().close()
