"""The signed application recorder on PostgreSQL: the SQLite recorder's guarantees, many writers.

Built on eventsourcing's PostgresApplicationRecorder (its datastore, pool, NOTIFY channel and
subscription). Writers serialise on a transaction-scoped advisory lock, taken where
eventsourcing takes its ``LOCK TABLE ... IN EXCLUSIVE MODE``: the table lock needs UPDATE or
DELETE privilege, which the node role must not have. Holding the lock, a writer reads the head,
builds and signs the rows (chain.py, the same bytes as on SQLite) and inserts them; positions are
therefore dense and commit in order, so a reader following positions never skips a row that
commits later. Every node process appending to the ledger takes the same lock, so several nodes
extend one global chain.

A batch (group commit) is first inserted with one binary COPY. Only if that fails on the
(session_id, version) constraint is it redone request by request, each under a savepoint, so a
conflicting request fails alone — exactly as on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal
from uuid import UUID

import psycopg
from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from l2_session.infrastructure.clock import TimeSource
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger.chain import (
    READ_COLUMNS,
    ROW_COLUMNS,
    LedgerChain,
    NotificationRow,
    Row,
    notification_filter,
    session_key,
    version_filter,
)
from l2_session.infrastructure.ledger.errors import LedgerCorrupted, LedgerError
from l2_session.infrastructure.ledger.format import ZERO_HASH, genesis_hash
from l2_session.infrastructure.ledger.groupcommit import GroupCommitConfig, GroupCommitter
from l2_session.infrastructure.ledger.pg_schema import lock_key
from l2_session.infrastructure.ledger.schema import EVENTS_TABLE, SIGNERS_TABLE
from l2_session.infrastructure.ledger.tree import TREE_TABLE, TreeSQL, tree_layout
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

_COLUMN_TYPES = (
    "bigint", "text", "bigint", "text", "bigint", "bytea", "bytea",
    "bytea", "bytea", "bytea", "text", "bytea",
)  # fmt: skip


def _uuid_or_str(session_id: str) -> UUID | str:
    try:
        return UUID(hex=session_id)
    except ValueError:
        return session_id


class SignedPostgresRecorder(LedgerChain, PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL application recorder, writing the signed, chained ledger."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        identity: NodeIdentity | None,
        clock: TimeSource,
        group_commit: GroupCommitConfig | None = None,
        session_cache_size: int = 100_000,
        verify_on_read: bool = True,
        durability: Literal["full", "normal", "off"] = "full",
    ) -> None:
        super().__init__(datastore, events_table_name=EVENTS_TABLE)
        self._init_chain(identity, clock, session_cache_size, verify_on_read)
        # The schema is the project's (pg_schema.py), not eventsourcing's stored_events DDL.
        self.sql_create_statements = []
        self.datastore.db_type_names.discard(self.stored_event_type_name)
        schema = self.datastore.schema
        self.table = f"{schema}.{EVENTS_TABLE}"
        self.channel_name = f"{schema}.{EVENTS_TABLE}"
        self.lock_table_statements = [
            SQL("SET LOCAL lock_timeout = '{0}s'").format(self.datastore.lock_timeout),
            SQL("SELECT pg_advisory_xact_lock({0})").format(lock_key(schema, "append")),
        ]
        # durability "full": an append that returned is on the primary's disk (and on
        # synchronous standbys, if the server has them). Otherwise the server may acknowledge
        # before its WAL flush: a server crash can lose the last moments, never reorder them.
        self._sync_statement = (
            None if durability == "full" else SQL("SET LOCAL synchronous_commit = off")
        )
        self._copy = f"COPY {self.table} ({ROW_COLUMNS}) FROM STDIN (FORMAT BINARY)"
        self._column_types: tuple[str, ...] = _COLUMN_TYPES
        self._head = (
            f"SELECT position, event_hash, timestamp FROM {self.table} "
            "ORDER BY position DESC LIMIT 1"
        )
        self._session_event_hash = (
            f"SELECT event_hash FROM {self.table} WHERE session_id=%s AND version=%s"
        )
        self._insert_signer = (
            f"INSERT INTO {schema}.{SIGNERS_TABLE} "
            "(did, registered_at, signature) VALUES (%s,%s,%s) ON CONFLICT (did) DO NOTHING"
        )
        self.committer: GroupCommitter[StoredEvent, list[int]] = GroupCommitter(
            self._commit_batch, group_commit or GroupCommitConfig()
        )
        self.ledger_id = ""
        self.genesis = ZERO_HASH
        self.tree_sql = TreeSQL("%s", self.table, f"{schema}.{TREE_TABLE}")

    # -- identity of the ledger --------------------------------------------------------
    def create_table(self) -> None:
        raise LedgerError("the PostgreSQL ledger schema is created by pg_schema.migrate")

    def set_meta(self, meta: dict[str, str]) -> None:
        self.ledger_id = meta["ledger_id"]
        self.genesis = genesis_hash(self.ledger_id)
        # migrate() left the ledger in format 2, 3 or 4: how its tree is stored
        layout = tree_layout(meta["format_version"])
        assert layout is not None
        self.tree_sql.layout = layout
        if layout == "inline":
            self._copy = f"COPY {self.table} ({ROW_COLUMNS}, tree) FROM STDIN (FORMAT BINARY)"
            self._column_types = (*_COLUMN_TYPES, "bytea")

    # -- writes ------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[Any]:
        """A write transaction of this node (snapshots, checkpoints), registering the node as a
        signer of the ledger with its first write (chain.py)."""
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=tuple_row) as cur,
        ):
            yield cur
            registering = self._register_signer(cur)
        if registering:
            self._signer_registered()

    def _register_signer(self, cur: Any) -> bool:
        """Insert this node's signer row in the transaction under way, unless a committed
        transaction of this process already did; whether it did."""
        row = self._signer_to_register()
        if row is not None:
            cur.execute(self._insert_signer, row)
        return row is not None

    # -- appends (insert_events: chain.py) -----------------------------------------------
    def _commit_batch(
        self, requests: list[Sequence[StoredEvent]]
    ) -> list[list[int] | BaseException]:
        try:
            with self.datastore.get_connection() as conn:
                try:
                    return self._in_transaction(conn, requests, as_one_copy=True)
                except psycopg.errors.UniqueViolation:
                    self._forget_heads()
                    return self._in_transaction(conn, requests, as_one_copy=False)
        except BaseException:
            self._forget_heads()
            raise

    def _in_transaction(
        self, conn: Any, requests: list[Sequence[StoredEvent]], *, as_one_copy: bool
    ) -> list[list[int] | BaseException]:
        outcomes: list[list[int] | BaseException] = []
        registering = False
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            # One round trip: BEGIN, lock, NOTIFY (delivered only if this commits) and the head.
            with conn.pipeline():
                for statement in self.lock_table_statements:
                    cur.execute(statement)
                if self._sync_statement is not None:
                    cur.execute(self._sync_statement)
                self._notify_channel(cur)
                # Read the head only once the lock is held: in READ COMMITTED each statement
                # sees every transaction committed before it started, so this is the true head.
                cur.execute(self._head)
            row = cur.fetchone()
            position, prev_global, last_ts = (
                (row[0], bytes(row[1]), row[2]) if row else (0, self.genesis, None)
            )
            timestamp = self.clock.wall_us()
            self._check_clock(timestamp, last_ts, position)
            self._tree_at(cur, position)
            pending: list[Row] = []
            for events in requests:
                try:
                    if as_one_copy:
                        rows, heads = self._rows(cur, events, position, prev_global, timestamp)
                    else:
                        with conn.transaction():  # a savepoint: a conflict fails this request
                            rows, heads = self._rows(cur, events, position, prev_global, timestamp)
                            self._append_rows(cur, rows)
                except psycopg.errors.UniqueViolation:
                    outcomes.append(self._conflict(cur, events))
                    continue
                except (LedgerError, ValueError) as error:
                    outcomes.append(error)
                    continue
                pending.extend(rows)
                outcomes.append([r[0] for r in rows])
                position, prev_global = rows[-1][0], rows[-1][9]
                # Later requests of this batch may continue these sessions; on failure the
                # whole cache is dropped (_commit_batch).
                self._remember(heads)
            if as_one_copy and pending:
                self._append_rows(cur, pending)  # a (session_id, version) clash raises here
            if any(not isinstance(outcome, BaseException) for outcome in outcomes):
                registering = self._register_signer(cur)
        if registering:
            self._signer_registered()
        return outcomes

    def _insert_rows(self, cur: Any, rows: list[Row]) -> None:
        # Binary COPY: the cheapest way in for a batch (no text escaping of the hashes,
        # signatures and payloads); constraints and triggers apply as to INSERT.
        with cur.copy(self._copy) as copy:
            copy.set_types(self._column_types)
            for row in rows:
                copy.write_row(row)

    def _fetch_session_hash(self, cur: Any, sid: str, version: int) -> bytes | None:
        row = cur.execute(self._session_event_hash, (sid, version)).fetchone()
        return None if row is None else bytes(row[0])

    def _head_in(self, cur: Any) -> tuple[int, bytes]:
        row = cur.execute(self._head).fetchone()
        return (row[0], bytes(row[1])) if row else (0, self.genesis)

    def lone_read(self) -> Any:
        """The cursor of a read transaction (PostgreSQL has no reads outside one)."""
        return self.reading()

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """A cursor in one REPEATABLE READ transaction: its reads see one state of the ledger."""
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=tuple_row) as cur,
        ):
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield cur

    # -- reads --------------------------------------------------------------------------
    def head(self) -> tuple[int, bytes, int | None]:
        """(position, event hash, timestamp) of the newest event; (0, genesis, None) if empty."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            row = cur.execute(self._head).fetchone()
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
        tail, params = version_filter("version", "%s", gt=gt, lte=lte, desc=desc, limit=limit)
        statement = f"SELECT {READ_COLUMNS} FROM {self.table} WHERE session_id=%s {tail}"
        params.insert(0, session_key(originator_id))
        try:
            with (
                self.datastore.get_connection() as conn,
                conn.cursor(row_factory=tuple_row) as cur,
            ):
                rows = cur.execute(statement, params).fetchall()
        except psycopg.DataError as e:
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
            "%s", start=start, stop=stop, topics=topics, inclusive_of_start=inclusive_of_start
        )
        statement = (
            f"SELECT position, session_id, version, topic, payload FROM {self.table} "
            f"{where}ORDER BY position LIMIT %s"
        )
        params.append(limit)
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(statement, params).fetchall()
        return [
            Notification(
                id=row[0],
                originator_id=_uuid_or_str(row[1]),
                originator_version=row[2],
                topic=row[3],
                state=bytes(row[4]),
            )
            for row in rows
        ]

    def notification_rows(
        self, after: int, stop: int, part: int = 0, parts: int = 1
    ) -> list[NotificationRow]:
        """As the SQLite recorder's (``row_part`` splits the sessions the same way)."""
        split = " AND ascii(right(session_id, 1)) %% %s = %s" if parts > 1 else ""
        statement = (
            "SELECT position, session_id, version, topic, payload FROM "
            f"{self.table} WHERE position > %s AND position <= %s{split} ORDER BY position"
        )
        params = (after, stop, parts, part) if parts > 1 else (after, stop)
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(statement, params).fetchall()
        return [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def max_notification_id(self) -> int | None:
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            row = cur.execute(f"SELECT MAX(position) FROM {self.table}").fetchone()
        return row[0] if row else None

    def timestamp_at(self, position: int) -> int | None:
        """The ledger timestamp (µs) of the event at ``position``: when it was appended."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            row = cur.execute(
                f"SELECT timestamp FROM {self.table} WHERE position=%s", (position,)
            ).fetchone()
        return row[0] if row else None

    def _notify_channel(self, cur: Any) -> None:
        # Delivered at commit, to every LISTENing projection (projections/runner.py).
        cur.execute(SQL("NOTIFY {0}").format(Identifier(self.channel_name)))
