"""Append throughput on PostgreSQL: the signed ledger versus plain eventsourcing, 1/2/4 writers.

Target: ledger >= 2.0x plain eventsourcing on PostgreSQL, saving the same events in the same
run, as on SQLite: group commit more than pays for the chain and the signatures.

A *writer* is a process (a node); in each, SAVE_THREADS threads save one session of 5 events
per save() — a node serving many sessions at once (bench_append's _from_threads). The
ledger nodes each have their own identity and share one ledger (one global chain); the plain
eventsourcing writers share one stored_events table. Timed: from the moment every writer is
ready (sessions built, connections open) to the last commit returning, across all writers.
Both run on the same server with its own durability settings (synchronous_commit is recorded).

    python -m benchmarks.bench_postgres [--quick]     (server: L2S_BENCH_POSTGRES_URL, default
                                                      postgresql://postgres@127.0.0.1:5432/postgres)
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import uuid
from typing import Any

import psycopg

from benchmarks.bench_append import SAVE_THREADS, _from_threads
from benchmarks.workload import EVENTS_PER_SESSION, sessions

WRITERS = (1, 2, 4)
TARGET_VS_PLAIN = 2.0
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _open(kind: str, url: str, *, create: bool = False) -> Any:
    from eventsourcing.application import Application
    from l2_session.infrastructure.identity import NodeIdentity
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.infrastructure.ledger.pg_url import PostgresLocation

    if kind == "ledger":
        return SessionLedger(url, identity=NodeIdentity.generate(), storage_key=os.urandom(32))
    pg = PostgresLocation.parse(url)
    with psycopg.connect(autocommit=True, **pg.connect_kwargs()) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {pg.schema}")
    return Application(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": pg.dbname,
            "POSTGRES_HOST": pg.host,
            "POSTGRES_PORT": str(pg.port),
            "POSTGRES_USER": pg.user,
            "POSTGRES_PASSWORD": pg.password,
            "POSTGRES_SCHEMA": pg.schema,
            "POSTGRES_POOL_SIZE": str(SAVE_THREADS),  # no thread waits for a connection
            "CREATE_TABLE": "y" if create else "n",  # writers racing on DDL would fail
        }
    )


def _writer(kind: str, url: str, count: int, seed: int, ready: Any, go: Any, out: Any) -> None:
    items = sessions(count, seed)
    app = _open(kind, url)
    app.save(*sessions(1, seed + 10_000))  # warm up: connections open, statements prepared
    ready.release()
    go.wait()
    start = time.time()
    _from_threads(app.save, items)
    end = time.time()
    batches = requests = 0
    if kind == "ledger":
        committer = app.ledger_recorder.committer
        batches, requests = committer.batches, committer.requests
    app.close()
    out.put((start, end, batches, requests))


def _project(url: str, view_url: str, ready: Any, stop: Any, out: Any) -> None:
    """A projection process following the ledger; reports (lag events, lag seconds) per batch."""
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.projections.runner import Lag, ProjectionRunner
    from l2_session.projections.session_counts import SessionEventCounts

    samples: list[tuple[int, float]] = []

    def record(lag: Lag) -> None:
        samples.append((lag.events, lag.seconds))

    ledger = SessionLedger(url, create=False)
    runner = ProjectionRunner(
        ledger, view_url, SessionEventCounts(), poll_interval=1.0, on_batch=record
    )
    follower = threading.Thread(target=runner.run_forever)
    follower.start()
    ready.release()
    stop.wait()
    runner.stop()
    follower.join()
    out.put((samples, runner.lag.position))
    runner.close()
    ledger.close()


def _run(
    kind: str, url: str, writers: int, count: int, seed: int, view_url: str | None = None
) -> dict[str, float]:
    _open(kind, url, create=True).close()  # schema and tables exist before writers start
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(kind, url, count, seed + i * 7919, ready, go, out))
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    follower, stop, lag_out = None, ctx.Event(), ctx.Queue()
    if view_url is not None:
        follower = ctx.Process(target=_project, args=(url, view_url, ready, stop, lag_out))
        follower.start()
    for _ in range(len(procs) + (follower is not None)):
        if not ready.acquire(timeout=120):
            raise RuntimeError(f"a {kind} writer or projection did not get ready within 120 s")
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a {kind} writer exited with {p.exitcode}")
    end = max(r[1] for r in results)
    seconds = end - min(r[0] for r in results)
    batches = sum(r[2] for r in results)
    outcome = {
        "events_per_second": writers * count * EVENTS_PER_SESSION / seconds,
        "sessions_per_transaction": sum(r[3] for r in results) / batches if batches else 1.0,
    }
    if follower is not None and view_url is not None:
        outcome.update(_catch_up(view_url, end, (writers * (count + 1)) * EVENTS_PER_SESSION))
        stop.set()
        samples, _ = lag_out.get(timeout=60)
        follower.join()
        lags = sorted(s for _, s in samples)
        behind = sorted(e for e, _ in samples)
        outcome.update(
            lag_seconds_median=lags[len(lags) // 2],
            lag_seconds_p95=lags[int(len(lags) * 0.95)],
            lag_events_median=behind[len(behind) // 2],
            lag_events_max=behind[-1],
        )
    return outcome


def _catch_up(view_url: str, end: float, head: int) -> dict[str, float]:
    """Seconds from the last append returning to the projection having applied it."""
    from l2_session.infrastructure.ledger.pg_url import PostgresLocation

    view = PostgresLocation.parse(view_url)
    with psycopg.connect(autocommit=True, **view.connect_kwargs()) as conn:
        while True:
            row = conn.execute(
                f"SELECT position FROM {view.schema}.l2s_projection_tracking WHERE name = %s",
                ("session_event_counts",),
            ).fetchone()
            if row is not None and row[0] >= head:
                return {"catch_up_seconds": max(0.0, time.time() - end)}
            if time.time() - end > 300:
                raise RuntimeError(f"the projection did not reach position {head} within 300 s")
            time.sleep(0.005)


def run(quick: bool) -> dict[str, Any]:
    from l2_session.infrastructure.ledger.pg_url import PostgresLocation

    from benchmarks.common import figure, median

    admin = PostgresLocation.parse(os.environ.get("L2S_BENCH_POSTGRES_URL", DEFAULT_URL))
    dbname = f"l2s_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
        synchronous_commit = conn.execute("SHOW synchronous_commit").fetchone()
    database = PostgresLocation(
        admin.host, admin.port, dbname, admin.user, admin.password, "public", admin.options
    )
    count = 300 if quick else 1000  # sessions per writer per run
    repeat = 1 if quick else 5
    figures: list[dict[str, Any]] = []
    rates: dict[str, list[float]] = {}
    try:
        for writers in WRITERS:
            for rep in range(repeat):
                # Alternate who goes first, so the server's warm-up and noise fall on both.
                order = ("ledger", "plain") if rep % 2 == 0 else ("plain", "ledger")
                for kind in order:
                    schema = f"{kind}_{writers}_{rep}"
                    url = database.with_schema(schema).url()
                    result = _run(kind, url, writers, count, seed=rep * 1000 + writers)
                    rates.setdefault(f"{kind} {writers}", []).append(result["events_per_second"])
                    if kind == "ledger":
                        spt = result["sessions_per_transaction"]
                        rates.setdefault(f"spt {writers}", []).append(spt)
            ledger = median(rates[f"ledger {writers}"])
            plain = median(rates[f"plain {writers}"])
            ratio = ledger / plain
            spt = median(rates[f"spt {writers}"])
            figures += [
                figure(f"ledger on PostgreSQL, {writers} writer(s)", ledger, "events/s",
                       note=f"{spt:.1f} sessions per transaction"),
                figure(f"plain eventsourcing on PostgreSQL, {writers} writer(s)", plain,
                       "events/s"),
                figure(f"  ledger / plain, {writers} writer(s)", ratio, "x",
                       target=f">= {TARGET_VS_PLAIN}", ok=ratio >= TARGET_VS_PLAIN),
            ]  # fmt: skip
        # Projection lag: a projection process follows the ledger while 2 nodes append.
        url = database.with_schema("lag_ledger").url()
        view = database.with_schema("lag_view").url()
        lag = _run("ledger", url, 2, count, seed=99, view_url=view)
        figures += [
            figure("projection lag while 2 writers append, median", lag["lag_seconds_median"],
                   "s", note=f"{lag['lag_events_median']} events behind"),
            figure("projection lag while 2 writers append, p95", lag["lag_seconds_p95"], "s",
                   note=f"at most {lag['lag_events_max']} events behind"),
            figure("projection caught up after the last append", lag["catch_up_seconds"], "s"),
        ]  # fmt: skip
        rates["projection lag"] = [lag["lag_seconds_median"], lag["lag_seconds_p95"]]
    finally:
        with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
    return {
        "figures": figures,
        "params": {
            "sessions_per_writer": count,
            "events_per_session": EVENTS_PER_SESSION,
            "save_threads_per_writer": SAVE_THREADS,
            "repetitions": repeat,
            "synchronous_commit": synchronous_commit[0] if synchronous_commit else None,
        },
        "rates": rates,
    }


if __name__ == "__main__":
    outcome = run(quick="--quick" in sys.argv)
    for f in outcome["figures"]:
        target = f" (target {f['target']}: {'met' if f['ok'] else 'MISSED'})" if f["target"] else ""
        note = f"  [{f['note']}]" if f["note"] else ""
        print(f"{f['name']:<52} {f['value']:>12,.1f} {f['unit']}{target}{note}")
    print(outcome["params"])
