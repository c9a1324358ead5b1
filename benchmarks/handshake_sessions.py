"""The session-level halves of bench_handshake: handshakes through two SessionManagers with
their ledger appends, and resumption latency from a session with many events in the ledger.

Both use real PQxdh keys (domain/manager/pqxdh.py) and signed SQLite ledgers in a scratch
directory. Handshakes are driven frame by frame in one process (no network: the comparison is
with the crypto floor); resumption runs over a loopback TCP socket (transports/tcp.py).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from l2_session.domain.handshake.admission import FloodLimits, HandshakeAdmission
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.domain.session.commands import Output, Send
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.application import Durability
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.tcp import TcpNode

DAY_US = 86_400_000_000
# A benchmark is a flood by design: admission must not be what is measured.
UNLIMITED = FloodLimits(*(1e9,) * 8)


class _NothingStored:
    def get(self, aggregate_id: UUID, **kwargs: Any) -> Any:
        raise AggregateNotFoundError(aggregate_id)


class NoLedger:
    """A contrast, not a ledger: ``save`` drops the events (no hash, no signature, no row) and
    nothing is ever found. The managers and the engine alone, to show what the ledger costs
    and how fast the rest could go if the ledger were free."""

    repository = _NothingStored()

    def live_session_ids(self, *topics: Any) -> list[UUID]:
        return []  # nothing was ever stored

    def save(self, *objs: Any, **kwargs: Any) -> None:
        for obj in objs:
            obj.collect_events()

    def close(self) -> None:
        pass


class Pair:
    """Alice and Bob, each a SessionManager on its own ledger, on one virtual timeline
    (``ledger=False``: on a ``NoLedger`` each, for the contrast figure)."""

    def __init__(
        self, directory: Path, durability: Durability, now_us: int, *, ledger: bool = True
    ) -> None:
        self.now_us = now_us
        resolver = DidKeyResolver()
        self.managers: dict[str, SessionManager] = {}
        self.ledgers: list[SessionLedger | NoLedger] = []
        for name in ("alice", "bob"):
            node = NodeIdentity.generate()
            exchange = PqxdhKeyExchange.for_node(
                node.did, node.private_key, resolver, now_us=now_us, valid_for_us=30 * DAY_US,
                one_time_prekeys=0,  # as the crypto floor counts it
                engine_options={"admission": HandshakeAdmission(UNLIMITED)},
            )  # fmt: skip
            store = (
                SessionLedger(
                    directory / f"{name}.sqlite3", identity=node, storage_key=os.urandom(32),
                    durability=durability,
                )
                if ledger
                else NoLedger()
            )  # fmt: skip
            self.ledgers.append(store)
            self.managers[node.did] = SessionManager(node.did, store, key_exchange=exchange)
        self.alice, self.bob = self.managers

    def tick(self, us: int = 1000) -> int:
        self.now_us += us
        return self.now_us

    def deliver(self, sender: str, outputs: list[Output]) -> None:
        """Every frame to its addressee, and its answers back, until nothing is left."""
        queue = [(sender, o) for o in outputs]
        while queue:
            src, output = queue.pop(0)
            if isinstance(output, Send):
                dst = output.peer_did
                queue += [(dst, o) for o in self.managers[dst].receive(src, output.frame,
                                                                        self.tick())]  # fmt: skip

    def handshake(self) -> UUID:
        alice = self.managers[self.alice]
        sid, outputs = alice.establish(self.bob, self.tick())
        self.deliver(self.alice, outputs)
        if alice.session(sid).state != "established":
            raise RuntimeError(f"handshake {sid} ended in {alice.session(sid).state}")
        return sid

    def handshakes(self, count: int) -> list[UUID]:
        """``count`` handshakes in flight at once, each round of frames one call per side:
        Alice's ``establish_many``, Bob's ``receive_many`` of the INITs, Alice's of the
        RESPONSEs, Bob's of the CONFIRMs — what a node does with the frames one read of its
        sockets brings. Every event is still signed and appended before its frame is sent."""
        alice, bob = self.managers[self.alice], self.managers[self.bob]
        ids, outputs = alice.establish_many([self.bob] * count, self.tick())
        for receiver, sender in ((bob, self.alice), (alice, self.bob), (bob, self.alice)):
            frames = [(sender, o.frame) for o in outputs if isinstance(o, Send)]
            outputs = receiver.receive_many(frames, self.tick())
        established = [sid for sid in ids if alice.session(sid).state == "established"]
        if len(established) != count:
            raise RuntimeError(f"{count - len(established)} of {count} handshakes not established")
        return established

    def close(self) -> None:
        for ledger in self.ledgers:
            ledger.close()


def ledger_handshake_rate(directory: Path, durability: Durability, min_seconds: float) -> float:
    """Full handshakes/s through both managers, every event appended to their ledgers."""
    pair = Pair(directory, durability, time.time_ns() // 1000)
    try:
        pair.handshake()  # warm-up: first-use costs (tables, caches) are not a handshake's
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_seconds or done < 5:
            pair.handshake()
            done += 1
        return done / elapsed
    finally:
        pair.close()


def batched_handshake_rate(
    directory: Path,
    durability: Durability,
    min_seconds: float,
    in_flight: int,
    *,
    ledger: bool = True,
) -> float:
    """Full handshakes/s with ``in_flight`` handshakes at a time (``Pair.handshakes``);
    ``ledger=False``: with nothing recorded (``NoLedger``), the contrast."""
    pair = Pair(directory, durability, time.time_ns() // 1000, ledger=ledger)
    try:
        pair.handshakes(in_flight)  # warm-up, as above
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_seconds or done < 5 * in_flight:
            done += len(pair.handshakes(in_flight))
        return done / elapsed
    finally:
        pair.close()


def _suspend(manager: SessionManager, sid: UUID, now: Callable[[], int], skip: list[int]) -> None:
    """The peer is silent: serve the session's deadlines (skipping virtual time) until the
    missed heartbeats have taken it to suspended."""
    session = manager.session(sid)
    while session.state != "suspended":
        wake = manager.next_wakeup_us()
        assert wake is not None, f"no deadline left in {session.state}"
        skip[0] += max(0, wake - now())
        manager.tick(now())


def _grow(pair: Pair, sid: UUID, events: int) -> None:
    """Bring the session to ``events`` events: counter reservations, one append per snapshot
    interval (so the ledger snapshots each interval's last version from the aggregate itself,
    as it does for a session saved event by event)."""
    manager = pair.managers[pair.alice]
    session = manager.session(sid)
    interval = getattr(manager.ledger, "snapshot_interval", None) or 100
    until = session.counters_reserved()
    while session.version < events:
        for _ in range(min(events, (session.version // interval + 1) * interval) - session.version):
            until += 1024
            session.reserve_counters(pair.tick(10), until)
        manager.ledger.save(session)


def resumption_latencies(
    directory: Path, events: int, iterations: int
) -> tuple[list[float], list[float]]:
    """Seconds to ``established`` over loopback TCP, from making the restarted node (a new
    manager and ``TcpNode`` over the open ledger, which finds the session — ``repository.get``
    from the signed snapshot the ledger took when the session entered ``suspended``,
    ``snapshot_when``'s default, so nothing is replayed after it; each run checks that — and
    records the restart) and from connecting to the peer alone (which starts the resumption).
    Each run first lets the session go to ``suspended`` (a few more events), as before a real
    restart. The node's identity and prekeys are in memory (a key store's job)."""
    # As in a freshly started process: no garbage of earlier figures (thousands of sessions
    # of the handshake-rate pairs) left for the cycle collector to walk during the timed runs.
    gc.collect()
    pair = Pair(directory, "normal", time.time_ns() // 1000 - DAY_US // 2)
    sid = pair.handshake()
    _grow(pair, sid, events)
    if pair.managers[pair.alice].session(sid).state != "established":
        raise RuntimeError("the grown session is not established")
    alice_ledger = pair.managers[pair.alice].ledger
    bob = pair.managers[pair.bob]
    mono0, skip = time.monotonic_ns() // 1000, [pair.tick()]

    def now() -> int:  # one virtual timeline for both: real time plus skipped silences
        return skip[0] + time.monotonic_ns() // 1000 - mono0

    async def run() -> tuple[list[float], list[float]]:
        bob_node = TcpNode(bob, now)
        server = await bob_node.serve()
        port = server.sockets[0].getsockname()[1]
        samples, from_resume = [], []
        exchange = pair.managers[pair.alice]._kx  # the process keeps its identity and keys
        for _ in range(iterations):
            old = SessionManager(pair.alice, alice_ledger, key_exchange=exchange)
            old.restore(sid)
            _suspend(old, sid, now, skip)  # the peer went silent; then the process restarts
            start = time.perf_counter()
            manager = SessionManager(pair.alice, alice_ledger, key_exchange=exchange)
            node = TcpNode(manager, now)  # finds the session, records the restart (decision 16)
            session = manager.session(sid)
            restored_version = session.version - 1  # as loaded, before its NodeRestarted
            called = time.perf_counter()
            await node.connect(pair.bob, "127.0.0.1", port)  # the peer reached: it resumes
            await node.until(lambda s=session: s.state == "established", timeout_s=5)
            samples.append(time.perf_counter() - start)
            from_resume.append(time.perf_counter() - called)
            await node.close()
            _check_restored_from_snapshot(alice_ledger, sid, restored_version)
        server.close()
        await bob_node.close()
        return samples, from_resume

    try:
        return asyncio.run(run())
    finally:
        pair.close()


def _check_restored_from_snapshot(ledger: Any, sid: UUID, version: int) -> None:
    """The restore the figure times started from a trusted snapshot at the restored version
    (the suspension's): a regression to replaying a tail would otherwise go unnoticed."""
    store = ledger.snapshots
    newest = store.recorder.select_events(sid, desc=True, limit=1, lte=version) if store else []
    if not newest or newest[0].originator_version != version:
        found = newest[0].originator_version if newest else None
        raise RuntimeError(f"restored version {version} replayed from snapshot {found}")


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def describe(samples: list[float]) -> dict[str, Any]:
    return {"p50_ms": percentile(samples, 50) * 1e3, "p99_ms": percentile(samples, 99) * 1e3}


def handshake_breakdown(directory: Path, handshakes: int) -> tuple[dict[str, float], float]:
    """Milliseconds per full handshake (both sides) spent in the handshake engine, in ledger
    appends, in ledger look-ups of unknown conversations, and elsewhere (the managers); and
    the number of appends (group-commit requests, both ledgers) per handshake."""
    pair = Pair(directory, "normal", time.time_ns() // 1000)
    spent = {"engine": 0.0, "ledger appends": 0.0, "ledger look-ups": 0.0}

    def timed(owner: Any, name: str, part: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    try:
        pair.handshake()
        for manager in pair.managers.values():
            engine = manager._kx.engine  # type: ignore[attr-defined]
            timed(engine, "initiate", "engine")
            timed(engine, "receive", "engine")
            timed(manager.ledger, "save", "ledger appends")
            timed(manager.ledger.repository, "get", "ledger look-ups")
        requests = [ledger.ledger_recorder.committer.requests for ledger in pair.ledgers]
        start = time.perf_counter()
        for _ in range(handshakes):
            pair.handshake()
        total = time.perf_counter() - start
        appends = sum(
            ledger.ledger_recorder.committer.requests - before
            for ledger, before in zip(pair.ledgers, requests, strict=True)
        )
    finally:
        pair.close()
    out = {part: seconds / handshakes * 1e3 for part, seconds in spent.items()}
    out["managers and the rest"] = total / handshakes * 1e3 - sum(out.values())
    return out, appends / handshakes
