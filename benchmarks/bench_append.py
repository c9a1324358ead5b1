"""Append throughput: the signed ledger versus plain eventsourcing (a) and a hand-written floor (b).

Targets, on the same events (workload.py): ledger >= 2.0x (a), so that group commit more than
pays for a chain link and a signature per event; ledger >= 0.8x (b), so that what the ledger adds
to chaining, signing and inserting costs at most a quarter of them.

What is timed, for every contender: from the first save/insert to the last commit returning.
Sessions with their 5 pending events are built before the clock starts (for the ledger and for
(a) alike); the floor's payload bytes are mapped before the clock starts too, since the floor is
by definition what remains when everything but chain, signature and insert is taken away.
Each contender writes to a fresh SQLite file in WAL mode with synchronous=FULL (checked on the
connection and recorded), so each returned commit is on disk. Every repetition runs all
contenders, in a rotating order, so that the shared machine's noise falls on all of them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.application import Application
from eventsourcing.sqlite import SQLiteDatastore
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.codec import FieldSealer, LedgerMapper
from l2_session.infrastructure.ledger.format import ZERO_HASH, event_hash, genesis_hash, lp
from l2_session.infrastructure.ledger.schema import CREATE_STATEMENTS, EVENT_COLUMNS, EVENTS_TABLE

from benchmarks.common import figure, median, rate_per_second, scratch_dir, timed
from benchmarks.workload import EVENTS_PER_SESSION, BenchSession, chunks, sessions

SAVE_THREADS = 16  # concurrent callers of save(): a node serving many sessions at once
BATCH_SESSIONS = 200  # sessions per save(*batch), i.e. 1000 events per transaction
TARGET_VS_PLAIN = 2.0
TARGET_VS_FLOOR = 0.8

_INSERT = (
    f"INSERT INTO {EVENTS_TABLE} ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
)


def _synchronous(datastore: SQLiteDatastore) -> str:
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    with datastore.get_connection(commit=False) as connection:
        value = connection._sqlite_conn.execute("PRAGMA synchronous").fetchone()[0]
    return names[value]


def _from_threads(save: Callable[[BenchSession], object], items: list[BenchSession]) -> None:
    """Each of SAVE_THREADS threads saves one session at a time until none are left."""
    pending = iter(items)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while True:
                with lock:
                    item = next(pending, None)
                if item is None:
                    return
                save(item)
        except BaseException as error:  # reported after join: a failed run must not pass
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(SAVE_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# -- contenders: each gets a fresh file and fresh sessions, returns (seconds, details) --------
Run = Callable[[Path, int, int], tuple[float, dict[str, Any]]]


def _open_ledger(path: Path) -> SessionLedger:
    return SessionLedger(path, identity=NodeIdentity.generate(), storage_key=os.urandom(32))


def ledger_threads(path: Path, count: int, seed: int) -> tuple[float, dict[str, Any]]:
    ledger = _open_ledger(path)
    try:
        items = sessions(count, seed)
        committer = ledger.ledger_recorder.committer
        seconds = timed(lambda: _from_threads(ledger.save, items))
        details = {
            "synchronous": _synchronous(ledger.datastore),
            "sessions_per_transaction": round(committer.requests / max(committer.batches, 1), 1),
        }
    finally:
        ledger.close()
    return seconds, details


def ledger_batches(path: Path, count: int, seed: int) -> tuple[float, dict[str, Any]]:
    ledger = _open_ledger(path)
    try:
        batches = list(chunks(sessions(count, seed), BATCH_SESSIONS))

        def save_all() -> None:
            for batch in batches:
                ledger.save(*batch)

        seconds = timed(save_all)
        details = {"synchronous": _synchronous(ledger.datastore)}
    finally:
        ledger.close()
    return seconds, details


def ledger_serial(path: Path, count: int, seed: int) -> tuple[float, dict[str, Any]]:
    """One thread, one save per session: (a)'s conditions, so group commit cannot help. Each
    save's latency is kept too: its tail is where a commit that checkpoints the WAL shows."""
    ledger = _open_ledger(path)
    latencies: list[float] = []

    def save_each(items: list[BenchSession]) -> None:
        clock = time.perf_counter
        for item in items:
            start = clock()
            ledger.save(item)
            latencies.append(clock() - start)

    try:
        items = sessions(count, seed)
        seconds = timed(lambda: save_each(items))
        ordered = sorted(latencies)
        details = {
            "synchronous": _synchronous(ledger.datastore),
            "latency_ms": {
                name: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3
                for name, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0))
            },
        }
    finally:
        ledger.close()
    return seconds, details


