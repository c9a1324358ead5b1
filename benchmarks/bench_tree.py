"""The ledger's Merkle tree (docs/ledger-format.md §13) and witnessing (decision 25): what they
cost and what they serve.

Targets:
- appends with the tree >= 0.95 x the same ledger with the tree off (``has_tree = False``:
  the same code, no tree nodes in the events' rows), for saves of 200 sessions at once and
  for one session per save on one thread. Beside them, as a contrast, one session per save
  in format 3, whose tree has a table of its own (tiles). Each repetition saves the same
  sessions to two fresh ledgers, one with the tree and one without, save by save in
  alternating order (``_paired``); the figure is the median of the repetitions' ratios;
- inclusion and consistency proofs served >= 20,000/s on a 1,000,000-event ledger, one
  thread: inclusion of random positions in the tree of all events, consistency from random
  earlier sizes to it (a sample is checked first; serving is what is timed), median of three
  passes, beside the floor of one one-row read per request on the same connection;
- verify() of 1,000,000 events with the root recomputed and the stored tree checked
  <= 1.1 x verify(check_tree=False), alternating, median of the ratios.

Reported beside them: the tree's own cost per event (``tree.grow`` and the INSERT of its
rows, alone in a transaction per save on a scratch SQLite file), in format 3's tiles against
format 2's row per node, so that the appends' noisy ratio has a steady contrast.

Reported: what witnessing costs a pair of peers with one session in an hour at the default
interval (300 s), from an hour of a simulation (MockTransport, real keys and ledgers): frames,
bytes and ledger appends it adds, beside what the session itself appends in that hour.
"""

from __future__ import annotations

import gc
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.format import FORMAT_VERSION
from l2_session.infrastructure.ledger.merkle import Frontier
from l2_session.infrastructure.ledger.tree import grow, grow_inline
from l2_session.infrastructure.ledger.verify import verify

from benchmarks.common import figure, median, scratch_dir, timed, timed_call
from benchmarks.datasets import BENCH_STORAGE_KEY, many_sessions_ledger
from benchmarks.workload import chunks, sessions

TARGET_APPEND = 0.95
TARGET_PROOFS = 20_000
TARGET_VERIFY = 1.1
BATCH_SESSIONS = 200
BATCH_PROOFS = 100  # inclusion proofs asked at once (inclusion_proofs: an export's requests)


def _ledger(path: Path, version: str | None) -> SessionLedger:
    """A new ledger at ``path``, of the format a new ledger gets, or marked ``version`` (an
    older one) before its first event."""
    identity, key = NodeIdentity.generate(), os.urandom(32)
    if version is not None:
        SessionLedger(path, identity=identity, storage_key=key).close()
        db = sqlite3.connect(path)
        db.execute("UPDATE ledger_meta SET value=? WHERE key='format_version'", (version,))
        db.commit()
        db.close()
    return SessionLedger(path, identity=identity, storage_key=key)


def _paired(
    work: Path, count: int, seed: int, batched: bool, version: str | None = None
) -> dict[bool, float]:
    """Seconds spent saving ``count`` sessions (5 events each) to a new ledger with the tree
    (True) and to another without it (False): the same saves, interleaved — each save to one
    ledger next to the same save to the other, in alternating order — so that the shared
    host's drift, which moves a second-long run by ±20 %, weighs on both alike. ``version``:
    both ledgers in that older format."""
    ledgers = {
        tree: _ledger(work / f"{seed}-{batched}-{tree}-{version}.sqlite3", version)
        for tree in (True, False)
    }
    groups: dict[bool, list[list[Any]]] = {}
    for tree, ledger in ledgers.items():
        ledger.ledger_recorder.has_tree = tree
        items = sessions(count, seed)  # the same sessions for both, each its own objects
        groups[tree] = list(chunks(items, BATCH_SESSIONS)) if batched else [[i] for i in items]
    spent = {True: 0.0, False: 0.0}
    gc.collect()
    try:
        for i in range(len(groups[True])):
            for tree in (True, False) if i % 2 else (False, True):
                group = groups[tree][i]
                start = time.perf_counter()
                ledgers[tree].save(*group)
                spent[tree] += time.perf_counter() - start
    finally:
        for ledger in ledgers.values():
            ledger.close()
    return spent


