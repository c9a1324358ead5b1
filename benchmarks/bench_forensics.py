"""What auditors and investigators run: the export, the bundle's verification, time travel, and
the operators' read model (docs/forensic-export.md, docs/cli.md).

Targets, each beside its baseline in the same run:
- bundle verification (tools/verify_bundle.py, one process per core) >= 0.9 x the events per
  second of verify() on the ledger itself, for a whole export of 1,000,000 events;
- ``audit replay`` of one session at any point <= 10 ms p99: ``LedgerHistory.state_at`` of the
  replay suite's long session (100,000 events, snapshots every 20) at random positions, with
  the storage key (a node's view; an auditor without it replays from the start);
- the read model's catch-up from zero >= 50,000 events/s, on a ledger of real sessions
  (``Session`` aggregates driven through their commands: opened, handshake, established, a
  message, closed).

Reported: export throughput (events/s, a whole export: events, signers and checkpoint; its
leaves are its tree, so it carries no proofs).
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
from pathlib import Path
from typing import Any

from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.session import Session
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.export import export_bundle
from l2_session.infrastructure.ledger.verify import verify
from l2_session.projections.history import LedgerHistory
from l2_session.projections.session_view import SessionView
from l2_session.tools.verify_bundle import verify_bundle

from benchmarks.common import WORK_DIR, figure, scratch_dir, timed_call
from benchmarks.datasets import BENCH_STORAGE_KEY, long_session_ledger, many_sessions_ledger

TARGET_BUNDLE = 0.9
TARGET_REPLAY_MS = 10.0
TARGET_CATCH_UP = 50_000
SECOND = 1_000_000


def real_sessions_ledger(events: int) -> Path:
    """A ledger of ``events`` events of real sessions, five each (built once, cached)."""
    path = WORK_DIR / f"sessions-real-{events}.sqlite3"
    if path.exists():
        return path
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{building}{suffix}").unlink(missing_ok=True)
    clock = ManualClock()
    ledger = SessionLedger(
        building, identity=NodeIdentity.generate(),
        storage_key=BENCH_STORAGE_KEY, clock=clock, durability="off",
    )  # fmt: skip
    try:
        config, now = SessionConfig(), clock.wall_us()
        for start in range(0, events // 5, 400):
            batch = [Session.open(f"did:key:z6MkBench{i}", "initiator", config, now)
                     for i in range(start, min(start + 400, events // 5))]  # fmt: skip
            for s in batch:
                s.initiate_handshake(now)
                s.receive_valid_response(now + 1000, key_material=os.urandom(32), prekeys="p")
                s.submit_message(now + 2000, b"hello")
                s.close(now + 3000)
            now += 10_000
            clock.set_wall_us(now)
            ledger.save(*batch)
    finally:
        ledger.close()
    building.replace(path)
    for suffix in ("-wal", "-shm"):
        Path(f"{building}{suffix}").unlink(missing_ok=True)
    return path


def bundle_against_verify(events: int) -> dict[str, Any]:
    """Export every event of a copy of the verify suite's ledger (with a checkpoint signed
    for it), verify the bundle, and verify the ledger, in one run."""
    with scratch_dir("forensics-") as work:
        copy = work / "ledger.sqlite3"
        shutil.copy(many_sessions_ledger(events), copy)
        signer = SessionLedger(copy, identity=NodeIdentity.generate(),
                               storage_key=BENCH_STORAGE_KEY)  # fmt: skip
        signer.checkpoint()
        signer.close()
        export_s, done = timed_call(lambda: export_bundle(copy, work / "bundle"))
        bundle_s, report = timed_call(lambda: verify_bundle(work / "bundle"))
        if not report.ok or report.events != done.events:
            raise AssertionError(f"the bundle does not verify: {report.problems[:3]}")
        verify_s, checked = timed_call(lambda: verify(copy))
        if not checked.ok:
            raise AssertionError("the ledger does not verify")
    return {
        "events": done.events,
        "export_s": export_s,
        "bundle_s": bundle_s,
        "verify_s": verify_s,
        "ratio": verify_s / bundle_s,  # (events / bundle_s) / (events / verify_s)
    }


def replay_latency(events: int, samples: int) -> dict[str, Any]:
    path, session_id = long_session_ledger(events)
    ledger = SessionLedger(path, storage_key=BENCH_STORAGE_KEY)
    try:
        history = LedgerHistory(ledger)
        rng = random.Random(3)
        history.state_at(session_id, events)  # warm the file cache
        times = []
        for _ in range(samples):
            at = rng.randint(1, events)
            seconds, state = timed_call(lambda at=at: history.state_at(session_id, at))
            if state.position != at:
                raise AssertionError(f"replayed to {state.position}, asked {at}")
            times.append(seconds * 1000)
    finally:
        ledger.close()
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))]}


def catch_up_rate(events: int) -> dict[str, Any]:
    path = real_sessions_ledger(events)
    ledger = SessionLedger(path, create=False)
    try:
        with scratch_dir("view-") as work:
            view = SessionView(work / "view.sqlite3")
            seconds, applied = timed_call(lambda: view.catch_up(ledger))
            states = view.state_counts()
    finally:
        ledger.close()
    if applied != events or states != {"closed": events // 5}:
        raise AssertionError(f"catch-up applied {applied}, states {states}")
    return {"events": applied, "seconds": seconds, "rate": applied / seconds}


def run(quick: bool) -> dict[str, Any]:
    events = 50_000 if quick else 1_000_000
    bundle = bundle_against_verify(events)
    replay = replay_latency(10_000 if quick else 100_000, 50 if quick else 300)
    catch_up = catch_up_rate(events)
    figures = [
        figure(
            f"bundle verification / verify(), {bundle['events']:,} events", bundle["ratio"], "x",
            target=f">= {TARGET_BUNDLE}", ok=bundle["ratio"] >= TARGET_BUNDLE,
            note=f"{bundle['events'] / bundle['bundle_s']:,.0f} vs "
            f"{bundle['events'] / bundle['verify_s']:,.0f} events/s",
        ),
        figure(
            "export, whole ledger", bundle["events"] / bundle["export_s"],
            "events/s", note=f"{bundle['export_s']:.1f} s",
        ),
        figure(
            "audit replay of one session at a random position, p99", replay["p99_ms"], "ms",
            target=f"<= {TARGET_REPLAY_MS}", ok=replay["p99_ms"] <= TARGET_REPLAY_MS,
            note=f"p50 {replay['p50_ms']:.2f} ms",
        ),
        figure(
            f"read model catch-up from zero, {catch_up['events']:,} events", catch_up["rate"],
            "events/s", target=f">= {TARGET_CATCH_UP:,}", ok=catch_up["rate"] >= TARGET_CATCH_UP,
            note=f"{catch_up['seconds']:.1f} s",
        ),
    ]  # fmt: skip
    return {
        "figures": figures,
        "params": {"events": events, "quick": quick},
        "bundle": bundle,
        "replay": replay,
        "catch_up": catch_up,
    }
