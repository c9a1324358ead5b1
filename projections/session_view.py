"""The operators' read model: each session's current state, each peer's standing, and how
often and after how long each transition happened — kept in a SQLite file beside the ledger
and brought up to date from the ledger's notification log (``l2-session status``).

Exactly once, by eventsourcing's tracking records: the view is a ``SQLiteTrackingRecorder``,
and each batch's read-model rows (written with sqlite-utils, whose writes nest in a savepoint
of the open transaction) and its tracking record (the last ledger position applied) commit
in one transaction. A catch-up killed at any moment resumes after the last committed
batch; deleting the file rebuilds the view from zero. The ledger is only read (a SQLite file
or a PostgreSQL URL: polling, as SQLite has no push).

Each event is applied to the aggregate it belongs to (kept in memory while the view catches
up; replayed from the ledger, from a snapshot when it can, when not), so what the view says
of a session is what the session itself would say: the domain's own rules, not a copy.

    view = SessionView("ledger.sqlite3.view")
    view.catch_up(ledger)                 # -> events applied
    view.sessions(), view.peers(), view.transitions(), view.position()
"""

from __future__ import annotations

import multiprocessing
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any, NamedTuple, cast
from uuid import UUID

import sqlite_utils
from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from l2_session.infrastructure.ledger import LedgerCorrupted, LedgerError, SessionLedger
from l2_session.infrastructure.ledger.chain import NotificationRow
from l2_session.infrastructure.ledger.verify_report import aggregate_kind
from l2_session.projections.history import state_name

NAME = "session_view"  # the tracking record's application name
BATCH = 2000  # ledger events a transaction applies
CACHE = 20_000  # aggregates kept in memory while catching up
PARALLEL_FROM = 50_000  # events behind from which a catch-up runs in several processes

SESSIONS = {
    "id": str, "peer": str, "role": str, "state": str, "since_us": int, "transport": str,
    "failure_reason": str, "close_reason": str, "events": int, "last_position": int,
}  # fmt: skip
PEERS = {
    "did": str, "failed_attempts": int, "quarantined_until_us": int, "retry_at_us": int,
    "last_position": int,
}  # fmt: skip
TRANSITIONS = {"from_state": str, "to_state": str, "count": int, "total_us": int}


def _tables(db: sqlite_utils.Database) -> None:
    """The read model's tables (sqlite-utils), made if missing."""
    db.table("sessions").create(SESSIONS, pk="id", not_null={"state", "events"}, if_not_exists=True)
    db.table("sessions").create_index(["peer"], if_not_exists=True)
    db.table("sessions").create_index(["state"], if_not_exists=True)
    db.table("peers").create(PEERS, pk="did", if_not_exists=True)
    db.table("transitions").create(TRANSITIONS, pk=("from_state", "to_state"),
                             not_null={"count", "total_us"}, if_not_exists=True)  # fmt: skip


@dataclass(frozen=True)
class Lag:
    position: int  # the last ledger position the view applied
    head: int  # the ledger's newest position

    @property
    def events(self) -> int:
        return max(0, self.head - self.position)


