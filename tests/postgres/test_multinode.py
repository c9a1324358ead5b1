"""Three node processes and a projection process share one PostgreSQL ledger through SIGKILLs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from l2_session.infrastructure.ledger.verify import ProblemKind, verify

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
FLEET = Path(__file__).resolve().parent / "fleet.py"


class Child:
    """A fleet.py process whose stdout lines are collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(FLEET), *args], stdout=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.strip())

    def acks(self) -> set[tuple[str, int]]:
        return {
            (parts[1], int(parts[2]))
            for parts in (line.split() for line in list(self.lines))
            if parts and parts[0] == "ACK"
        }

    def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            if self.proc.poll() is not None and not predicate():
                self._reader.join(timeout=5)
                if predicate():
                    return
                raise AssertionError(f"process exited ({self.proc.returncode}) before {what}")
            time.sleep(0.01)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=5)


def stored(location: PostgresLocation) -> set[tuple[str, int]]:
    with psycopg.connect(**location.connect_kwargs()) as conn:
        rows = conn.execute(
            f"SELECT session_id, version FROM {location.schema}.ledger_events"
        ).fetchall()
    return {(sid, version) for sid, version in rows}


def holds_append_lock(conn: psycopg.Connection[Any], application_name: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s",
        (application_name,),
    ).fetchone()
    return bool(row and row[0])


def test_three_nodes_and_a_projection_survive_sigkill(pg_location: PostgresLocation) -> None:
    ledger_url = pg_location.url()
    view = pg_location.with_schema(pg_location.schema + "_view")
    SessionLedger(ledger_url, identity=NodeIdentity.generate()).close()  # the owner creates it
    seeds = [os.urandom(32).hex() for _ in range(3)]

    projection = Child("project", ledger_url, view.url())
    nodes = [
        Child("node", f"{ledger_url}&application_name=fleet-node-{i}", seed, "150", "4")
        for i, seed in enumerate(seeds)
    ]
    victim = nodes[1]
    victim.wait_for(lambda: len(victim.acks()) >= 60, 60, "node 2 to acknowledge 60 appends")
    # Kill node 2 in the middle of a batch: while its transaction holds the append lock.
    with psycopg.connect(autocommit=True, **pg_location.connect_kwargs()) as watcher:
        victim.wait_for(lambda: holds_append_lock(watcher, "fleet-node-1"), 30,
                        "node 2 to be inside an append transaction")  # fmt: skip
        victim.kill()
    # Kill the projection in the middle of following, then restart it.
    projection.wait_for(lambda: any(line.startswith("LAG") for line in projection.lines), 60,
                        "the projection to apply a batch")  # fmt: skip
    projection.kill()
    projection = Child("project", ledger_url, view.url())
    restarted = Child("node", ledger_url, seeds[1], "40", "2")  # node 2 comes back, same key
    for node in (nodes[0], nodes[2], restarted):
        node.wait_for(lambda n=node: "DONE" in n.lines, 180, "a node to finish")
        assert node.proc.wait(timeout=30) == 0

    acknowledged = set().union(*(n.acks() for n in (*nodes, restarted)))
    in_ledger = stored(pg_location)
    assert acknowledged <= in_ledger, (
        f"acknowledged but missing: {sorted(acknowledged - in_ledger)[:5]}"
    )

    report = verify(ledger_url)
    assert report.ok, report.summary()
    assert ProblemKind.POSITION_GAP not in {p.kind for p in report.problems}
    assert report.events_checked == report.head_position == len(in_ledger)
    assert set(report.signers_seen) == {NodeIdentity.from_seed(bytes.fromhex(s)).did for s in seeds}

    # The restarted projection catches up, and every event was applied exactly once.
    def caught_up() -> bool:
        with psycopg.connect(**view.connect_kwargs()) as conn:
            row = conn.execute(
                f"SELECT position FROM {view.schema}.l2s_projection_tracking"
            ).fetchone()
        return row is not None and row[0] == report.head_position

    projection.wait_for(caught_up, 60, "the projection to reach the ledger head")
    with psycopg.connect(**view.connect_kwargs()) as conn:
        counts = dict(
            conn.execute(
                f"SELECT session_id, events FROM {view.schema}.session_event_counts"
            ).fetchall()
        )
    per_session: dict[str, int] = {}
    for sid, _ in in_ledger:
        per_session[sid] = per_session.get(sid, 0) + 1
    assert counts == per_session
    lags = [float(line.split()[2]) for line in projection.lines if line.startswith("LAG")]
    assert lags, "the projection reported no lag"
    projection.kill()
