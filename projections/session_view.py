"""The operators' read model: each session's current state, each peer's standing, and how
often and after how long each transition happened — kept in a SQLite file beside the ledger
and brought up to date from the ledger's notification log (``l2-session status``).

Exactly once, by eventsourcing's tracking records: the view is a ``SQLiteTrackingRecorder``
(its tables made with sqlite-utils), and each batch's read-model rows and its tracking record
(the last ledger position applied) commit in one transaction. A catch-up killed at any
moment resumes after the last committed batch; deleting the file rebuilds the view from zero.
The ledger is only read (a SQLite file or a PostgreSQL URL: polling, as SQLite has no push).

Each event is read for what it records, as the timeline reads it: every session event after
``Opened`` records the state it left the session in and when (``SessionCore.Event``, which
is how the domain itself moves the session), and the few events that set another shown field
are read for it (``_session_event``, ``_peer_event``: the bodies of the domain's events). A
session not among the last CACHE folded is read back by replaying it with the domain (from a
snapshot when it can). That the view says what replaying each session says is a test over
random sessions and peers (tests/ledger/test_session_view.py).

    view = SessionView("ledger.sqlite3.view")
    view.catch_up(ledger)                 # -> events applied
    view.sessions(), view.peers(), view.transitions(), view.position()
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any, cast
from uuid import UUID

import sqlite_utils
from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from l2_session.domain.session.core import TRANSPORTS
from l2_session.domain.session.states import State
from l2_session.infrastructure.ledger import LedgerCorrupted, LedgerError, SessionLedger
from l2_session.infrastructure.ledger.chain import NotificationRow
from l2_session.infrastructure.ledger.verify_report import aggregate_kind
from l2_session.projections.history import recorded_state, state_name

NAME = "session_view"  # the tracking record's application name
BATCH = 2000  # ledger events a transaction applies
CACHE = 20_000  # sessions' and peers' rows kept in memory while catching up
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


def _upsert(table: str, columns: dict[str, type], key: str) -> str:
    names = list(columns)
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)}) "
        f"ON CONFLICT ({key}) DO UPDATE SET "
        + ", ".join(f"{n} = excluded.{n}" for n in names if n != key)
    )


_UPSERT_SESSION = _upsert("sessions", SESSIONS, "id")
_UPSERT_PEER = _upsert("peers", PEERS, "did")
_ADD_TRANSITION = (
    "INSERT INTO transitions (from_state, to_state, count, total_us) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (from_state, to_state) DO UPDATE "
    "SET count = count + excluded.count, total_us = total_us + excluded.total_us"
)


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
        with self.datastore.transaction(commit=True) as c:  # sqlite-utils nests in it (4.0)
            _tables(sqlite_utils.Database(c.sqlite_cursor.connection, recursive_triggers=False))

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
        """The rows of a batch and the tracking record of its last position, in one
        transaction. (One ``executemany`` a table: sqlite-utils' ``upsert_all`` converts and
        builds statements row by row in Python, which cost a fifth of a catch-up.)"""
        with self.datastore.transaction(commit=True) as c:
            c.executemany(_UPSERT_SESSION, folded.sessions)
            c.executemany(_UPSERT_PEER, folded.peers)
            c.executemany(_ADD_TRANSITION,
                          [(a, b, n, us) for (a, b), (n, us) in folded.moves.items()])  # fmt: skip
            self._insert_tracking(c, Tracking(NAME, position))

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


class Fold:
    """Folds ledger rows into the view's rows. Each event is read for what it records: every
    session event after ``Opened`` the state it left the session in and when
    (``SessionCore.Event``), and a few what they set besides (``_session_event``,
    ``_peer_event``: the bodies of the domain's events that set a shown field). A session
    or peer not among the last CACHE folded is read back by replaying it with the domain
    (from a snapshot when it can), so nothing depends on what this process saw before."""

    def __init__(self, ledger: SessionLedger) -> None:
        self.ledger = ledger
        self.kinds: dict[str, str] = {}  # stored session id -> aggregate kind
        self.rows: OrderedDict[str, dict[str, Any]] = OrderedDict()  # the last CACHE folded

    def apply(self, rows: list[NotificationRow], after: int | None = None) -> Folded:
        """The batch's changes; with ``after``, the rows must be the positions that follow
        it, one by one (else LedgerCorrupted: a gap)."""
        touched: dict[str, dict[str, Any]] = {}
        moves: dict[tuple[str, str], list[int]] = {}
        kinds, kept, decode = self.kinds, self.rows, _DECODER.decode
        if len(kinds) > 4 * CACHE:
            kinds.clear()  # (read again from the ledger when needed)
        for position, sid, version, topic, payload in rows:
            if after is not None:
                if position != after + 1:
                    raise LedgerCorrupted(
                        f"the view's ledger position {position} follows {after}: a gap — run verify"
                    )
                after = position
            if version == 1:
                kinds[sid] = kind = aggregate_kind(topic)
            else:
                kind = kinds.get(sid) or self._kind_of(sid)
            if kind != "session" and kind != "peer":
                continue
            try:
                recorded = decode(payload.decode("utf-8"))
            except ValueError as e:
                raise LedgerCorrupted(
                    f"payload at position {position} is not valid canonical JSON: {e}"
                ) from e
            name = topic[topic.rfind(".") + 1 :]
            row = touched.get(sid) or kept.get(sid)
            if row is None or row["events"] != version - 1:
                row = self._row(sid, kind, version)
            if kind == "peer":
                _peer_event(row, name, recorded, version == 1)
            elif version == 1:
                _opened(row, recorded)
            else:
                state, at_us = recorded["state"], recorded["at_us"]
                now = recorded_state(state)
                if now != row["state"]:
                    move = moves.setdefault((row["state"], now), [0, 0])
                    move[0] += 1
                    move[1] += max(0, at_us - row["since_us"])
                    row["state"], row["since_us"] = now, at_us
                if name in _SETS:
                    _session_event(row, name, recorded)
            row["events"], row["last_position"] = version, position
            touched[sid] = row
        sessions: list[dict[str, Any]] = []
        peers: list[dict[str, Any]] = []
        for sid, row in touched.items():
            kept[sid] = row
            kept.move_to_end(sid)
            if "did" in row:  # a peer's row (a session's has none)
                peers.append({k: v for k, v in row.items() if k != "events"})
            else:
                sessions.append(dict(row))
        while len(kept) > CACHE:
            kept.popitem(last=False)
        return Folded(sessions, peers, moves, len(rows))

    def _kind_of(self, sid: str) -> str:
        first = self.ledger.recorder.select_events(UUID(sid), lte=1)
        kind = aggregate_kind(first[0].topic if first else None)
        self.kinds[sid] = kind
        return kind

    def _row(self, sid: str, kind: str, version: int) -> dict[str, Any]:
        """The row of a session or peer just before ``version``: empty before its first
        event, else its aggregate replayed by the domain."""
        if version == 1:
            return {"id": str(UUID(sid)), "events": 0} if kind == "session" else {"events": 0}
        aggregate: Any = self.ledger.repository.get(UUID(sid), version=version - 1)
        if kind == "peer":
            return _peer_row(aggregate, 0) | {"events": aggregate.version}
        return _session_row(aggregate, 0)


_DECODER = json.JSONDecoder()
_SETS = frozenset({"HandshakeInitiated", "HandshakeReceived", "Failed", "NodeRestarted",
                   "FallbackAttempted", "TransportSwitched", "Closed"})  # fmt: skip
"""The session events that set a shown field besides the state (``_session_event``)."""


def _opened(row: dict[str, Any], recorded: dict[str, Any]) -> None:
    """``Opened``: a new session in ``idle`` (SessionCore.__init__)."""
    row.update(
        peer=recorded["peer_did"],
        role="initiator" if recorded["role"] == "initiator" else "responder",
        state=State.IDLE.value, since_us=recorded["at_us"],
        transport=recorded.get("transport", TRANSPORTS[0]),
        failure_reason=None, close_reason=None,
    )  # fmt: skip


def _session_event(row: dict[str, Any], name: str, recorded: dict[str, Any]) -> None:
    """What a session event sets besides its state (the domain's event bodies)."""
    if name in ("HandshakeInitiated", "HandshakeReceived"):
        row["failure_reason"] = None
    elif name == "Failed" or (name == "NodeRestarted" and recorded.get("reason") is not None):
        row["failure_reason"] = recorded["reason"]
    elif name == "FallbackAttempted":
        row["transport"] = recorded["transport"]
    elif name == "TransportSwitched" and recorded.get("transport") is not None:
        row["transport"] = recorded["transport"]  # absent before it was recorded (session.py)
    elif name == "Closed":
        row["close_reason"] = recorded["reason"]


def _peer_event(row: dict[str, Any], name: str, recorded: dict[str, Any], first: bool) -> None:
    """What a peer's event sets (Peer's __init__ and event bodies)."""
    if first:
        row.update(did=recorded["peer_did"], failed_attempts=0, quarantined_until_us=None,
                   retry_at_us=None)  # fmt: skip
    elif name == "Quarantined":
        row["quarantined_until_us"] = recorded["until_us"] or None
    elif name == "RetryScheduled":
        row["failed_attempts"], row["retry_at_us"] = recorded["attempt"], recorded["retry_at_us"]
    elif name == "BackoffReset":
        row["failed_attempts"], row["retry_at_us"] = 0, None


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
    ``queue`` (an exception instead if it fails). It ends when the parent does."""
    threading.Thread(target=_end_with_parent, daemon=True).start()
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


def _end_with_parent() -> None:
    """A worker's watch on its parent: a parent killed mid-way leaves nobody to read the
    worker's queue, whose pipe would hold the worker (and the terminal it writes to) for
    ever. The parent's sentinel is a pipe that its end closes, zombie or not. The worker
    only reads the ledger: ending it at once loses nothing."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(0)


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