class SessionView(SQLiteTrackingRecorder):
    """The read model in the SQLite file at ``path`` (made on first use)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(SQLiteDatastore(db_name=str(path)))
        self.path = Path(path)
        self.create_table()  # the tracking table
        with self._transaction() as (db, _):
            _tables(db)

    def position(self) -> int:
        return self.max_tracking_id(NAME) or 0

    def lag(self, ledger: SessionLedger) -> Lag:
        return Lag(self.position(), ledger.recorder.max_notification_id() or 0)

    # -- catching up -----------------------------------------------------------------------
    def catch_up(
        self,
        ledger: SessionLedger,
        *,
        batch: int = BATCH,
        progress: Callable[[int, int], None] | None = None,
        workers: int | None = None,
    ) -> int:
        """Apply every ledger event after the view's position; how many were applied.

        ``workers``: processes for a long catch-up (default: one per core; from
        PARALLEL_FROM events behind): each opens the ledger again, folds the sessions of its
        share of every batch (``row_part``), and the view commits the batch's rows once all
        have."""
        start = self.position()
        head = ledger.recorder.max_notification_id() or 0
        report = (lambda at: progress(at - start, max(head, at) - start)) if progress else None
        n = workers or os.cpu_count() or 1
        location = _reopenable(ledger)
        if n > 1 and head - start >= PARALLEL_FROM and location is not None:
            self._in_parallel(location, start, head, batch, n, report)
        fold = Fold(ledger)
        while True:  # the rest, and what was appended meanwhile
            position = self.position()
            rows = ledger.ledger_recorder.notification_rows(position, position + batch)
            if not rows:
                return self.position() - start
            self._commit(fold.apply(rows, position), rows[-1][0])
            if report is not None:
                report(rows[-1][0])

    def _in_parallel(
        self,
        location: str,
        start: int,
        head: int,
        batch: int,
        workers: int,
        report: Callable[[int], None] | None,
    ) -> None:
        context = multiprocessing.get_context("forkserver")
        queues = [context.Queue(maxsize=4) for _ in range(workers)]
        processes = [
            context.Process(target=_fold_part, args=(location, part, workers, start, head,
                                                     batch, queue), daemon=True)
            for part, queue in enumerate(queues)
        ]  # fmt: skip
        for process in processes:
            process.start()
        try:
            for after in range(start, head, batch):
                stop = min(after + batch, head)
                shares = [_receive(q, p) for q, p in zip(queues, processes, strict=True)]
                if sum(share.count for share in shares) != stop - after:
                    raise LedgerCorrupted(
                        f"the ledger's positions {after + 1} to {stop} hold "
                        f"{sum(s.count for s in shares)} events: a gap — run verify"
                    )
                self._commit(Folded.joined(shares), stop)
                if report is not None:
                    report(stop)
        finally:
            for process in processes:
                process.kill()
                process.join()

    def _commit(self, folded: Folded, position: int) -> None:
        """The rows of a batch (written with sqlite-utils, in a savepoint) and the tracking
        record of its last position, in one transaction."""
        with self._transaction() as (db, c):
            db.table("sessions").upsert_all(folded.sessions, pk="id")
            db.table("peers").upsert_all(folded.peers, pk="did")
            if folded.moves:  # counts and times add up: what the table had, plus the batch's
                table = db.table("transitions")
                had = {(r["from_state"], r["to_state"]): (r["count"], r["total_us"])
                       for r in table.rows}  # fmt: skip
                rows = []
                for (a, b), (n, us) in folded.moves.items():
                    was_n, was_us = had.get((a, b), (0, 0))
                    rows.append({"from_state": a, "to_state": b, "count": was_n + n,
                                 "total_us": was_us + us})  # fmt: skip
                table.upsert_all(rows, pk=("from_state", "to_state"))
            self._insert_tracking(c, Tracking(NAME, position))

    @contextmanager
    def _transaction(self) -> Iterator[tuple[sqlite_utils.Database, Any]]:
        """The view's file as a sqlite-utils Database (whose writes nest in savepoints), and
        the cursor of the tracking recorder's transaction they are in: committed when the
        block ends, rolled back if it raises."""
        with self.datastore.transaction(commit=True) as c:
            yield sqlite_utils.Database(c.sqlite_cursor.connection, recursive_triggers=False), c

    # -- reading ---------------------------------------------------------------------------
    def _rows(self, sql: str) -> list[dict[str, Any]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql)
            return [dict(row) for row in c.fetchall()]

    def sessions(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM sessions ORDER BY last_position")

    def peers(self) -> list[dict[str, Any]]:
        """Each peer's standing, with the transport of its newest session."""
        return self._rows(
            "SELECT p.*, (SELECT transport FROM sessions s WHERE s.peer = p.did "
            "ORDER BY s.last_position DESC LIMIT 1) AS transport FROM peers p ORDER BY p.did"
        )

    def transitions(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM transitions ORDER BY count DESC, from_state, to_state")

    def state_counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._rows(
            "SELECT state, COUNT(*) AS n FROM sessions GROUP BY state ORDER BY n DESC"
        )}  # fmt: skip


@dataclass
class Folded:
    """What a batch changes in the view: session and peer rows, transition counts and times,
    and how many ledger rows it read."""

    sessions: list[dict[str, Any]]
    peers: list[dict[str, Any]]
    moves: dict[tuple[str, str], list[int]]
    count: int

    @staticmethod
    def joined(shares: list[Folded]) -> Folded:
        moves: dict[tuple[str, str], list[int]] = {}
        for share in shares:
            for key, (n, us) in share.moves.items():
                move = moves.setdefault(key, [0, 0])
                move[0], move[1] = move[0] + n, move[1] + us
        return Folded(
            [row for share in shares for row in share.sessions],
            [row for share in shares for row in share.peers],
            moves,
            sum(share.count for share in shares),
        )


class _Stored(NamedTuple):
    """A ledger row as the ledger's mapper reads it (a StoredEvent's fields)."""

    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes
    position: int


