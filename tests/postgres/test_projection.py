"""The projection runner: woken by NOTIFY, saved by polling when a notification is lost."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from l2_session.projections.runner import Lag, ProjectionRunner
from l2_session.projections.session_counts import SessionEventCounts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import Tick

pytestmark = pytest.mark.postgres


def _follow(runner: ProjectionRunner) -> threading.Thread:
    thread = threading.Thread(target=runner.run_forever, daemon=True)
    thread.start()
    return thread


def _applied_within(runner: ProjectionRunner, position: int, seconds: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if runner.lag.position >= position:
            return time.monotonic() - start
        time.sleep(0.01)
    return None


@pytest.fixture
def writer(pg_location: PostgresLocation) -> Any:
    ledger = SessionLedger(pg_location.url(), identity=NodeIdentity.generate())
    yield ledger
    ledger.close()


def test_a_notification_wakes_the_projection_long_before_its_poll(
    writer: SessionLedger, pg_location: PostgresLocation
) -> None:
    reader = SessionLedger(pg_location.url(), create=False)
    view = pg_location.with_schema(pg_location.schema + "_view")
    runner = ProjectionRunner(reader, view, SessionEventCounts(), poll_interval=30.0)
    thread = _follow(runner)
    time.sleep(0.3)  # the runner is now waiting on LISTEN, its next poll 30 s away
    tick = Tick("n")
    tick.tick("x")
    writer.save(tick)
    took = _applied_within(runner, 2, 10.0)
    runner.stop()
    thread.join(timeout=35)
    assert took is not None and took < 5.0, f"not woken by NOTIFY (took {took})"
    runner.close()
    reader.close()


def test_a_lost_notification_delays_the_projection_by_one_poll_at_most(
    writer: SessionLedger, pg_location: PostgresLocation
) -> None:
    reader = SessionLedger(pg_location.url(), create=False)
    reader.recorder.channel_name = "nobody_notifies_this"  # type: ignore[attr-defined]
    view = pg_location.with_schema(pg_location.schema + "_view")
    lags: list[Lag] = []
    runner = ProjectionRunner(
        reader, view, SessionEventCounts(), poll_interval=0.5, on_batch=lags.append
    )
    thread = _follow(runner)
    time.sleep(0.3)
    for _ in range(3):
        writer.save(Tick("n"))
    took = _applied_within(runner, 3, 10.0)
    runner.stop()
    thread.join(timeout=5)
    assert took is not None and took < 2.0, f"polling did not catch up (took {took})"
    # Lag is measured from the append (ledger timestamp): a poll or so here, not minutes.
    assert lags and lags[-1].events == 0 and 0 <= lags[-1].seconds < 5
    with psycopg.connect(**view.connect_kwargs()) as conn:
        assert conn.execute(
            f"SELECT sum(events) FROM {view.schema}.session_event_counts"
        ).fetchone() == (3,)
    runner.close()
    reader.close()


def test_eventsourcings_own_subscription_follows_the_signed_ledger(
    writer: SessionLedger, pg_location: PostgresLocation
) -> None:
    # PostgresApplicationRecorder.subscribe(): LISTEN on the ledger's channel, select by position.
    reader = SessionLedger(pg_location.url(), create=False)
    ticks = [Tick("n") for _ in range(3)]
    writer.save(ticks[0])
    seen: list[tuple[int, Any]] = []
    with reader.recorder.subscribe(gt=0) as subscription:
        writer.save(ticks[1], ticks[2])
        for notification in subscription:
            seen.append((notification.id, notification.originator_id))
            if len(seen) == 3:
                break
    assert seen == [(i + 1, t.id) for i, t in enumerate(ticks)]
    reader.close()


def test_two_runners_of_one_projection_apply_each_event_once(
    writer: SessionLedger, pg_location: PostgresLocation
) -> None:
    # A spare runner is safe: both take the tracking row FOR UPDATE before reading the ledger.
    view = pg_location.with_schema(pg_location.schema + "_view")
    readers = [SessionLedger(pg_location.url(), create=False) for _ in range(2)]
    runners = [
        ProjectionRunner(r, view, SessionEventCounts(), batch_size=7, poll_interval=0.05)
        for r in readers
    ]
    threads = [_follow(runner) for runner in runners]
    ticks = []
    for i in range(30):
        tick = Tick("n")
        for _ in range(i % 4):
            tick.tick("x")
        writer.save(tick)
        ticks.append(tick)
    head = sum(t.version for t in ticks)
    deadline = time.monotonic() + 20
    while max(r.lag.position for r in runners) < head and time.monotonic() < deadline:
        time.sleep(0.02)
    for runner in runners:
        runner.stop()
    for thread in threads:
        thread.join(timeout=5)
    with psycopg.connect(**view.connect_kwargs()) as conn:
        counts = dict(
            conn.execute(f"SELECT session_id, events FROM {view.schema}.session_event_counts")
        )
    assert counts == {t.id.hex: t.version for t in ticks}
    for runner, reader in zip(runners, readers, strict=True):
        runner.close()
        reader.close()


def test_a_hole_in_the_ledger_stops_the_projection_with_the_positions(
    writer: SessionLedger, pg_location: PostgresLocation
) -> None:
    from l2_session.infrastructure.ledger import LedgerCorrupted

    for _ in range(4):
        writer.save(Tick("n"))
    with psycopg.connect(autocommit=True, **pg_location.connect_kwargs()) as conn:
        conn.execute(f"ALTER TABLE {pg_location.schema}.ledger_events DISABLE TRIGGER USER")
        conn.execute(f"DELETE FROM {pg_location.schema}.ledger_events WHERE position = 3")
    reader = SessionLedger(pg_location.url(), create=False)
    view = pg_location.with_schema(pg_location.schema + "_view")
    runner = ProjectionRunner(reader, view, SessionEventCounts())
    with pytest.raises(LedgerCorrupted, match="ledger position 4 follows 2"):
        runner.run_once()
    assert runner.position() == 0  # nothing of the batch was applied
    runner.close()
    reader.close()
