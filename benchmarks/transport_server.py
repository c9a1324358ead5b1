"""The server process of the transports suite (bench_transports.py): one node with real keys
on a signed SQLite ledger, listening for QUIC, that reports the memory Python holds for it.

``python -m benchmarks.transport_server WORK_DIR``: prints ``{"port": ..., "did": ...,
"bundle": HEX}``, then answers each ``measure`` line on stdin with ``{"bytes": ...,
"sessions": ..., "links": ...}`` — tracemalloc's current total after a full collection, the
sessions in the manager's memory and the open connections — and stops at end of input.
"""

from __future__ import annotations

import tracemalloc

tracemalloc.start()  # before anything is allocated: every byte of the node is counted

import asyncio  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from l2_session.domain.handshake.admission import HandshakeAdmission  # noqa: E402
from l2_session.domain.manager.manager import SessionManager  # noqa: E402
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange  # noqa: E402
from l2_session.infrastructure.clock import SessionTimeline, SystemClock  # noqa: E402
from l2_session.infrastructure.identity import NodeIdentity  # noqa: E402
from l2_session.infrastructure.ledger import SessionLedger  # noqa: E402
from l2_session.infrastructure.resolver import DidKeyResolver  # noqa: E402
from l2_session.transports.tcp import TcpNode  # noqa: E402

from benchmarks.handshake_sessions import UNLIMITED  # noqa: E402

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
    manager = SessionManager(identity.did, ledger, key_exchange=exchange)
    node = TcpNode(manager, now_us)
    exchange.source_of = node.address_of
    _, port = await node.serve_quic()
    bundle = bytes(exchange.engine.responder.bundle.encode())  # type: ignore[union-attr]
    print(json.dumps({"port": port, "did": identity.did, "bundle": bundle.hex()}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        gc.collect()
        sessions = await node.query(lambda: len(manager))
        current, _ = tracemalloc.get_traced_memory()
        links = len(node.connections.open)
        print(json.dumps({"bytes": current, "sessions": sessions, "links": links}), flush=True)
    await node.close()
    ledger.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
