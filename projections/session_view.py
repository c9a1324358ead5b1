"""The operators' read model: each session's current state, each peer's standing, and how
often and after how long each transition happened — kept in a SQLite file beside the ledger
and brought up to date from the ledger's notification log (``l2-session status``).

Exactly once, by eventsourcing's tracking records: the view is a ``SQLiteTrackingRecorder``,
and each batch's read-model rows and its tracking record (the last ledger position applied)
commit in one transaction. A catch-up killed at any moment resumes after the last committed
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

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from l2_session.infrastructure.ledger import LedgerCorrupted, SessionLedger
from l2_session.infrastructure.ledger.verify_report import aggregate_kind
from l2_session.projections.history import state_name

NAME = "session_view"  # the tracking record's application name
BATCH = 2000  # ledger events a transaction applies
CACHE = 20_000  # aggregates kept in memory while catching up

CREATE = [
    "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, peer TEXT, role TEXT, "
    "state TEXT NOT NULL, since_us INTEGER, transport TEXT, failure_reason TEXT, "
    "close_reason TEXT, events INTEGER NOT NULL, last_position INTEGER)",
    "CREATE INDEX IF NOT EXISTS sessions_by_peer ON sessions (peer)",
    "CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions (state)",
    "CREATE TABLE IF NOT EXISTS peers (did TEXT PRIMARY KEY, failed_attempts INTEGER, "
    "quarantined_until_us INTEGER, retry_at_us INTEGER, last_position INTEGER)",
    "CREATE TABLE IF NOT EXISTS transitions (from_state TEXT NOT NULL, to_state TEXT NOT NULL, "
    "count INTEGER NOT NULL, total_us INTEGER NOT NULL, PRIMARY KEY (from_state, to_state))",
]
UPSERT_SESSION = (
    "INSERT INTO sessions VALUES (:id, :peer, :role, :state, :since_us, :transport, "
    ":failure_reason, :close_reason, :events, :last_position) "
    "ON CONFLICT (id) DO UPDATE SET state=excluded.state, since_us=excluded.since_us, "
    "transport=excluded.transport, failure_reason=excluded.failure_reason, "
    "close_reason=excluded.close_reason, events=sessions.events + excluded.events, "
    "last_position=excluded.last_position"
)
UPSERT_PEER = (
    "INSERT INTO peers VALUES (:did, :failed_attempts, :quarantined_until_us, :retry_at_us, "
    ":last_position) ON CONFLICT (did) DO UPDATE SET failed_attempts=excluded.failed_attempts, "
    "quarantined_until_us=excluded.quarantined_until_us, retry_at_us=excluded.retry_at_us, "
    "last_position=excluded.last_position"
)
ADD_TRANSITION = (
    "INSERT INTO transitions VALUES (?, ?, ?, ?) ON CONFLICT (from_state, to_state) DO UPDATE "
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
        self.create_table()
        self._kinds: dict[UUID, str] = {}
        self._aggregates: OrderedDict[UUID, Any] = OrderedDict()

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *CREATE]

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
    ) -> int:
        """Apply every ledger event after the view's position; how many were applied."""
        start = self.position()
        head = ledger.recorder.max_notification_id() or 0
        applied = 0
        while True:
            position = self.position()
            page = ledger.recorder.select_notifications(position, batch, inclusive_of_start=False)
            if not page:
                return applied
            self._apply(ledger, page, position)
            applied += len(page)
            if progress is not None:
                progress(page[-1].id - start, max(head - start, page[-1].id - start))

    def _apply(self, ledger: SessionLedger, page: Any, position: int) -> None:
        touched: dict[UUID, list[Any]] = {}  # session or peer -> [aggregate, events, position]
        moves: dict[tuple[str, str], list[int]] = {}
        kinds, to_event = self._kinds, ledger.mapper.to_domain_event
        for n in page:
            if n.id != position + 1:
                raise LedgerCorrupted(
                    f"the view's ledger position {n.id} follows {position}: a gap — run verify"
                )
            position = n.id
            oid = n.originator_id
            if n.originator_version == 1:
                kinds[oid] = aggregate_kind(n.topic)
            kind = kinds.get(oid) or self._kind_of(ledger, oid)
            if kind != "session" and kind != "peer":
                continue
            event: Any = to_event(n)
            entry = touched.get(oid)
            aggregate = entry[0] if entry else self._aggregate(ledger, oid, n.originator_version)
            if kind == "session" and aggregate is not None:
                before, since = state_name(aggregate), aggregate.state_since_us
                aggregate = event.mutate(aggregate)
                after = state_name(aggregate)
                if after != before:
                    move = moves.setdefault((before, after), [0, 0])
                    move[0] += 1
                    move[1] += max(0, int(getattr(event, "at_us", since)) - int(since))
            else:
                aggregate = event.mutate(aggregate)
            if entry is None:
                touched[oid] = [aggregate, 1, n.id]
            else:
                entry[0], entry[1], entry[2] = aggregate, entry[1] + 1, n.id
        sessions, peers = [], []
        for oid, (aggregate, events, last) in touched.items():
            self._keep(oid, aggregate)
            if kinds[oid] == "peer":
                peers.append(_peer_row(aggregate, last))
            else:
                sessions.append(_session_row(aggregate, last) | {"events": events})
        with self.datastore.transaction(commit=True) as c:
            c.executemany(UPSERT_SESSION, sessions)
            c.executemany(UPSERT_PEER, peers)
            c.executemany(ADD_TRANSITION, [(a, b, n, us) for (a, b), (n, us) in moves.items()])
            self._insert_tracking(c, Tracking(NAME, position))

    def _kind_of(self, ledger: SessionLedger, oid: UUID) -> str:
        first = ledger.recorder.select_events(oid, lte=1)
        kind = aggregate_kind(first[0].topic if first else None)
        self._kinds[oid] = kind
        return kind

    def _aggregate(self, ledger: SessionLedger, oid: UUID, version: int) -> Any:
        """The aggregate just before ``version`` (None before its first event)."""
        if version == 1:
            return None
        kept = self._aggregates.get(oid)
        if kept is not None and kept.version == version - 1:
            return kept
        return ledger.repository.get(oid, version=version - 1)

    def _keep(self, oid: UUID, aggregate: Any) -> None:
        self._aggregates[oid] = aggregate
        self._aggregates.move_to_end(oid)
        if len(self._aggregates) > CACHE:
            self._aggregates.popitem(last=False)

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


def _session_row(a: Any, position: int) -> dict[str, Any]:
    return {
        "id": str(a.id), "peer": a.peer_did, "role": a.role, "state": state_name(a),
        "since_us": a.state_since_us, "transport": a.transport,
        "failure_reason": a.failure_reason, "close_reason": getattr(a, "close_reason", None),
        "last_position": position,
    }  # fmt: skip


def _peer_row(a: Any, position: int) -> dict[str, Any]:
    return {
        "did": a.peer_did, "failed_attempts": getattr(a, "failed_attempts", 0),
        "quarantined_until_us": getattr(a, "quarantined_until_us", None) or None,
        "retry_at_us": getattr(a, "retry_at_us", None), "last_position": position,
    }  # fmt: skip
