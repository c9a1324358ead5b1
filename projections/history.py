"""Time travel over a ledger: what each session (or peer) was at any position or time, and
every transition that took it there — ``l2-session audit replay`` and ``audit timeline``.

Nothing here keeps a copy: a session's state at position P is the session replayed up to its
last event at or before P (``repository.get(id, version=…)``, from a snapshot when the ledger
has one it can read), so it is by construction what the live node had in memory just after
appending P. A time is turned into a position by the ledger's ``timestamp`` column, which
never decreases along positions (``verify`` reports ``time_reversed`` where it does).

    history = LedgerHistory(ledger)
    at = history.position_at(datetime(2026, 12, 7, 14, 2, tzinfo=UTC))
    session = history.state_at(session_id, at)        # a Replayed
    for step in history.timeline(session_id): ...     # Transitions, in ledger order

Sealed fields (keys) are read as placeholders without the ledger's storage key; nothing here
needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from l2_session.domain.session.states import FINAL
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.chain import session_key
from l2_session.infrastructure.ledger.verify_report import aggregate_kind

PAGE = 1000  # events decoded per read, for a timeline of every session


class HistoryError(ValueError):
    """A point or a session the ledger does not hold; the message says what it holds."""


@dataclass(frozen=True)
class Replayed:
    """An aggregate as it was at a point of the ledger."""

    aggregate_id: UUID
    kind: str  # 'session', 'peer', 'witnessed' or 'other' (verify_report.aggregate_kind)
    version: int  # of its last event at or before the point
    position: int  # that event's position
    timestamp_us: int  # that event's ledger timestamp
    aggregate: Any  # the replayed object itself (a Session, a Peer, …)

    def summary(self) -> dict[str, Any]:
        """What an auditor asks first, as JSON values."""
        a = self.aggregate
        out: dict[str, Any] = {
            "id": str(self.aggregate_id),
            "kind": self.kind,
            "version": self.version,
            "position": self.position,
            "time": iso(self.timestamp_us),
        }
        if self.kind == "session":
            out |= {
                "state": state_name(a),
                "since": iso(a.state_since_us),
                "peer": a.peer_did,
                "role": a.role,
                "transport": a.transport,
                "keys_since": None if a.keys_derived_us is None else iso(a.keys_derived_us),
                "failure_reason": a.failure_reason,
                "close_reason": getattr(a, "close_reason", None),
                "retry_at": None if a.retry_at_us is None else iso(a.retry_at_us),
                "queue": {
                    "unacknowledged": len(a.outbox),
                    "next_seq": a.next_seq,
                    "next_expected_seq": a.next_expected_seq,
                },
            }
        elif self.kind == "peer":
            until = getattr(a, "quarantined_until_us", None)
            out |= {
                "peer": a.peer_did,
                "failed_attempts": getattr(a, "failed_attempts", 0),
                "quarantined_until": None if not until else iso(until),
                "retry_at": None if not getattr(a, "retry_at_us", None) else iso(a.retry_at_us),
            }
        return out


@dataclass(frozen=True)
class Transition:
    """One event of the ledger, as a step of its aggregate's life."""

    position: int
    at_us: int  # when it happened, by the event's own time (``at_us``; else as recorded)
    timestamp_us: int  # when the ledger recorded it (its ``timestamp`` column)
    aggregate_id: UUID
    kind: str
    version: int
    event: str  # the event's class name: 'Established', 'LinkWentDown', …
    trigger: str | None  # the spec's trigger that caused it (session events)
    state_before: str | None
    state: str | None  # the state it left the session in ('closed' when final)
    reason: str | None  # a failure's or a close's reason

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "time": iso(self.at_us),
            "recorded": iso(self.timestamp_us),
            "id": str(self.aggregate_id),
            "kind": self.kind,
            "version": self.version,
            "event": self.event,
            "trigger": self.trigger,
            "from": self.state_before,
            "to": self.state,
            "reason": self.reason,
        }


def state_name(session: Any) -> str:
    """A session's state as the read models name it: its state's value, or 'closed'. (A
    session read back from a snapshot holds its state as the plain string until its next
    event: ``str`` gives the value of either.)"""
    return "closed" if session.closed else str(session.state)


