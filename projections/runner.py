"""A projection runner: follows the ledger and keeps a read model in PostgreSQL, exactly once.

A *projection* is a name, the DDL of its read model, and a function applying one ledger event to
the read model inside a database transaction. The runner keeps, beside the read model, one
tracking row per projection (the last ledger position applied) and advances it in the same
transaction as the read-model changes; so a runner killed at any moment restarts where the last
committed batch ended — every event applied once, none skipped. Two runners of one projection
serialise on the tracking row (SELECT ... FOR UPDATE), so running a spare is safe.

New events are noticed by LISTEN on the ledger's NOTIFY channel (PostgreSQL ledgers), and the
runner polls every ``poll_interval`` seconds anyway: a lost notification or a dropped LISTEN
connection delays a projection by at most that long, never stalls it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from l2_session.infrastructure.ledger import LedgerCorrupted, SessionLedger
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from psycopg.sql import SQL, Identifier

TRACKING_TABLE = "l2s_projection_tracking"


class Projection(Protocol):
    """What a projection provides. ``apply`` runs inside the runner's view transaction."""

    name: str

    def create_statements(self, schema: str) -> list[str]: ...

    def apply(self, cur: Any, schema: str, event: Any, position: int) -> None: ...


@dataclass
class Lag:
    """How far the read model trails the ledger, measured after each batch."""

    position: int = 0  # last ledger position applied
    head: int = 0  # ledger head seen at the same moment
    seconds: float = 0.0  # age of the newest applied event when its batch committed

    @property
    def events(self) -> int:
        return max(0, self.head - self.position)


class ProjectionRunner:
    def __init__(
        self,
        ledger: SessionLedger,
        view: PostgresLocation | str,
        projection: Projection,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        on_batch: Callable[[Lag], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.view = view if isinstance(view, PostgresLocation) else PostgresLocation.parse(view)
        self.projection = projection
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.on_batch = on_batch
        self.lag = Lag()
        self.stopped = threading.Event()
        self._conn = self.view.connect(autocommit=False)
        self._create()

    def _create(self) -> None:
        schema = self.view.schema
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {schema}.{TRACKING_TABLE} "
                "(name text PRIMARY KEY, position bigint NOT NULL)"
            )
            for statement in self.projection.create_statements(schema):
                cur.execute(statement)
            cur.execute(
                f"INSERT INTO {schema}.{TRACKING_TABLE} (name, position) VALUES (%s, 0) "
                "ON CONFLICT (name) DO NOTHING",
                (self.projection.name,),
            )

    def position(self) -> int:
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute(
                f"SELECT position FROM {self.view.schema}.{TRACKING_TABLE} WHERE name=%s",
                (self.projection.name,),
            )
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def run_once(self) -> int:
        """Apply the next batch of ledger events, if any; returns how many were applied."""
        schema, name = self.view.schema, self.projection.name
        recorder = self.ledger.recorder
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute(
                f"SELECT position FROM {schema}.{TRACKING_TABLE} WHERE name=%s FOR UPDATE",
                (name,),
            )
            row = cur.fetchone()
            position = int(row[0]) if row else 0
            notifications = recorder.select_notifications(
                position, self.batch_size, inclusive_of_start=False
            )
            newest = None
            for n in notifications:
                if n.id != position + 1:
                    # Positions are dense and commit in order (pg_recorder.py): a hole here
                    # means the ledger was tampered with, and applying past it would be wrong.
                    raise LedgerCorrupted(
                        f"projection {name}: ledger position {n.id} follows {position}; "
                        "expected no gap — run verify on the ledger"
                    )
                newest = self.ledger.mapper.to_domain_event(n)
                self.projection.apply(cur, schema, newest, n.id)
                position = n.id
            if notifications:
                cur.execute(
                    f"UPDATE {schema}.{TRACKING_TABLE} SET position=%s WHERE name=%s",
                    (position, name),
                )
        head = recorder.max_notification_id() or 0
        self.lag = Lag(position, head, self._age(position, newest) if notifications else 0.0)
        if self.on_batch is not None and notifications:
            self.on_batch(self.lag)
        return len(notifications)

    def _age(self, position: int, newest: Any) -> float:
        """Seconds since the newest applied event was appended to the ledger (its ledger
        timestamp when the recorder can tell, else the event's own creation time)."""
        timestamp_at = getattr(self.ledger.recorder, "timestamp_at", None)
        appended: int | None = timestamp_at(position) if timestamp_at is not None else None
        if appended is not None:
            return max(0.0, time.time() - appended / 1_000_000)
        created = getattr(newest, "timestamp", None)
        return max(0.0, time.time() - float(created.timestamp())) if created is not None else 0.0

    def run_forever(self) -> None:
        """Follow the ledger until ``stop()``: batches while behind, then wait for NOTIFY."""
        listener = self._listen()
        try:
            while not self.stopped.is_set():
                if self.run_once() >= self.batch_size:
                    continue  # still behind: no waiting
                self._wait(listener)
        finally:
            if listener is not None:
                listener.close()

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        self.stop()
        self._conn.close()

    def _listen(self) -> Any:
        channel = getattr(self.ledger.recorder, "channel_name", None)
        pg = getattr(self.ledger, "pg", None)
        if channel is None or pg is None:
            return None  # a SQLite ledger: polling only
        conn = pg.connect(autocommit=True)
        conn.execute(SQL("LISTEN {0}").format(Identifier(channel)))
        return conn

    def _wait(self, listener: Any) -> None:
        if listener is None:
            self.stopped.wait(self.poll_interval)
            return
        # Wait in short slices so that stop() is noticed promptly even with a long poll.
        deadline = time.monotonic() + self.poll_interval
        try:
            while not self.stopped.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                for _ in listener.notifies(timeout=min(remaining, 0.25), stop_after=1):
                    return
        except Exception:  # a dropped LISTEN connection: carry on by polling
            self.stopped.wait(self.poll_interval)