class Fold:
    """Applies ledger rows to the aggregates they belong to — kept in memory (the last
    CACHE), else replayed from the ledger (from a snapshot when it can) — with the domain's
    own ``mutate``."""

    def __init__(self, ledger: SessionLedger) -> None:
        self.ledger = ledger
        self.kinds: dict[UUID, str] = {}
        self.aggregates: OrderedDict[UUID, Any] = OrderedDict()
        self.ids: dict[str, UUID] = {}

    def apply(self, rows: list[NotificationRow], after: int | None = None) -> Folded:
        """The batch's changes; with ``after``, the rows must be the positions that follow
        it, one by one (else LedgerCorrupted: a gap)."""
        touched: dict[UUID, list[Any]] = {}  # id -> [aggregate, position, state]
        moves: dict[tuple[str, str], list[int]] = {}
        kinds, ids = self.kinds, self.ids
        to_event: Callable[[Any], Any] = self.ledger.mapper.to_domain_event
        for position, sid, version, topic, payload in rows:
            if after is not None:
                if position != after + 1:
                    raise LedgerCorrupted(
                        f"the view's ledger position {position} follows {after}: a gap — run verify"
                    )
                after = position
            oid = ids.get(sid)
            if oid is None:
                if len(ids) > CACHE:
                    ids.clear()
                oid = ids[sid] = UUID(sid)
            if version == 1:
                kinds[oid] = aggregate_kind(topic)
            kind = kinds.get(oid) or self._kind_of(oid)
            if kind != "session" and kind != "peer":
                continue
            event = to_event(_Stored(oid, version, topic, payload, position))
            entry = touched.get(oid)
            if entry is None:
                aggregate = self._aggregate(oid, version)
                known = kind == "session" and aggregate is not None
                before = state_name(aggregate) if known else None
                entry = touched[oid] = [aggregate, position, before]
            before = entry[2]  # the session's state before this event (None: not one yet)
            since = entry[0].state_since_us if before else 0
            aggregate = event.mutate(entry[0])  # (eventsourcing mutates it in place)
            if kind == "session":
                now = state_name(aggregate)
                if before and now != before:
                    move = moves.setdefault((before, now), [0, 0])
                    move[0] += 1
                    move[1] += max(0, int(getattr(event, "at_us", since)) - int(since))
                entry[2] = now
            entry[0], entry[1] = aggregate, position
        sessions, peers = [], []
        for oid, (aggregate, last, _) in touched.items():
            self._keep(oid, aggregate)
            if kinds[oid] == "peer":
                peers.append(_peer_row(aggregate, last))
            else:
                sessions.append(_session_row(aggregate, last))
        return Folded(sessions, peers, moves, len(rows))

    def _kind_of(self, oid: UUID) -> str:
        first = self.ledger.recorder.select_events(oid, lte=1)
        kind = aggregate_kind(first[0].topic if first else None)
        self.kinds[oid] = kind
        return kind

    def _aggregate(self, oid: UUID, version: int) -> Any:
        """The aggregate just before ``version`` (None before its first event)."""
        if version == 1:
            return None
        kept = self.aggregates.get(oid)
        if kept is not None and kept.version == version - 1:
            return kept
        return self.ledger.repository.get(oid, version=version - 1)

    def _keep(self, oid: UUID, aggregate: Any) -> None:
        self.aggregates[oid] = aggregate
        self.aggregates.move_to_end(oid)
        if len(self.aggregates) > CACHE:
            self.aggregates.popitem(last=False)


def _reopenable(ledger: SessionLedger) -> str | None:
    """Where another process opens ``ledger`` again: a SQLite file's path, or a PostgreSQL
    URL with its password (handed to the worker through a pipe, never printed)."""
    pg = getattr(ledger, "pg", None)
    if pg is not None:
        return str(pg.url())
    path = getattr(ledger, "path", None)
    return str(path) if isinstance(path, Path) else None


def _fold_part(
    location: str, part: int, parts: int, start: int, head: int, batch: int, queue: Any
) -> None:
    """A worker of a parallel catch-up: the Folded share of each batch, in order, on
    ``queue`` (an exception instead if it fails)."""
    try:
        ledger = SessionLedger(location, create=False)
        try:
            fold = Fold(ledger)
            for after in range(start, head, batch):
                rows = ledger.ledger_recorder.notification_rows(after, min(after + batch, head),
                                                         part, parts)  # fmt: skip
                queue.put(fold.apply(rows))
        finally:
            ledger.close()
    except Exception as e:  # the parent raises it
        queue.put(e)


def _receive(queue: Any, process: Any) -> Folded:
    while True:
        try:
            got = queue.get(timeout=1.0)
        except Empty:
            if not process.is_alive():
                raise LedgerError(
                    f"a catch-up worker ended (exit code {process.exitcode})"
                ) from None
            continue
        if isinstance(got, BaseException):
            raise got
        return cast(Folded, got)


def _session_row(a: Any, position: int) -> dict[str, Any]:
    return {
        "id": str(a.id), "peer": a.peer_did, "role": a.role, "state": state_name(a),
        "since_us": a.state_since_us, "transport": a.transport,
        "failure_reason": a.failure_reason, "close_reason": getattr(a, "close_reason", None),
        "events": a.version, "last_position": position,
    }  # fmt: skip


def _peer_row(a: Any, position: int) -> dict[str, Any]:
    return {
        "did": a.peer_did, "failed_attempts": getattr(a, "failed_attempts", 0),
        "quarantined_until_us": getattr(a, "quarantined_until_us", None) or None,
        "retry_at_us": getattr(a, "retry_at_us", None), "last_position": position,
    }  # fmt: skip