def recorded_state(state: str) -> str:
    """The read models' name for the state a session event records: 'closed' for the final
    one."""
    return "closed" if state == FINAL else str(state)


def iso(us: int) -> str:
    """A ledger time (µs since the epoch) as ISO 8601 in UTC, to the microsecond."""
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> int:
    """An ISO 8601 date and time (UTC when it names no offset) as µs since the epoch."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise HistoryError(
            f"{text!r} is not an ISO 8601 time such as 2026-12-07T14:02:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class LedgerHistory:
    """Reads of one open ledger (SQLite or PostgreSQL), each in one read transaction."""

    def __init__(self, ledger: SessionLedger) -> None:
        self.ledger = ledger
        recorder = ledger.ledger_recorder
        self._read = recorder.lone_read
        sql = recorder.tree_sql
        m, events = sql.mark, sql.events
        self._head = f"SELECT MAX(position) FROM {events}"
        self._time_of = f"SELECT timestamp FROM {events} WHERE position = {m}"
        self._last_version = f"SELECT MAX(version) FROM {events} WHERE session_id = {m}"
        self._event_at = (
            f"SELECT position, timestamp FROM {events} WHERE session_id = {m} AND version = {m}"
        )
        self._first_topic = f"SELECT topic FROM {events} WHERE session_id = {m} AND version = 1"
        self._all_at = (
            f"SELECT e.session_id, e.version, e.position, e.timestamp, f.topic FROM {events} e "
            f"JOIN (SELECT session_id, MAX(position) AS last FROM {events} "
            f"WHERE position <= {m} GROUP BY session_id) m ON e.position = m.last "
            f"LEFT JOIN {events} f ON f.session_id = e.session_id AND f.version = 1 "
            "ORDER BY e.position"
        )
        rows = f"SELECT position, timestamp, session_id, version, topic, payload FROM {events}"
        self._session_rows = f"{rows} WHERE session_id = {m} ORDER BY version"
        self._page_rows = f"{rows} WHERE position >= {m} ORDER BY position LIMIT {m}"

    # -- points -----------------------------------------------------------------------------
    def head(self) -> int:
        """The newest position (0 for an empty ledger)."""
        with self._read() as cur:
            cur.execute(self._head)
            found = cur.fetchone()[0]
        return int(found or 0)

    def position_at(self, when: int | datetime) -> int:
        """The last position whose event was appended at or before ``when`` (µs since the
        epoch, or an aware datetime): O(log n) reads, the timestamps being in order."""
        if isinstance(when, datetime):
            when = parse_time(when.isoformat())
        head = self.head()
        with self._read() as cur:

            def time_of(position: int) -> int:
                cur.execute(self._time_of, (position,))
                row = cur.fetchone()
                if row is None:
                    raise HistoryError(f"the ledger has no event at position {position}")
                return int(row[0])

            if head == 0 or time_of(1) > when:
                first = "it is empty" if head == 0 else f"its first event is at {iso(time_of(1))}"
                raise HistoryError(f"{iso(when)} is before the ledger: {first}")
            return _last_at_most(1, head, time_of, when)

    def _point(self, position: int | None) -> int:
        head = self.head()
        if position is None:
            return head
        if not 1 <= position <= head:
            raise HistoryError(f"position {position} is not in the ledger (positions 1..{head})")
        return position

    # -- states -----------------------------------------------------------------------------
    def state_at(self, aggregate_id: UUID | str, position: int | None = None) -> Replayed:
        """The aggregate as it was just after ``position`` (default: now)."""
        point = self._point(position)
        key = session_key(_uuid(aggregate_id))
        with self._read() as cur:
            row = self._version_at(cur, key, point)
            cur.execute(self._first_topic, (key,))
            first = cur.fetchone()
        if row is None:
            raise HistoryError(
                f"session {aggregate_id} has no event at or before position {point}"
                if first is not None
                else f"the ledger holds no session {aggregate_id}"
            )
        version, at, timestamp = row
        return self._replay(
            _uuid(aggregate_id), first[0] if first else None, version, at, timestamp
        )

    def _version_at(self, cur: Any, key: str, point: int) -> tuple[int, int, int] | None:
        """(version, position, timestamp) of the session's last event at or before position
        ``point``: a binary search over its versions (positions grow with them), O(log n)
        reads on the (session_id, version) index, however long the session."""

        def at(version: int) -> tuple[int, int]:
            cur.execute(self._event_at, (key, version))
            row = cur.fetchone()
            if row is None:
                raise HistoryError(f"session {key} has no version {version}: run verify")
            return int(row[0]), int(row[1])

        cur.execute(self._last_version, (key,))
        top = cur.fetchone()[0]
        if top is None or at(1)[0] > point:
            return None
        version = _last_at_most(1, int(top), lambda v: at(v)[0], point)
        position, timestamp = at(version)
        return version, position, timestamp

    def states_at(self, position: int | None = None) -> list[Replayed]:
        """Every aggregate that had begun by ``position`` (default: now), as it was then, in
        the order of their last event."""
        point = self._point(position)
        with self._read() as cur:
            cur.execute(self._all_at, (point,))
            rows = cur.fetchall()
        return [self._replay(_uuid(s), topic, v, p, t) for s, v, p, t, topic in rows]

    def _replay(
        self, aggregate_id: UUID, first_topic: str | None, version: int, position: int, ts: int
    ) -> Replayed:
        aggregate: Any = self.ledger.repository.get(aggregate_id, version=version)
        return Replayed(aggregate_id, aggregate_kind(first_topic), version, position, ts, aggregate)

    # -- transitions ------------------------------------------------------------------------
    def timeline(self, aggregate_id: UUID | str | None = None) -> Iterator[Transition]:
        """Every event of one aggregate (or of all), in ledger order, as transitions."""
        states: dict[UUID, str | None] = {}
        kinds: dict[UUID, str] = {}
        for position, timestamp, topic, event in self._events(aggregate_id):
            oid = event.originator_id
            if event.originator_version == 1:
                kinds[oid] = aggregate_kind(topic)
            kind = kinds.get(oid, "other")
            before = states.get(oid)
            state = getattr(event, "state", None)
            if state is None and event.originator_version == 1 and kind == "session":
                state = "idle"
            if state is not None:
                states[oid] = state = recorded_state(state)
            at_us = getattr(event, "at_us", None)
            yield Transition(
                position, at_us if isinstance(at_us, int) else timestamp, timestamp, oid, kind,
                event.originator_version,
                type(event).__name__, getattr(event, "trigger", None), before, state,
                getattr(event, "reason", None),
            )  # fmt: skip

    def _events(self, aggregate_id: UUID | str | None) -> Iterator[tuple[int, int, str, Any]]:
        """(position, ledger timestamp, stored topic, decoded event) in ledger order: one
        session's events in one read, or every event a page a read."""
        if aggregate_id is not None:
            rows = self._rows(self._session_rows, (session_key(_uuid(aggregate_id)),))
            if not rows:
                raise HistoryError(f"the ledger holds no session {aggregate_id}")
            yield from self._decoded(rows)
            return
        start = 1
        while rows := self._rows(self._page_rows, (start, PAGE)):
            yield from self._decoded(rows)
            start = int(rows[-1][0]) + 1

    def _rows(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        with self._read() as cur:  # read whole: nothing is yielded while the reader is held
            cur.execute(statement, params)
            return list(cur.fetchall())

    def _decoded(self, rows: list[Any]) -> Iterator[tuple[int, int, str, Any]]:
        to_event = self.ledger.mapper.to_domain_event
        for position, timestamp, sid, version, topic, payload in rows:
            stored = Notification(
                id=int(position), originator_id=_uuid(sid), originator_version=int(version),
                topic=str(topic), state=bytes(payload),
            )  # fmt: skip
            yield int(position), int(timestamp), str(topic), to_event(stored)


def _last_at_most(lo: int, hi: int, value_of: Callable[[int], int], limit: int) -> int:
    """The last k in lo..hi with ``value_of(k) <= limit``, for ``value_of`` never decreasing
    and ``value_of(lo) <= limit``: a binary search, O(log(hi - lo)) calls."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if value_of(mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _uuid(value: UUID | str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise HistoryError(f"{value!r} is not a session id (a UUID)") from None