def append_ratios(quick: bool) -> dict[str, Any]:
    repeat = 2 if quick else 5
    modes = {
        f"save(*{BATCH_SESSIONS} sessions)": (True, 400 if quick else 4000, None),
        "save() per session, 1 thread": (False, 200 if quick else 1000, None),
        "save() per session, 1 thread, format 3 (tiles)": (False, 200 if quick else 1000, "3"),
    }
    out: dict[str, Any] = {}
    with scratch_dir("tree-append-") as work:
        for name, (batched, count, version) in modes.items():
            ratios, with_rates, without_rates = [], [], []
            for r in range(repeat):
                seconds = _paired(work, count, seed=r, batched=batched, version=version)
                events = count * 5
                with_rates.append(events / seconds[True])
                without_rates.append(events / seconds[False])
                ratios.append(seconds[False] / seconds[True])
            out[name] = {
                "ratio": median(ratios),
                "ratios": ratios,
                "with_tree": median(with_rates),
                "without_tree": median(without_rates),
                "format": version or str(FORMAT_VERSION),
            }
    return out


def _tree_alone(path: Path, hashes: list[bytes], batch: int, layout: str) -> float:
    """µs per event of growing the tree and inserting its rows, ``batch`` events a
    transaction, on a new SQLite file at ``path`` (WAL, synchronous=NORMAL); in format 4
    (``inline``) the hashing alone: its bytes ride in the events' rows."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE t (node INTEGER PRIMARY KEY, hash BLOB NOT NULL)")
        tree, tile = Frontier(), ([] if layout == "tiles" else None)
        spent = 0.0
        for i in range(0, len(hashes), batch):
            db.execute("BEGIN")
            start = time.perf_counter()
            if layout == "inline":
                grow_inline(tree, hashes[i : i + batch])
                spent += time.perf_counter() - start
                db.execute("COMMIT")
                continue
            rows = grow(tree, hashes[i : i + batch], tile)
            if rows:
                db.executemany("INSERT INTO t (node, hash) VALUES (?,?)", rows)
            spent += time.perf_counter() - start
            db.execute("COMMIT")
        return spent / len(hashes) * 1e6
    finally:
        db.close()


def tree_alone(quick: bool) -> dict[str, Any]:
    """The tree's own cost per event, tiles (format 3) against a row per node (format 2), and
    format 4's hashing, in saves of 1,000 events (the batched appends') and of 5 (one
    session's), alternating; the median of 4 repetitions."""
    rng = random.Random(7)
    hashes = [rng.randbytes(32) for _ in range(20_000 if quick else 200_000)]
    found: dict[str, Any] = {}
    with scratch_dir("tree-alone") as work:
        for batch in (1000, 5):
            layouts = ["inline", "tiles", "nodes"]
            times: dict[str, list[float]] = {layout: [] for layout in layouts}
            for rep in range(4):
                for layout in layouts[::-1] if rep % 2 else layouts:
                    path = work / f"{layout}-{batch}-{rep}.sqlite3"
                    times[layout].append(_tree_alone(path, hashes, batch, layout))
            found[str(batch)] = {k: median(v) for k, v in times.items()} | {"runs": times}
    return found


def proof_rates(path: Path, quick: bool) -> dict[str, Any]:
    """Proofs served on one thread: inclusion of random positions in the tree of every event
    (the size a checkpoint of the head signs), and consistency from random earlier sizes to
    it (what a witness asks). The median of ``passes`` passes over the same requests."""
    ledger = SessionLedger(path, create=False, storage_key=BENCH_STORAGE_KEY)
    passes = 3
    try:
        size, _ = ledger.tree_head()
        rng = random.Random(5)
        for _ in range(20):  # what is served checks
            ledger.inclusion_proof(rng.randint(1, size)).check()
            old = rng.randint(1, size - 1)
            ledger.consistency_proof(old, rng.randint(old + 1, size)).check()
        n = 5_000 if quick else 40_000
        positions = [rng.randint(1, size) for _ in range(n)]
        olds = [rng.randint(1, size - 1) for _ in range(n)]
        recorder = ledger.ledger_recorder

        def one_read(position: int) -> None:
            # The floor: one event hash by position, one statement on the same connection.
            with recorder.lone_read() as cur:
                recorder.tree_sql.event_hash(cur, position)

        batches = [positions[i : i + BATCH_PROOFS] for i in range(0, n, BATCH_PROOFS)]
        rates: dict[str, list[float]] = {
            "inclusion": [], "consistency": [], "floor": [], "inclusion_batched": []
        }  # fmt: skip
        for _ in range(passes):
            rates["inclusion"].append(
                n / timed(lambda: [ledger.inclusion_proof(p, size) for p in positions])
            )
            rates["inclusion_batched"].append(
                n / timed(lambda: [ledger.inclusion_proofs(b, size) for b in batches])
            )
            rates["consistency"].append(
                n / timed(lambda: [ledger.consistency_proof(o, size) for o in olds])
            )
            rates["floor"].append(n / timed(lambda: [one_read(p) for p in positions]))
    finally:
        ledger.close()
    return {"size": size, **{k: median(v) for k, v in rates.items()}, "passes": rates}


def verify_ratios(path: Path, quick: bool, events: int) -> dict[str, Any]:
    repeat = 2 if quick else 3
    ratios, with_s, without_s = [], [], []
    root = None
    for r in range(repeat):
        seconds: dict[bool, float] = {}
        for check in (r % 2 == 0, r % 2 != 0):
            took, report = timed_call(lambda c=check: verify(path, check_tree=c))
            if not report.ok or report.events_checked != events:
                raise AssertionError(f"benchmark ledger does not verify: {report.summary()}")
            if check:
                root = report.tree_root
            seconds[check] = took
        with_s.append(seconds[True])
        without_s.append(seconds[False])
        ratios.append(seconds[True] / seconds[False])
    return {
        "ratio": median(ratios),
        "ratios": ratios,
        "with_tree_s": median(with_s),
        "without_tree_s": median(without_s),
        "root": None if root is None else root.hex(),
    }


def witnessing_hour() -> dict[str, Any]:
    """An hour of two peers with one established session, at the default interval."""
    from l2_session.domain.manager.manager import SessionManager
    from l2_session.infrastructure.clock import ManualClock
    from l2_session.infrastructure.ledger.witness import Witnessing
    from l2_session.transports.frames import encode
    from l2_session.transports.mock import MockTransport, Simulation
    from l2_session.transports.witness_frames import WITNESS_FRAMES

    clock = ManualClock()
    transport = MockTransport(clock, seed=1)
    sim = Simulation(clock, transport)
    frames: list[int] = []
    original = transport.send

    def counted(src: str, dst: str, frame: Any, transport_name: str = "quic") -> None:
        if isinstance(frame, WITNESS_FRAMES):
            # Sealed on a real transport: the frame, a sealed header and a record's overhead.
            frames.append(len(encode(frame)) + 26 + 28)
        original(src, dst, frame, transport_name)

    transport.send = counted  # type: ignore[method-assign]
    ledgers, ids = [], [NodeIdentity.generate() for _ in range(2)]
    with scratch_dir("tree-witness-") as work:
        prekeys = {i.did: f"prekeys-{n}" for n, i in enumerate(ids)}
        for n, identity in enumerate(ids):
            ledger = SessionLedger(
                work / f"{n}.sqlite3", identity=identity, storage_key=os.urandom(32),
                clock=clock, durability="off",
            )  # fmt: skip
            ledgers.append(ledger)
            sim.add(
                SessionManager(
                    identity.did, ledger, prekeys_of=prekeys.__getitem__,
                    own_prekeys=prekeys[identity.did], key_exchange="mock",
                )
            )  # fmt: skip
            sim.witnessing[identity.did] = Witnessing(ledger, identity)
        alice = sim.nodes[ids[0].did]
        _, outputs = alice.establish(ids[1].did, clock.wall_us())
        sim.perform(ids[0].did, outputs)
        sim.run_for(10)
        before = [_counts(ledger) for ledger in ledgers]
        frames.clear()
        sim.run_for(3600)
        after = [_counts(ledger) for ledger in ledgers]
        for ledger in ledgers:
            ledger.close()
    grown = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    return {"frames": len(frames), "bytes": sum(frames), "per_node": grown}


def _counts(ledger: SessionLedger) -> dict[str, int]:
    from l2_session.infrastructure.ledger.schema import EVENTS_TABLE

    with ledger.ledger_recorder.reading() as cur:
        cur.execute(f"SELECT topic, COUNT(*) FROM {EVENTS_TABLE} GROUP BY topic")
        topics = dict(cur.fetchall())
    witnessed = sum(n for t, n in topics.items() if "WitnessedLog" in t)
    return {
        "events": sum(topics.values()),
        "witness_events": witnessed,
        "checkpoints": len(ledger.checkpoints()),
        "cosignatures": len(ledger.cosignatures()),
    }


def run(quick: bool) -> dict[str, Any]:
    events = 50_000 if quick else 1_000_000
    path = many_sessions_ledger(events)
    appends = append_ratios(quick)
    alone = tree_alone(quick)
    proofs = proof_rates(path, quick)
    checks = verify_ratios(path, quick, events)
    hour = witnessing_hour()
    figures = []
    for name, found in appends.items():
        rates = f"{found['with_tree']:,.0f} vs {found['without_tree']:,.0f} events/s"
        if found["format"] != str(FORMAT_VERSION):  # an older format's: a contrast
            figures.append(
                figure(f"  append with tree / without, {name}", found["ratio"], "x", note=rates)
            )
            continue
        figures.append(
            figure(
                f"append with tree / without, {name}", found["ratio"], "x",
                target=f">= {TARGET_APPEND}", ok=found["ratio"] >= TARGET_APPEND, note=rates,
            )
        )  # fmt: skip
    for batch, what in (("1000", "1,000 events a save"), ("5", "5 events a save")):
        costs = alone[batch]
        figures.append(
            figure(
                f"  the tree alone, tiles / a row per node, {what}",
                costs["tiles"] / costs["nodes"], "x",
                note=f"{costs['tiles']:.2f} vs {costs['nodes']:.2f} µs an event; "
                f"format 4's hashing {costs['inline']:.2f}",
            )
        )  # fmt: skip
    for kind in ("inclusion", "consistency"):
        figures.append(
            figure(
                f"{kind} proofs served, {proofs['size']:,} events", proofs[kind], "proofs/s",
                target=f">= {TARGET_PROOFS:,}", ok=proofs[kind] >= TARGET_PROOFS,
                note=f"floor: {proofs['floor']:,.0f} one-row reads/s on the same connection",
            )
        )  # fmt: skip
    figures.append(
        figure(
            f"  inclusion proofs served {BATCH_PROOFS} at a time", proofs["inclusion_batched"],
            "proofs/s", note="inclusion_proofs(): one statement per batch",
        )
    )  # fmt: skip
    figures.append(
        figure(
            f"verify() with tree / check_tree=False, {events:,} events", checks["ratio"], "x",
            target=f"<= {TARGET_VERIFY}", ok=checks["ratio"] <= TARGET_VERIFY,
            note=f"{checks['with_tree_s']:.1f} s vs {checks['without_tree_s']:.1f} s",
        )
    )  # fmt: skip
    node = hour["per_node"][0]
    figures.append(
        figure(
            "witnessing, one session, an hour at 300 s", hour["frames"], "frames",
            note=f"{hour['bytes']:,} bytes both ways; per node {node['witness_events']} witness "
            f"events, {node['checkpoints']} checkpoints, {node['cosignatures']} cosignatures "
            f"beside {node['events'] - node['witness_events']} session events",
        )
    )  # fmt: skip
    return {
        "figures": figures,
        "params": {"events": events, "quick": quick},
        "appends": appends,
        "tree_alone": alone,
        "proofs": proofs,
        "verify": checks,
        "witnessing_hour": hour,
    }
