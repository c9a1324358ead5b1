"""Issue 3 benchmarks: the session manager's ``tick``, its memory per idle session, and the
command → event → ledger rate of heartbeat-driven sessions.

* ``tick_cost``: one manager with N registered (established) sessions of which K are due;
  the median cost of a tick that fires the K. Target: cost(1M) / cost(1k) <= 1.5 for the same
  K, i.e. the cost depends on the due timers, not on the sessions registered.
* ``memory_per_idle_session``: tracemalloc around registering N established sessions.
  Target <= 2 KiB.
* ``heartbeat_ledger_rate``: events/s when heartbeats drive sessions through the manager onto
  a signed SessionLedger, against the rate of saving the same events straight to a ledger in
  the same run. Target >= 0.8x. Each round is one ``tick`` (every session sends a heartbeat;
  the manager saves all of them in one ``save``, one group commit) and then the peer's
  HeartbeatAck per session through ``receive`` (one ``save`` each). The direct side saves the
  same events *with the same grouping* — a round's heartbeats in one save, each ack alone —
  so that the ratio measures the manager's own work (deciding, deriving outputs, re-arming),
  not a difference in batching. As a contrast it also reports saving every event alone, as
  the manager did before ticks were grouped. Every contender runs in every repetition, on
  fresh ledger files, in rotating order; the target is judged on the median of the
  per-repetition ratios.

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


def _ledger(path: Path, identity: NodeIdentity, key: bytes) -> SessionLedger:
    return SessionLedger(path, identity=identity, storage_key=key)


def _established_copy() -> Session:
    s = Session.open(PEER, "initiator", SessionConfig(), T0)
    s.initiate_handshake(T0)
    s.receive_valid_response(T0 + 1_000, b"\x01" * 32)
    return s


def _decided(sessions: int, rounds: int) -> tuple[list[Any], list[tuple[list[Any], list[Any]]]]:
    """The events the manager records, decided up front: (every session's opening events,
    then per round (the heartbeats the tick sends, the acks the peer's answers cause))."""
    copies = [_established_copy() for _ in range(sessions)]
    opening = [e for s in copies for e in s.collect_events()]
    per_round = []
    now = T0
    for _ in range(rounds):
        now += 30 * SECOND + 1_000
        counters = [s.heartbeat_due(now) for s in copies]
        heartbeats = [e for s in copies for e in s.collect_events()]
        for s, counter in zip(copies, counters, strict=True):
            s.receive_heartbeat_ack(now + 1_000, counter)
        acks = [e for s in copies for e in s.collect_events()]
        per_round.append((heartbeats, acks))
    return opening, per_round


def _via_manager(ledger: SessionLedger, sessions: int, rounds: int) -> float:
    """Events/s: each round one tick (every session's heartbeat, one save for the tick),
    then the peer's HeartbeatAck per session through ``receive`` (one save each)."""
    manager = SessionManager("did:key:z6MkBenchNode", ledger, SessionConfig())
    live = [_add_established(manager, T0) for _ in range(sessions)]
    before = sum(s.version for s in live)
    gc.collect()
    start = time.perf_counter()
    now = T0
    for _ in range(rounds):
        now += 30 * SECOND + 1_000
        manager.tick(now)
        for s in live:
            manager.receive(PEER, _ack(s), now + 1_000)
    seconds = time.perf_counter() - start
    return (sum(s.version for s in live) - before) / seconds


def _direct(ledger: SessionLedger, sessions: int, rounds: int, grouped: bool) -> float:
    """Events/s saving the same events straight to the ledger: grouped as the manager
    groups them (a round's heartbeats in one save, each ack alone), or one per save."""
    opening, per_round = _decided(sessions, rounds)
    ledger.save(*opening)
    gc.collect()
    start = time.perf_counter()
    for heartbeats, acks in per_round:
        if grouped:
            ledger.save(*heartbeats)
        else:
            for e in heartbeats:
                ledger.save(e)
        for e in acks:
            ledger.save(e)
    seconds = time.perf_counter() - start
    return sum(len(h) + len(a) for h, a in per_round) / seconds


RATE_CONTENDERS = ("via_manager", "direct", "direct_per_event")


def heartbeat_ledger_rate(
    directory: Path, sessions: int, rounds: int, repetitions: int = 3
) -> dict[str, Any]:
    """Events/s of each contender, every contender in every repetition on fresh ledger
    files, in rotating order (the machine is shared and noisy). Returns per contender the
    list of rates, and per repetition the ratios manager/direct and manager/per-event."""
    identity, key = NodeIdentity.generate(), os.urandom(32)
    rates: dict[str, list[float]] = {name: [] for name in RATE_CONTENDERS}
    for rep in range(repetitions):
        order = RATE_CONTENDERS[rep % 3 :] + RATE_CONTENDERS[: rep % 3]
        for name in order:
            ledger = _ledger(directory / f"{name}-{rep}.sqlite3", identity, key)
            try:
                if name == "via_manager":
                    rates[name].append(_via_manager(ledger, sessions, rounds))
                else:
                    grouped = name == "direct"
                    rates[name].append(_direct(ledger, sessions, rounds, grouped))
            finally:
                ledger.close()
    return {
        "rates": rates,
        "ratio": [m / d for m, d in zip(rates["via_manager"], rates["direct"], strict=True)],
        "ratio_per_event": [
            m / d for m, d in zip(rates["via_manager"], rates["direct_per_event"], strict=True)
        ],
    }


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
        measured = heartbeat_ledger_rate(directory, 20 if quick else 200, 3 if quick else 10)
    rates = {name: median(values) for name, values in measured["rates"].items()}
    ratio = median(measured["ratio"])
    figures += [
        figure("heartbeat events via manager -> ledger", rates["via_manager"], "events/s"),
        figure("same events, same grouping, saved directly", rates["direct"], "events/s"),
        figure("manager / direct (median)", ratio, "x", target=">= 0.8", ok=ratio >= 0.8),
        figure("contrast: same events, one save each", rates["direct_per_event"], "events/s"),
        figure("contrast: manager / one save each", median(measured["ratio_per_event"]), "x"),
    ]
    return {"figures": figures, "heartbeat_ledger_rate": measured}
