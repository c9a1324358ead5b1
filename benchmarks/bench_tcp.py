"""Handshakes per second through a ``TcpNode`` server over loopback TCP, its frames decided in
batches (``max_batch``, the default) against one save per frame (``max_batch=1``).

Bob serves; ``CLIENTS`` client nodes connect to him, each establishing one session after
another for the measured time: real PQxdh keys, every event on signed SQLite ledgers (Bob's at
the durability named, the clients' at ``normal``), one process and one event loop, so the
clients' work shares the machine with Bob's. Bob with batches and Bob with ``max_batch=1``
alternate, fresh each round, and the median of the per-round ratios is reported. What batching
saves is Bob's saves: at durability ``full`` (the ledger's default) an fsync per frame.

Run alone with ``python -m benchmarks.bench_tcp [--quick]``, or as the "tcp" suite.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from l2_session.domain.handshake.admission import HandshakeAdmission
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.application import Durability
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.tcp import MAX_BATCH, TcpNode

from benchmarks.common import figure, scratch_dir
from benchmarks.handshake_sessions import UNLIMITED

CLIENTS = 32
DAY_US = 86_400_000_000


def _now_us() -> int:
    return time.time_ns() // 1000


class _Node:
    def __init__(
        self, path: Path, directory: DidKeyResolver, durability: Durability, max_batch: int
    ) -> None:
        identity = NodeIdentity.generate()
        exchange = PqxdhKeyExchange.for_node(
            identity.did, identity.private_key, directory, now_us=_now_us(), valid_for_us=DAY_US,
            one_time_prekeys=0, engine_options={"admission": HandshakeAdmission(UNLIMITED)},
        )  # fmt: skip
        self.ledger = SessionLedger(
            path, identity=identity, storage_key=os.urandom(32), durability=durability
        )
        self.manager = SessionManager(identity.did, self.ledger, key_exchange=exchange)
        self.node = TcpNode(self.manager, _now_us, max_batch=max_batch)
        exchange.source_of = self.node.address_of  # the engine keys its gate by address

    async def close(self) -> None:
        await self.node.close()
        self.ledger.close()


async def _rate(work: Path, durability: Durability, max_batch: int, seconds: float) -> float:
    directory = DidKeyResolver()
    bob = _Node(work / "bob.sqlite3", directory, durability, max_batch)
    server = await bob.node.serve()
    port = server.sockets[0].getsockname()[1]
    clients = [
        _Node(work / f"client-{i}.sqlite3", directory, "normal", MAX_BATCH) for i in range(CLIENTS)
    ]
    for client in clients:
        await client.node.connect(bob.manager.local_did, "127.0.0.1", port)
    done, stop = 0, time.perf_counter() + seconds

    async def handshakes(client: _Node) -> None:
        nonlocal done
        manager = client.manager
        while time.perf_counter() < stop:
            sid = await client.node.establish(bob.manager.local_did)
            session = await client.node.query(lambda sid=sid: manager.session(sid))
            await client.node.until(lambda s=session: s.state == "established", 30)
            done += 1

    start = time.perf_counter()
    try:
        await asyncio.gather(*(handshakes(c) for c in clients))
        return done / (time.perf_counter() - start)
    finally:
        for client in clients:
            await client.close()
        server.close()
        await bob.close()


def run(quick: bool) -> dict[str, Any]:
    rounds, seconds = (2, 1.5) if quick else (5, 4.0)
    # The managers log missed heartbeats and the like as warnings; here they are the workload.
    logging.getLogger("l2_session").setLevel(logging.ERROR)
    figures = []
    with scratch_dir("tcp-") as work:
        for durability in ("full", "normal"):
            batched, single, ratios = [], [], []
            for r in range(rounds):
                for max_batch, rates in ((MAX_BATCH, batched), (1, single)):
                    (path := work / f"{durability}-{r}-{max_batch}").mkdir()
                    rates.append(asyncio.run(_rate(path, durability, max_batch, seconds)))
                ratios.append(batched[-1] / single[-1])
            figures += [
                figure(
                    f"handshakes/s through a TcpNode, {CLIENTS} clients, Bob at {durability}",
                    statistics.median(batched),
                    "/s",
                    note=f"frames decided in batches (max_batch {MAX_BATCH}); median of {rounds}",
                ),
                figure(
                    f"  the same, one save per frame (max_batch=1), {durability}",
                    statistics.median(single),
                    "/s",
                ),
                figure(
                    f"  batches / one save per frame, {durability}",
                    statistics.median(ratios),
                    "x",
                    note="median of the per-round ratios",
                ),
            ]
    return {"figures": figures}


if __name__ == "__main__":
    began = time.perf_counter()
    for f in run("--quick" in sys.argv)["figures"]:
        print(f"{f['name']:<60} {f['value']:>10,.2f} {f['unit']:<3} {f['note']}")
    print(f"({time.perf_counter() - began:.1f} s)")
