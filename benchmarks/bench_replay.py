"""Replay of one session of 100,000 events: ``repository.get(id)`` with and without snapshots.

Target: median <= 5 ms with snapshots (SessionLedger's default snapshot_interval, 20), so that
restoring a session before it resumes costs little however long the session has run.

What is timed: one ``ledger.repository.get(session_id)`` call on a ledger opened read-only (no
identity). Nothing of the aggregate is cached between calls — SessionLedger configures no
aggregate cache — so every call reads the newest snapshot, checks its signature and its head
hash against the chain, decrypts it, and replays the events after it. SQLite's page cache and
the OS file cache are warm after the first call, which is reported apart ("first get").
Without snapshots: the same file opened with no storage key, so every event is replayed —
by the ledger's ``replay_events`` (the default) and, for comparison, by eventsourcing's
``project_aggregate`` (a runtime-protocol ``isinstance`` per event); the difference per event
is what the ledger's projector saves on each event of a snapshot's tail.
"""

from __future__ import annotations

import time
from typing import Any

from eventsourcing.application import project_aggregate
from l2_session.infrastructure.ledger import SessionLedger

from benchmarks.common import figure, median, timed, timed_call
from benchmarks.datasets import BENCH_STORAGE_KEY, long_session_ledger

TARGET_MS = 5.0


def run(quick: bool) -> dict[str, Any]:
    events = 10_000 if quick else 100_000
    gets = 20 if quick else 100
    full_replays = 1 if quick else 3
    path, session_id = long_session_ledger(events)

    ledger = SessionLedger(path, storage_key=BENCH_STORAGE_KEY)
    try:
        start = time.perf_counter()
        first = ledger.repository.get(session_id)
        first_ms = (time.perf_counter() - start) * 1000
        if first.version != events:
            raise AssertionError(f"replayed version {first.version}, expected {events}")
        with_snapshots = [
            timed(lambda: ledger.repository.get(session_id)) * 1000 for _ in range(gets)
        ]
        # Each get() must have used a snapshot, not silently fallen back to a full replay.
        rejected = getattr(getattr(ledger.snapshots, "recorder", None), "rejected", None)
    finally:
        ledger.close()

    plain = SessionLedger(path)  # no storage key: no snapshot store, every event replayed
    try:
        without, eventsourcing_projector = [], []
        for _ in range(full_replays):  # alternating, so both see the same machine
            for kwargs, into in (
                ({}, without),
                ({"projector_func": project_aggregate}, eventsourcing_projector),
            ):
                seconds, aggregate = timed_call(
                    lambda k=kwargs: plain.repository.get(session_id, **k)
                )
                into.append(seconds * 1000)
                if aggregate.version != events:
                    raise AssertionError(f"replayed version {aggregate.version}, expected {events}")
    finally:
        plain.close()

    ms = median(with_snapshots)
    figures = [
        figure(f"get(), {events:,}-event session, snapshots", ms, "ms",
               target=f"<= {TARGET_MS}", ok=ms <= TARGET_MS,
               note=f"p90 {sorted(with_snapshots)[int(gets * 0.9) - 1]:.2f} ms"),
        figure("  first get() after opening the ledger", first_ms, "ms"),
        figure(f"get(), {events:,}-event session, no snapshots", median(without), "ms",
               note=f"{events / median(without) * 1000:,.0f} events/s, "
                    f"{median(without) * 1000 / events:.1f} us/event"),
        figure("  same, eventsourcing's project_aggregate", median(eventsourcing_projector), "ms",
               note=f"{median(eventsourcing_projector) * 1000 / events:.1f} us/event"),
    ]  # fmt: skip
    return {
        "figures": figures,
        "params": {"events": events, "gets": gets, "full_replays": full_replays},
        "with_snapshots_ms": with_snapshots,
        "without_snapshots_ms": without,
        "without_snapshots_project_aggregate_ms": eventsourcing_projector,
        "snapshots_rejected": rejected,
    }
