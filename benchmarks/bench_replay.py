"""Replay of one session of 100,000 events: ``repository.get(id)`` with and without snapshots.

Issue 2 target: median <= 5 ms with snapshots (SessionLedger's default snapshot_interval, 100).

What is timed: one ``ledger.repository.get(session_id)`` call on a ledger opened read-only (no
identity). Nothing of the aggregate is cached between calls — SessionLedger configures no
aggregate cache — so every call reads the newest snapshot, checks its signature and its head
hash against the chain, decrypts it, and replays the events after it. SQLite's page cache and
the OS file cache are warm after the first call, which is reported apart ("first get").
Without snapshots: the same file opened with no storage key, so every event is replayed.
"""

from __future__ import annotations

import time
from typing import Any

from l2_session.infrastructure.ledger import SessionLedger

from .common import figure, median, timed, timed_call
from .datasets import BENCH_STORAGE_KEY, long_session_ledger

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
        without = []
        for _ in range(full_replays):
            seconds, aggregate = timed_call(lambda: plain.repository.get(session_id))
            without.append(seconds * 1000)
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
               note=f"{events / median(without) * 1000:,.0f} events/s"),
    ]  # fmt: skip
    return {
        "figures": figures,
        "params": {"events": events, "gets": gets, "full_replays": full_replays},
        "with_snapshots_ms": with_snapshots,
        "without_snapshots_ms": without,
        "snapshots_rejected": rejected,
    }
