"""Issue 3 benchmarks: the session manager's ``tick``, its memory per idle session, and the
command → event → ledger rate of heartbeat-driven sessions.

* ``tick_cost``: one manager with N registered (established) sessions of which K are due;
  the median cost of a tick that fires the K. Target: cost(1M) / cost(1k) <= 1.5 for the same
  K, i.e. the cost depends on the due timers, not on the sessions registered.
* ``memory_per_idle_session``: tracemalloc around registering N established sessions.
  Target <= 2 KiB.
* ``heartbeat_ledger_rate``: events/s when heartbeats drive sessions through the manager onto
  a signed SessionLedger, against the rate of saving the same events straight to a ledger in
  the same run. Target >= 0.8x.

The tick and memory figures use a ledger that only collects events, so that they measure the
manager; the rate figure uses the real ledger. Each function is usable on its own.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from l2_session.domain.commands import HandshakeResponse
from l2_session.domain.config import SessionConfig
from l2_session.domain.manager import SessionManager
from l2_session.domain.session import Session
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger

from .common import figure, median, scratch_dir

T0 = 1_767_225_600_000_000
SECOND = 1_000_000
PEER = "did:key:z6MkBenchPeer"


class CollectingLedger:
    """Stands in for the ledger where only the manager is measured: it takes the events."""

    class repository:
        @staticmethod
        def get(aggregate_id: Any) -> Any:
            raise AggregateNotFoundError(aggregate_id)

    def save(self, *aggregates: Any, **kwargs: Any) -> None:
        for aggregate in aggregates:
            aggregate.collect_events()


def _add_established(manager: SessionManager, now_us: int) -> Session:
    sid, _ = manager.establish(PEER, now_us)
    session = manager.session(sid)
    conversation = session.conversation
    manager.receive(PEER, HandshakeResponse(conversation, b"\x01" * 32), now_us + 1_000)
    return session


def registered(total: int, due: int) -> SessionManager:
    """A manager whose first ``due`` sessions have their heartbeat due at T0 + 30 s; the
    others were established 1000 s later and are idle for the whole measurement."""
    manager = SessionManager("did:key:z6MkBenchNode", CollectingLedger(), SessionConfig())
    for n in range(total):
        _add_established(manager, T0 if n < due else T0 + 1000 * SECOND)
    return manager


def tick_cost(total: int, due: int) -> float:
    """Median seconds of a tick that fires ``due`` timers among ``total`` sessions.
    Six ticks: heartbeat sent, response missed, three times (then the sessions degrade)."""
    manager = registered(total, due)
    costs = []
    for at in (30, 32.001, 62.001, 64.002, 94.002, 96.003) if due else (1, 2, 3, 4, 5, 6):
        now = T0 + round(at * SECOND)
        gc.collect()
        start = time.perf_counter()
        manager.tick(now)
        costs.append(time.perf_counter() - start)
    del manager
    gc.collect()
    return median(costs)


def memory_per_idle_session(count: int) -> float:
    """Bytes that ``count`` more idle established sessions add to a manager, per session."""
    manager = SessionManager("did:key:z6MkBenchNode", CollectingLedger(), SessionConfig())
    for _ in range(100):  # warm up: shared config, peer, first heap growth
        _add_established(manager, T0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(count):
        _add_established(manager, T0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / count


def heartbeat_ledger_rate(directory: Path, sessions: int, rounds: int) -> dict[str, float]:
    """(events/s via the manager, events/s saving the same kind of events directly)."""
    identity, key = NodeIdentity.generate(), os.urandom(32)

    def ledger(name: str) -> SessionLedger:
        return SessionLedger(directory / name, identity=identity, storage_key=key)

    via = ledger("manager.sqlite3")
    manager = SessionManager("did:key:z6MkBenchNode", via, SessionConfig())
    live = [_add_established(manager, T0) for _ in range(sessions)]
    before = sum(s.version for s in live)
    start = time.perf_counter()
    now = T0
    for _ in range(rounds):
        now += 30 * SECOND + 1_000
        manager.tick(now)  # every session sends a heartbeat: one event, one save each
        for s in live:  # ... and the peer answers: one event, one save each
            manager.receive(PEER, _ack(s), now + 1_000)
    via_seconds = time.perf_counter() - start
    events = sum(s.version for s in live) - before

    direct = ledger("direct.sqlite3")
    copies = []
    for _ in range(sessions):
        s = Session.open(PEER, "initiator", SessionConfig(), T0)
        s.initiate_handshake(T0)
        s.receive_valid_response(T0 + 1_000, b"\x01" * 32)
        direct.save(s)
        copies.append(s)
    pending = []
    now = T0
    for _ in range(rounds):  # the same events, decided before the clock starts
        now += 30 * SECOND + 1_000
        for s in copies:
            s.receive_heartbeat_ack(now + 1_000, s.heartbeat_due(now))
            pending.append((s, s.collect_events()))
    start = time.perf_counter()
    for _, batch in pending:
        for e in batch:
            direct.save(e)
    direct_seconds = time.perf_counter() - start
    via.close()
    direct.close()
    return {"via_manager": events / via_seconds, "direct": len(pending) * 2 / direct_seconds}


def _ack(session: Session) -> Any:
    from l2_session.domain.commands import HeartbeatAck

    return HeartbeatAck(session.conversation, session.heartbeat_counter)


def run(quick: bool) -> dict[str, Any]:
    # Missed heartbeats are logged as warnings (SPEC-018 §2.2); thousands of them per tick
    # would measure the terminal, not the manager.
    logging.getLogger("l2_session.session").setLevel(logging.ERROR)
    small, large = (1_000, 20_000) if quick else (1_000, 1_000_000)
    dues = (0, 100, 1_000) if quick else (0, 100, 10_000)
    figures = []
    for due in dues:
        if due > small:
            continue
        a, b = tick_cost(small, due), tick_cost(large, due)
        ratio = b / a
        figures.append(figure(f"tick, {due} due, {small} sessions", a * 1e3, "ms"))
        figures.append(figure(f"tick, {due} due, {large} sessions", b * 1e3, "ms"))
        figures.append(
            figure(
                f"tick ratio {large}/{small}, {due} due",
                ratio,
                "x",
                target="<= 1.5",
                ok=ratio <= 1.5,
            )
        )
    per_session = memory_per_idle_session(10_000 if quick else 100_000)
    figures.append(
        figure(
            "memory per idle established session",
            per_session,
            "bytes",
            target="<= 2048",
            ok=per_session <= 2048,
        )
    )
    with scratch_dir("tick-") as directory:
        rates = heartbeat_ledger_rate(directory, 20 if quick else 200, 3 if quick else 10)
    ratio = rates["via_manager"] / rates["direct"]
    figures += [
        figure("heartbeat events via manager -> ledger", rates["via_manager"], "events/s"),
        figure("same events saved directly", rates["direct"], "events/s"),
        figure("manager / direct", ratio, "x", target=">= 0.8", ok=ratio >= 0.8),
    ]
    return {"figures": figures}
