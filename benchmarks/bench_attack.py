"""What two attacks cost a ``TcpNode`` server (docs/security.md, "Denial of service"): its
memory and its ledger, with the node's default limits.

The server runs in a process of its own (``python -m benchmarks.bench_attack --serve DIR``),
so that its resident memory is its own: real PQxdh keys, a signed SQLite ledger, its timers
running on a clock the benchmark can move forward (``skip``). The attacker, in this process:

1. *handshakes never confirmed*: ``FLOOD`` genuine INITs from as many new identities, each on
   a connection of its own, never confirmed, with the admission gate open (the worst case:
   every INIT costs the server its DH and KEM work and an answer); then the handshake timeout,
   the summary interval and the peers' idle time pass, and a peer asks for a session;
2. *frames held one byte short*: ``PARTIAL`` connections, each a well-formed hello and
   131,071 bytes of a 131,072-byte frame, then nothing; then a peer asks for a session.

Run alone with ``python -m benchmarks.bench_attack [--quick]``, or as the "attack" suite.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

from l2_session.domain.handshake.admission import HandshakeAdmission
from l2_session.domain.handshake.bundle import PrekeyBundle
from l2_session.domain.handshake.protocol import InitiatorHandshake
from l2_session.domain.manager.manager import PEER_IDLE_US, SUMMARY_INTERVAL_US, SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.domain.session.commands import HandshakeRequest
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.frames import MAX_FRAME, encode
from l2_session.transports.tcp import TcpNode

from benchmarks.common import figure, scratch_dir
from benchmarks.handshake_sessions import UNLIMITED

PARTIAL, FLOOD = 1024, 2000
DAY_US = 86_400_000_000


class _Clock:
    """Wall time, or the time it was frozen at, plus what the benchmark skipped. Frozen, the
    server's handshakes wait for the benchmark's skip to time out, however long the flood
    takes to send (within the INIT's ±120 s, which the two processes' clocks stay within)."""

    def __init__(self) -> None:
        self.skipped_us = 0
        self.frozen_us: int | None = None

    def now_us(self) -> int:
        now = time.time_ns() // 1000 if self.frozen_us is None else self.frozen_us
        return now + self.skipped_us


def _rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc (Linux only)")


# ------------------------------------------------------------------ the server process
async def _serve(work: Path) -> None:
    clock, identity = _Clock(), NodeIdentity.generate()
    exchange = PqxdhKeyExchange.for_node(
        identity.did, identity.private_key, DidKeyResolver(), now_us=clock.now_us(),
        valid_for_us=DAY_US, one_time_prekeys=0,
        engine_options={"admission": HandshakeAdmission(UNLIMITED)},
    )  # fmt: skip
    ledger = SessionLedger(work / "bob.sqlite3", identity=identity, storage_key=os.urandom(32))
    manager = SessionManager(identity.did, ledger, key_exchange=exchange)
    node = TcpNode(manager, clock.now_us)
    exchange.source_of = node.address_of
    server = await node.serve()
    node.start_timers()
    bundle = exchange.engine.responder.bundle.encode()  # type: ignore[union-attr]
    hello = {
        "port": server.sockets[0].getsockname()[1],
        "did": identity.did,
        "bundle": bundle.hex(),
    }
    print(json.dumps(hello), flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while command := (await reader.readline()).decode().split():
        if command[0] == "freeze":
            clock.frozen_us = clock.now_us() - clock.skipped_us
        if command[0] == "skip":
            clock.skipped_us += int(float(command[1]) * 1e6)
            await asyncio.sleep(0.2)  # the timer task ticks at least every 50 ms
        stats = {
            "rss_kb": _rss_kb(),
            "events": ledger.recorder.max_notification_id() or 0,
            "connections": len(node.connections.open),
            "pending": exchange.engine.pending(),
            "peers": len(manager._peers),
            "sessions": len(manager),
        }
        print(json.dumps(stats), flush=True)
    await node.close()
    ledger.close()


# ------------------------------------------------------------------ the attacker
class _Server:
    def __init__(self, work: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_attack", "--serve", str(work)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None and self.process.stdin is not None
        self._in, self._out = self.process.stdin, self.process.stdout
        hello = json.loads(self._out.readline())
        self.port, self.did = hello["port"], hello["did"]
        self.bundle = bytes.fromhex(hello["bundle"])
        self.clock = _Clock()  # the server's: what was skipped, too

    def stats(self, skip_s: float = 0, command: str = "stats") -> dict[str, int]:
        self.clock.skipped_us += int(skip_s * 1e6)
        self._in.write(f"skip {skip_s}\n" if skip_s else f"{command}\n")
        self._in.flush()
        stats: dict[str, int] = json.loads(self._out.readline())
        return stats

    def close(self) -> None:
        self._in.close()
        self.process.wait(timeout=30)


async def _open(port: int, data: bytes, writers: list[asyncio.StreamWriter]) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    writers.append(writer)


def _hello(did: str) -> bytes:
    return struct.pack(">H", len(did)) + did.encode()


async def _settle(server: _Server, key: str, value: int) -> dict[str, int]:
    """Stats once ``key`` reached ``value`` (or stopped moving for a second)."""
    last, still = server.stats(), 0
    while last[key] != value and still < 10:
        await asyncio.sleep(0.1)
        now = server.stats()
        still, last = (still + 1 if now[key] == last[key] else 0), now
    return last


async def _peer_gets_a_session(server: _Server, work: Path) -> bool:
    """A legitimate peer connects and asks for a session: established within 10 s?"""
    directory, identity = DidKeyResolver(), NodeIdentity.generate()
    directory.directory.put(server.did, PrekeyBundle.parse(server.bundle))
    clock = server.clock
    exchange = PqxdhKeyExchange.for_node(
        identity.did, identity.private_key, directory, now_us=clock.now_us(),
        valid_for_us=DAY_US, one_time_prekeys=0,
    )  # fmt: skip
    ledger = SessionLedger(work / f"peer-{uuid4()}.sqlite3", identity=identity,
                           storage_key=os.urandom(32))  # fmt: skip
    manager = SessionManager(identity.did, ledger, key_exchange=exchange)
    node = TcpNode(manager, clock.now_us)
    exchange.source_of = node.address_of
    try:
        await node.connect(server.did, "127.0.0.1", server.port)
        sid = await node.establish(server.did)
        session = await node.query(lambda: manager.session(sid))
        await node.until(lambda: session.state == "established", 10)
        return True
    except TimeoutError:
        return False
    finally:
        await node.close()
        ledger.close()


async def _flood(server: _Server, flood: int, writers: list[asyncio.StreamWriter]) -> None:
    """``flood`` genuine INITs, never confirmed, until the server has answered them all."""
    bundle = PrekeyBundle.parse(server.bundle)
    for sent in range(1, flood + 1):
        identity = NodeIdentity.generate()
        _, init = InitiatorHandshake.start(
            identity.private_key, bundle, now_us=server.clock.now_us()
        )
        request = encode(HandshakeRequest(uuid4(), init))
        await _open(server.port, _hello(identity.did) + request, writers)
        if len(writers) == 500 or sent == flood:  # the connection cap is not measured here
            await _settle(server, "pending", sent)
            for writer in writers:
                writer.close()
            writers.clear()


async def _attack(work: Path, partial: int, flood: int) -> dict[str, Any]:
    server = _Server(work)
    out: dict[str, Any] = {}
    writers: list[asyncio.StreamWriter] = []
    try:
        rss, events = [], []
        for _ in range(2):  # the second flood shows whether the first one's memory came back
            before = server.stats(command="freeze")
            await _flood(server, flood, writers)
            answered = server.stats()
            server.stats(skip_s=6)  # the handshake timeout
            summed = server.stats(skip_s=SUMMARY_INTERVAL_US / 1e6 + 1)  # the summary interval
            idle = server.stats(skip_s=PEER_IDLE_US / 1e6 + 1)  # the peers' idle time
            rss.append((answered["rss_kb"] - before["rss_kb"]) / 1024)
            events.append(summed["events"] - before["events"])
        out.update(
            flood_answered=answered["pending"],
            flood_rss_mb=rss,
            flood_events=max(events),
            idle_tables=(idle["pending"], idle["peers"], idle["sessions"]),
            flood_peer_in=await _peer_gets_a_session(server, work),
        )

        base = await _settle(server, "connections", 0)
        held = struct.pack(">I", MAX_FRAME) + b"\x01" * (MAX_FRAME - 1)
        for _ in range(partial):
            await _open(server.port, _hello(NodeIdentity.generate().did) + held, writers)
        under = await _settle(server, "connections", -1)  # until it stops moving
        out["partial_rss_mb"] = (under["rss_kb"] - base["rss_kb"]) / 1024
        out["partial_connections"] = under["connections"]
        out["partial_peer_in"] = await _peer_gets_a_session(server, work)
    finally:
        for writer in writers:
            writer.transport.abort()
        server.close()
    return out


def run(quick: bool) -> dict[str, Any]:
    partial, flood = (256, 300) if quick else (PARTIAL, FLOOD)
    logging.getLogger("l2_session").setLevel(logging.ERROR)
    with scratch_dir("attack-") as work:
        r = asyncio.run(_attack(work, partial, flood))
    pending, peers, sessions = r["idle_tables"]
    return {
        "figures": [
            figure(
                f"frames held one byte short: server memory, {partial} connections",
                r["partial_rss_mb"],
                "MB",
                note=f"{r['partial_connections']} still open; a peer got its session: "
                f"{r['partial_peer_in']}",
            ),
            figure(
                f"handshakes never confirmed: ledger events per {r['flood_answered']}",
                r["flood_events"],
                "",
                note="after the handshake timeout and the summary interval",
            ),
            figure(
                "  server memory, growth while they wait for confirmation",
                r["flood_rss_mb"][0],
                "MB",
            ),
            figure(
                "  the same, a second flood once the first timed out",
                r["flood_rss_mb"][1],
                "MB",
                note=f"after each: handshakes pending {pending}, peers {peers}, sessions "
                f"{sessions}; a peer got its session: {r['flood_peer_in']}",
            ),
        ]
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        logging.getLogger("l2_session").setLevel(logging.ERROR)
        asyncio.run(_serve(Path(sys.argv[2])))
        sys.exit()
    began = time.perf_counter()
    for f in run("--quick" in sys.argv)["figures"]:
        print(f"{f['name']:<62} {f['value']:>10,.2f} {f['unit']:<3} {f['note']}")
    print(f"({time.perf_counter() - began:.1f} s)")
