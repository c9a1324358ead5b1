"""The server process of the transports suite (bench_transports.py): one node with real keys
on a signed SQLite ledger, listening for QUIC, that reports the memory Python holds for it.

``python -m benchmarks.transport_server WORK_DIR [--no-trace]``: prints ``{"port": ...,
"tcp_port": ..., "did": ..., "bundle": HEX}`` (QUIC and μTCP), then answers each ``measure``
line on stdin with ``{"bytes": ..., "sessions": ..., "links": ...}`` — tracemalloc's current
total after a full collection, the sessions in the manager's memory and the open
connections — and each ``count`` line with ``{"established": N, "at": T}``: the sessions it
has established as responder, and ``time.monotonic``. It stops at end of input.
"""

from __future__ import annotations

import sys
import tracemalloc

if "--no-trace" not in sys.argv:  # the memory figure; --no-trace for the handshake rate
    tracemalloc.start()  # before anything is allocated: every byte of the node is counted

import asyncio
import gc
import json
import os
import time
from pathlib import Path

from l2_session.domain.handshake.admission import HandshakeAdmission
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.infrastructure.clock import SessionTimeline, SystemClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.tcp import TcpNode

from benchmarks.handshake_sessions import UNLIMITED

DAY_US = 86_400_000_000


async def main(work: Path) -> None:
    now_us = SessionTimeline(SystemClock()).now_us
    identity = NodeIdentity.generate()
    exchange = PqxdhKeyExchange.for_node(
        identity.did, identity.private_key, DidKeyResolver(), now_us=now_us(),
        valid_for_us=DAY_US, one_time_prekeys=0,
        engine_options={"admission": HandshakeAdmission(UNLIMITED)},
    )  # fmt: skip
    ledger = SessionLedger(
        work / "server.sqlite3", identity=identity, storage_key=os.urandom(32), durability="normal"
    )
    established: set[object] = set()  # conversations whose session the server established
    save = ledger.save

    def noting(*aggregates: object, **kwargs: object) -> object:
        done = save(*aggregates, **kwargs)  # type: ignore[arg-type]
        for aggregate in aggregates:
            if getattr(aggregate, "state", None) == "established":
                established.add(getattr(aggregate, "conversation", None))
        return done

    ledger.save = noting  # type: ignore[method-assign]
    manager = SessionManager(identity.did, ledger, key_exchange=exchange)
    node = TcpNode(manager, now_us)
    exchange.source_of = node.address_of
    _, port = await node.serve_quic()
    tcp = await node.serve()
    bundle = bytes(exchange.engine.responder.bundle.encode())  # type: ignore[union-attr]
    print(json.dumps({"port": port, "tcp_port": tcp.sockets[0].getsockname()[1],
                      "did": identity.did, "bundle": bundle.hex()}), flush=True)  # fmt: skip
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "count":  # sessions established so far, and when (no collection)
            done = await node.query(lambda: len(established))
            print(json.dumps({"established": done, "at": time.monotonic()}), flush=True)
            continue
        gc.collect()
        sessions = await node.query(lambda: len(manager))
        current, _ = tracemalloc.get_traced_memory()
        links = len(node.connections.open)
        print(json.dumps({"bytes": current, "sessions": sessions, "links": links}), flush=True)
    tcp.close()
    await node.close()
    ledger.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))  # --no-trace: tracemalloc was not started