def plain_eventsourcing(path: Path, count: int, seed: int) -> tuple[float, dict[str, Any]]:
    """(a): eventsourcing's own SQLite persistence, its defaults, one save per session."""
    app: Application[UUID] = Application(
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    )
    try:
        items = sessions(count, seed)
        seconds = timed(lambda: [app.save(s) for s in items])
        datastore = app.factory.datastore  # type: ignore[attr-defined]
        details = {"synchronous": _synchronous(datastore)}
    finally:
        app.close()
    return seconds, details


def floor(path: Path, count: int, seed: int) -> tuple[float, dict[str, Any]]:
    """(b): BLAKE3 chain + Ed25519 signature + one executemany per 1000 events, by hand.

    Same table (schema, unique index, append-only triggers) and same bytes hashed as the
    ledger (format.event_hash), so only eventsourcing and the ledger's own code are missing.
    """
    mapper = LedgerMapper(FieldSealer(None))
    inputs: list[tuple[str, bytes, int, str, bytes, bytes]] = []
    for session in sessions(count, seed):
        for stored in map(mapper.to_stored_event, session.collect_events()):
            sid = stored.originator_id.hex
            inputs.append(
                (sid, sid.encode(), stored.originator_version, stored.topic,
                 stored.topic.encode(), stored.state)
            )  # fmt: skip
    key = Ed25519PrivateKey.generate()
    signer = NodeIdentity(key).did
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for statement in CREATE_STATEMENTS:
            conn.execute(statement)
        batches = [
            inputs[i : i + BATCH_SESSIONS * EVENTS_PER_SESSION]
            for i in range(0, len(inputs), BATCH_SESSIONS * EVENTS_PER_SESSION)
        ]
        seconds = timed(lambda: _floor_append(conn, batches, key, signer))
        synchronous = {2: "FULL"}.get(conn.execute("PRAGMA synchronous").fetchone()[0], "?")
    finally:
        conn.close()
    return seconds, {"synchronous": synchronous}


def _floor_append(
    conn: sqlite3.Connection,
    batches: Sequence[Sequence[tuple[str, bytes, int, str, bytes, bytes]]],
    key: Ed25519PrivateKey,
    signer: str,
) -> None:
    sign, signer_lp = key.sign, lp(signer.encode())
    position, prev_global = 0, genesis_hash("floor")
    session_heads: dict[str, bytes] = {}
    for batch in batches:
        timestamp = time.time_ns() // 1000
        rows = []
        for sid, sid_b, version, topic, topic_b, payload in batch:
            prev_session = session_heads.get(sid, ZERO_HASH)
            position += 1
            h = event_hash(
                position, sid_b, version, topic_b, timestamp, payload,
                prev_session, prev_global, signer_lp,
            )  # fmt: skip
            rows.append(
                (position, sid, version, topic, timestamp, payload, None,
                 prev_session, prev_global, h, signer, sign(h))
            )  # fmt: skip
            session_heads[sid] = prev_global = h
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")


PLAIN = "(a) plain eventsourcing, save() per session"
FLOOR = "(b) floor: chain + sign + executemany"
CONTENDERS: dict[str, Run] = {
    f"ledger, save() per session from {SAVE_THREADS} threads": ledger_threads,
    f"ledger, save(*{BATCH_SESSIONS} sessions)": ledger_batches,
    "ledger, save() per session, 1 thread": ledger_serial,
    PLAIN: plain_eventsourcing,
    FLOOR: floor,
}


