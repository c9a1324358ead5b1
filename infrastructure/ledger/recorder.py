"""The signed application recorder: where chaining and signing happen, inside the insert.

eventsourcing hands an Application's new events to its recorder's ``insert_events``. This
recorder assigns each event its global position inside the write transaction, links it to the
previous event of its session and to the previous event of the ledger, hashes it with BLAKE3,
signs the hash with the node's Ed25519 key and inserts it; many callers' events share one
transaction through group commit. See docs/ledger-format.md.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

from ..clock import TimeSource
from ..identity import NodeIdentity
from .codec import LedgerStoredEvent
from .errors import (
    ClockWentBackwards,
    ConcurrencyConflict,
    LedgerCorrupted,
    LedgerError,
    PayloadTooLarge,
    SessionChainError,
)
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_SESSION_ID_BYTES,
    MAX_TOPIC_BYTES,
    ZERO_HASH,
    event_hash,
    genesis_hash,
    lp,
)
from .groupcommit import GroupCommitConfig, GroupCommitter
from .schema import CREATE_STATEMENTS, EVENTS_TABLE, META_TABLE, SIGNERS_TABLE

SIGNER_DOMAIN = b"l2-session/ledger/signer/v1\n"
_INSERT = (
    f"INSERT INTO {EVENTS_TABLE} (position, session_id, version, topic, timestamp, payload, "
    "sealed, prev_session_hash, prev_global_hash, event_hash, signer, signature) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_HEAD = f"SELECT position, event_hash, timestamp FROM {EVENTS_TABLE} ORDER BY position DESC LIMIT 1"
_SESSION_EVENT_HASH = f"SELECT event_hash FROM {EVENTS_TABLE} WHERE session_id=? AND version=?"


def session_key(originator_id: UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


class SignedSQLiteRecorder(SQLiteApplicationRecorder):
    """eventsourcing's SQLite application recorder, writing the signed, chained ledger table."""

    def __init__(
        self,
        datastore: SQLiteDatastore,
        *,
        identity: NodeIdentity | None,
        clock: TimeSource,
        group_commit: GroupCommitConfig | None = None,
        session_cache_size: int = 100_000,
        verify_on_read: bool = True,
    ) -> None:
        super().__init__(datastore, events_table_name=EVENTS_TABLE)
        self.identity = identity
        self.clock = clock
        self.verify_on_read = verify_on_read
        self._signer = identity.did if identity is not None else None
        self._signer_lp = lp(self._signer.encode()) if self._signer else b""
        self._session_heads: dict[str, tuple[int, bytes]] = {}
        self._session_cache_size = session_cache_size
        self._heads_lock = threading.Lock()
        self.committer: GroupCommitter[StoredEvent, list[int]] = GroupCommitter(
            self._commit_batch, group_commit or GroupCommitConfig()
        )
        self.ledger_id = ""
        self.genesis = ZERO_HASH

    # -- schema -------------------------------------------------------------------------
    def construct_create_table_statements(self) -> list[str]:
        return list(CREATE_STATEMENTS)

    def create_table(self) -> None:
        import uuid

        with self.datastore.transaction(commit=True) as c:
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

    def register_signer(self) -> None:
        """Record this node's did:key as a signer of this ledger (self-signed statement)."""
        if self.identity is None or self._signer is None:
            return
        statement = SIGNER_DOMAIN + lp(self.ledger_id.encode()) + lp(self._signer.encode())
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                f"INSERT OR IGNORE INTO {SIGNERS_TABLE} (did, registered_at, signature) "
                "VALUES (?,?,?)",
                (self._signer, self.clock.wall_us(), self.identity.sign(statement)),
            )

    # -- appends ------------------------------------------------------------------------
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if self.identity is None:
            raise LedgerError("this ledger was opened read-only (no node identity): cannot append")
        if not stored_events:
            return []
        return self.committer.submit(stored_events)

    def _commit_batch(
        self, requests: list[Sequence[StoredEvent]]
    ) -> list[list[int] | BaseException]:
        outcomes: list[list[int] | BaseException] = []
        with self.datastore.get_connection(commit=True) as connection:
            conn: sqlite3.Connection = connection._sqlite_conn
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute(_HEAD).fetchone()
                position, prev_global, last_ts = (
                    (row[0], row[1], row[2]) if row else (0, self.genesis, None)
                )
                timestamp = self.clock.wall_us()
                if last_ts is not None and timestamp < last_ts:
                    raise ClockWentBackwards(
                        f"the clock reads {timestamp} µs since the epoch, earlier than the "
                        f"ledger head's timestamp {last_ts} µs (position {position}); "
                        "refusing to append out of time order — fix the system clock"
                    )
                for events in requests:
                    cur.execute("SAVEPOINT request")
                    try:
                        rows, heads = self._rows(cur, events, position, prev_global, timestamp)
                        cur.executemany(_INSERT, rows)
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
                cur.execute("COMMIT")
            except BaseException:
                conn.rollback()
                with self._heads_lock:
                    self._session_heads.clear()
                raise
        return outcomes

    def _rows(
        self,
        cur: sqlite3.Cursor,
        events: Sequence[StoredEvent],
        position: int,
        prev_global: bytes,
        timestamp: int,
    ) -> tuple[list[tuple[Any, ...]], dict[str, tuple[int, bytes]]]:
        sign = self.identity.private_key.sign  # type: ignore[union-attr]
        signer, signer_lp = self._signer, self._signer_lp
        heads: dict[str, tuple[int, bytes]] = {}
        rows: list[tuple[Any, ...]] = []
        for event in events:
            sid = session_key(event.originator_id)
            version = event.originator_version
            sid_b = sid.encode()
            topic_b = event.topic.encode()
            if len(sid_b) > MAX_SESSION_ID_BYTES or len(topic_b) > MAX_TOPIC_BYTES:
                raise PayloadTooLarge(
                    f"session id ({len(sid_b)} bytes, limit {MAX_SESSION_ID_BYTES}) or event type "
                    f"({len(topic_b)} bytes, limit {MAX_TOPIC_BYTES}) too long at session {sid}"
                )
            if version == 1:
                prev_session = ZERO_HASH
            else:
                head = heads.get(sid)
                prev_session = (
                    head[1]
                    if head and head[0] == version - 1
                    else self._session_hash(cur, sid, version - 1)
                )
            position += 1
            h = event_hash(
                position, sid_b, version, topic_b, timestamp, event.state,
                prev_session, prev_global, signer_lp,
            )  # fmt: skip
            rows.append(
                (
                    position, sid, version, event.topic, timestamp, event.state,
                    getattr(event, "sealed", None), prev_session, prev_global, h, signer, sign(h),
                )
            )  # fmt: skip
            heads[sid] = (version, h)
            prev_global = h
        return rows, heads

    def _session_hash(self, cur: sqlite3.Cursor, sid: str, version: int) -> bytes:
        with self._heads_lock:
            cached = self._session_heads.get(sid)
        if cached is not None and cached[0] == version:
            return cached[1]
        row = cur.execute(_SESSION_EVENT_HASH, (sid, version)).fetchone()
        if row is None:
            raise SessionChainError(
                f"session {sid}: cannot append version {version + 1} because version "
                f"{version} is not in the ledger (versions must follow each other)"
            )
        return bytes(row[0])

    def _remember(self, heads: dict[str, tuple[int, bytes]]) -> None:
        with self._heads_lock:
            cache = self._session_heads
            for sid, head in heads.items():
                cache.pop(sid, None)
                cache[sid] = head
            overflow = len(cache) - self._session_cache_size
            if overflow > 0:
                for sid in list(cache)[:overflow]:
                    del cache[sid]

    def _conflict(self, cur: sqlite3.Cursor, events: Sequence[StoredEvent]) -> ConcurrencyConflict:
        for event in events:
            sid = session_key(event.originator_id)
            if cur.execute(_SESSION_EVENT_HASH, (sid, event.originator_version)).fetchone():
                return ConcurrencyConflict(
                    f"session {sid} version {event.originator_version} was already appended "
                    "by another writer; reload the session and retry the command"
                )
        return ConcurrencyConflict("an event of this append collides with one already stored")

    # -- reads --------------------------------------------------------------------------
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
        params: list[Any] = [session_key(originator_id)]
        if gt is not None:
            statement += "AND version>? "
            params.append(gt)
        if lte is not None:
            statement += "AND version<=? "
            params.append(lte)
        statement += "ORDER BY version " + ("DESC " if desc else "ASC ")
        if limit is not None:
            statement += "LIMIT ?"
            params.append(limit)
        try:
            with self.datastore.transaction(commit=False) as c:
                c.execute(statement, params)
                rows = c.fetchall()
        except sqlite3.DatabaseError as e:
            raise LedgerCorrupted(f"cannot read session {originator_id}: {e}") from e
        return [self._stored_event(originator_id, row) for row in rows]

    def _stored_event(self, originator_id: UUID | str, row: Any) -> LedgerStoredEvent:
        position = row[0]
        try:
            payload = bytes(row[5])
            if self.verify_on_read:
                # Cheap integrity check on every read (a BLAKE3 per event); signatures and
                # chain links are verify()'s job.
                recomputed = event_hash(
                    position, row[1].encode(), row[2], row[3].encode(), row[4], payload,
                    bytes(row[7]), bytes(row[8]), lp(row[10].encode()),
                )  # fmt: skip
                if recomputed != bytes(row[9]):
                    raise LedgerCorrupted(
                        f"event at position {position} (session {row[1]} version {row[2]}) does "
                        "not match its stored hash: the ledger was altered; run verify"
                    )
            sealed = bytes(row[6]) if row[6] is not None else None
        except (TypeError, AttributeError) as e:
            raise LedgerCorrupted(f"event at position {position} is malformed: {e}") from e
        return LedgerStoredEvent(
            originator_id=originator_id,
            originator_version=row[2],
            topic=row[3],
            state=payload,
            sealed=sealed,
            position=position,
        )

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        clauses: list[str] = []
        params: list[Any] = []
        if start is not None:
            clauses.append("position>=?" if inclusive_of_start else "position>?")
            params.append(start)
        if stop is not None:
            clauses.append("position<=?")
            params.append(stop)
        if topics:
            clauses.append(f"topic IN ({','.join('?' * len(topics))})")
            params.extend(topics)
        where = ("WHERE " + " AND ".join(clauses) + " ") if clauses else ""
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

    def _max_notification_id(self, c: Any) -> int:
        c.execute(f"SELECT MAX(position) FROM {EVENTS_TABLE}")
        return c.fetchone()[0] or 0