def _sign_rates() -> dict[str, float]:
    """Ed25519 signatures/s of a 32-byte hash, on one thread and on two (context: the
    signature is the floor's main cost, and cryptography releases the GIL while signing)."""
    key, message = Ed25519PrivateKey.generate(), os.urandom(32)

    def sign(n: int) -> None:
        for _ in range(n):
            key.sign(message)

    def sign_on_two_threads(n: int) -> None:
        threads = [threading.Thread(target=sign, args=(n // 2,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return {
        "one_thread": rate_per_second(sign, min_seconds=1.0, batch=2000),
        "two_threads": rate_per_second(sign_on_two_threads, min_seconds=1.0, batch=4000),
    }


def _commit_rate(path: Path) -> float:
    """Commits/s of one small row each (WAL, synchronous=FULL): the per-save cost that group
    commit amortizes. It swings with the shared disk, and (a)'s figure swings with it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (x BLOB)")

        def commit(n: int) -> None:
            for _ in range(n):
                conn.execute("BEGIN")
                conn.execute("INSERT INTO t VALUES (?)", (b"x" * 200,))
                conn.execute("COMMIT")

        return rate_per_second(commit, min_seconds=1.0, batch=50)
    finally:
        conn.close()


def run(quick: bool) -> dict[str, Any]:
    count = 500 if quick else 5000
    repeat = 2 if quick else 5
    events = count * EVENTS_PER_SESSION
    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    details: dict[str, dict[str, Any]] = {}
    sign_rates: list[dict[str, float]] = []
    commit_rates: list[float] = []
    latencies: list[dict[str, float]] = []  # per repetition, of the one-thread saves
    names = list(CONTENDERS)
    with scratch_dir("append-") as scratch:
        for rep in range(repeat):
            sign_rates.append(_sign_rates())
            commit_rates.append(_commit_rate(scratch / f"r{rep}-commits.sqlite3"))
            for i, name in enumerate(names[rep % len(names) :] + names[: rep % len(names)]):
                seconds, info = CONTENDERS[name](scratch / f"r{rep}-c{i}.sqlite3", count, rep)
                rates[name].append(events / seconds)
                details[name] = info
                if "latency_ms" in info:
                    latencies.append(info["latency_ms"])
    medians = {name: median(values) for name, values in rates.items()}
    figures = []
    for name, value in medians.items():
        note = f"min {min(rates[name]):.0f}, max {max(rates[name]):.0f}"
        figures.append(figure(name, value, "events/s", note=note))
        if name.startswith("ledger"):
            for label, base, target in (("(a)", PLAIN, TARGET_VS_PLAIN),
                                        ("(b)", FLOOR, TARGET_VS_FLOOR)):  # fmt: skip
                ratio = value / medians[base]
                # The ratio within each repetition pairs runs minutes apart at most; its median
                # is less exposed to the shared machine's load drifting during the suite.
                paired = median([x / y for x, y in zip(rates[name], rates[base], strict=True)])
                figures.append(
                    figure(f"  {name} / {label}", ratio, "x", target=f">= {target}",
                           ok=ratio >= target, note=f"median of per-repetition ratios {paired:.2f}")
                )  # fmt: skip
    if latencies:
        tail = {q: median([lat[q] for lat in latencies]) for q in latencies[0]}
        figures.append(
            figure("ledger, save() latency p99.9, 1 thread", tail["p99.9"], "ms",
                   note=f"p50 {tail['p50']:.2f}, p99 {tail['p99']:.2f}, max {tail['max']:.2f} ms "
                   f"(medians of {len(latencies)} repetitions of {count} saves)")
        )  # fmt: skip
    sign_one = median([r["one_thread"] for r in sign_rates])
    sign_two = median([r["two_threads"] for r in sign_rates])
    figures.append(figure("Ed25519 sign, 1 thread", sign_one, "signatures/s"))
    figures.append(figure("Ed25519 sign, 2 threads", sign_two, "signatures/s"))
    figures.append(
        figure("SQLite commit of 1 row (WAL, FULL)", median(commit_rates), "commits/s",
               note=f"min {min(commit_rates):.0f}, max {max(commit_rates):.0f}")
    )  # fmt: skip
    return {
        "figures": figures,
        "params": {
            "sessions_per_repetition": count,
            "events_per_session": EVENTS_PER_SESSION,
            "repetitions": repeat,
            "save_threads": SAVE_THREADS,
            "batch_sessions": BATCH_SESSIONS,
        },
        "rates": rates,
        "details": details,
    }
