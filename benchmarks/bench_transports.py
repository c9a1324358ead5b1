"""Sessions over the node's transports (transports/tcp.py, decision 24): the time to an
established session over QUIC and over μTCP, the time to a session when UDP is blocked, and
the memory a server holds per live session over QUIC.

- Time to a session: a fresh client node (real PQxdh keys, its own signed SQLite ledger at
  ``normal``) dials a server node in the same process and establishes a session, timed from
  the dial to the client's session ``established`` (its save returned): QUIC (``dial`` with
  the QUIC address alone: a full QUIC handshake, no ticket) and μTCP (the TCP address
  alone). p50 and p99 of ``ATTEMPTS``; goal p99 ≤ 20 ms on loopback.
- UDP blocked: ``dial`` with both addresses, the QUIC one a UDP port where nothing answers
  (a firewall that drops UDP): QUIC is tried first, μTCP starts after the 250 ms head start
  and carries the session. p50 and p99; goal p99 ≤ 400 ms.
- Memory per live session over QUIC: a server node in its own process
  (transport_server.py, tracemalloc from its first line) takes ``SESSIONS`` clients, each a
  node of its own dialling it over QUIC (one connection per session); what the server's
  Python holds after, less what it held before, per session — its manager, session, ledger
  objects, sealed channel, the QUIC connection and its buffers (the kernel's socket buffers
  are not counted). Target ≤ 100 KiB (aioquic alone: ~51 KiB per idle link end, the
  quic_link suite).

Run alone with ``python -m benchmarks.bench_transports [--quick]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from l2_session.domain.handshake.admission import HandshakeAdmission
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.infrastructure.clock import SessionTimeline, SystemClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.tcp import TcpNode

from benchmarks.bench_handshake import primitive_costs
from benchmarks.common import PACKAGE_DIR, figure, scratch_dir
from benchmarks.handshake_sessions import UNLIMITED

DAY_US = 86_400_000_000
WAIT_S = 30.0  # a bound for waits that end at once on a working link; never a measurement
SIZES = {False: (60, 60), True: (15, 12)}  # attempts per figure, sessions for memory
SESSION_P99_MS = 20.0
UDP_BLOCKED_P99_MS = 400.0
MEMORY_PER_SESSION_KIB = 100.0
RESUME_P99_MS = 100.0
RATE_ROUNDS = {False: 3, True: 1}
RATE_SECONDS = {
    False: 5.0,
    True: 2.0,
}  # SPEC-018: resumed within 100 ms of the restarted node being up


class Side:
    """One node: identity, ledger, manager, ``TcpNode``. Given an identity and storage key,
    over a ledger (and QUIC tickets) of that name made before: the same node, restarted."""

    def __init__(
        self,
        work: Path,
        name: str,
        directory: DidKeyResolver,
        identity: NodeIdentity | None = None,
        storage_key: bytes | None = None,
    ) -> None:
        self.now_us = SessionTimeline(SystemClock()).now_us
        identity = identity or NodeIdentity.generate()
        self.identity, self.storage_key = identity, storage_key or os.urandom(32)
        self.did = identity.did
        self.exchange = PqxdhKeyExchange.for_node(
            identity.did, identity.private_key, directory, now_us=self.now_us(),
            valid_for_us=DAY_US, one_time_prekeys=0,
            engine_options={"admission": HandshakeAdmission(UNLIMITED)},
        )  # fmt: skip
        self.ledger = SessionLedger(
            work / f"{name}.sqlite3", identity=identity, storage_key=self.storage_key,
            durability="normal",
        )  # fmt: skip
        self.manager = SessionManager(identity.did, self.ledger, key_exchange=self.exchange)
        self.node = TcpNode(self.manager, self.now_us, quic_tickets=work / f"{name}.tickets")
        self.exchange.source_of = self.node.address_of

    async def close(self) -> None:
        await self.node.close()
        self.ledger.close()


async def _session(client: Side, server_did: str, **addresses: Any) -> tuple[float, str]:
    start = time.perf_counter()
    transport = await client.node.dial(server_did, **addresses)
    sid = await client.node.establish(server_did)
    manager = client.manager
    await client.node.until(lambda: manager.session(sid).state == "established", WAIT_S)
    return time.perf_counter() - start, transport


async def _established(side: Side, session_id: Any) -> None:
    manager = side.manager
    await side.node.until(lambda: manager.session(session_id).state == "established", WAIT_S)


def _black_hole() -> tuple[socket.socket, tuple[str, int]]:
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))  # bound, never read: QUIC's packets go unanswered
    return hole, hole.getsockname()


async def _times(work: Path, attempts: int) -> dict[str, Any]:
    directory = DidKeyResolver()
    server = Side(work, "server", directory)
    quic = await server.node.serve_quic()
    tcp_server = await server.node.serve()
    tcp = tcp_server.sockets[0].getsockname()[:2]
    hole, blocked = _black_hole()
    times: dict[str, list[float]] = {"quic": [], "utcp": [], "udp_blocked": []}
    transports: dict[str, set[str]] = {k: set() for k in times}
    try:
        for n in range(attempts):
            for kind, addresses in (
                ("quic", {"quic": quic}), ("utcp", {"tcp": tcp}),
                ("udp_blocked", {"quic": blocked, "tcp": tcp}),
            ):  # fmt: skip
                client = Side(work, f"{kind}-{n}", directory)
                try:
                    seconds, transport = await _session(client, server.did, **addresses)
                finally:
                    await client.close()
                times[kind].append(seconds * 1e3)
                transports[kind].add(transport)
    finally:
        hole.close()
        tcp_server.close()
        await server.close()
    return {"ms": times, "transports": {k: sorted(v) for k, v in transports.items()}}


async def _resumptions(work: Path, attempts: int) -> dict[str, Any]:
    """A client node with a session over QUIC stops (its session left live, as a killed
    process leaves it); started again over the same files, the time from its start — key
    exchange, ledger, ``recover`` — until the session is established again over QUIC, the
    RESUME in the 0-RTT first flight."""
    directory = DidKeyResolver()
    server = Side(work, "server", directory)
    quic = await server.node.serve_quic()
    times: list[float] = []
    early: list[bool] = []
    try:
        for n in range(attempts):
            first = Side(work, f"resumer-{n}", directory)
            await _session(first, server.did, quic=quic)
            (sid,) = first.manager.sessions()
            await first.close()
            start = time.perf_counter()
            again = Side(work, f"resumer-{n}", directory, first.identity, first.storage_key)
            await again.node.connect_quic(server.did, *quic)
            await _established(again, sid.id)
            times.append((time.perf_counter() - start) * 1e3)
            early += [link.pipe.link.early_data_accepted for link in again.node.connections.open]
            await again.close()
    finally:
        await server.close()
    return {"ms": times, "early_data_accepted": sum(early), "links": len(early)}


class _Server:
    """transport_server.py in its own process, spoken to a line at a time."""

    def __init__(self, work: Path, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.transport_server", str(work), *options],
            cwd=PACKAGE_DIR.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    async def ask(self, line: str | None = None) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        if line is not None:
            stdin.write(line + "\n")
            stdin.flush()
        said = await asyncio.get_running_loop().run_in_executor(None, stdout.readline)
        if not said:
            raise RuntimeError("the transport server process ended early")
        answer: dict[str, Any] = json.loads(said)
        return answer

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


async def _responder_rate(work: Path, seconds: float, in_flight: int) -> dict[str, Any]:
    """Handshakes/s one node answers as responder, its client in this process: one client
    node keeps ``in_flight`` sessions being established over one μTCP connection, and the
    server counts the sessions it established over ``seconds`` (after a second's warm-up)."""
    server = _Server(work, "--no-trace")
    client: Side | None = None
    try:
        ready = await server.ask()
        directory = DidKeyResolver()
        directory.publish_bundle(ready["did"], bytes.fromhex(ready["bundle"]), 0)
        client = Side(work, "hammer", directory)
        await client.node.dial(ready["did"], tcp=("127.0.0.1", ready["tcp_port"]))
        stop = False

        async def keep_establishing() -> None:
            assert client is not None
            while not stop:
                sid = await client.node.establish(ready["did"])
                await _established(client, sid)

        tasks = [asyncio.ensure_future(keep_establishing()) for _ in range(in_flight)]
        await asyncio.sleep(1.0)
        first = await server.ask("count")
        await asyncio.sleep(seconds)
        last = await server.ask("count")
        stop = True
        await asyncio.gather(*tasks)
    finally:
        if client is not None:
            await client.close()
        server.stop()
    rate = (last["established"] - first["established"]) / (last["at"] - first["at"])
    return {"rate": rate, "first": first, "last": last, "in_flight": in_flight}


def _responder_floor(min_seconds: float) -> float:
    """The responder's own cryptography per handshake, per second: verify the INIT, three
    X25519 exchanges with the prekeys, the ML-KEM decapsulation, an ephemeral key and its
    exchange, sign the RESPONSE (docs/handshake.md; no one-time prekey)."""
    costs = primitive_costs("pqcrypto", min_seconds)
    operations = {"ed25519_verify": 1, "ed25519_sign": 1, "x25519_keygen": 1,
                  "x25519_exchange": 4, "mlkem_decaps": 1}  # fmt: skip
    return 1.0 / sum(count * costs[op] for op, count in operations.items())


async def _memory(work: Path, sessions: int) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.transport_server", str(work)],
        cwd=PACKAGE_DIR.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdin is not None and server.stdout is not None
    loop = asyncio.get_running_loop()

    async def ask(line: str | None = None) -> dict[str, Any]:
        assert server.stdin is not None and server.stdout is not None
        if line is not None:
            server.stdin.write(line + "\n")
            server.stdin.flush()
        said = await loop.run_in_executor(None, server.stdout.readline)
        if not said:
            raise RuntimeError("the transport server process ended early")
        answer: dict[str, Any] = json.loads(said)
        return answer

    clients: list[Side] = []
    try:
        ready = await ask()
        directory = DidKeyResolver()
        directory.publish_bundle(ready["did"], bytes.fromhex(ready["bundle"]), 0)
        before = await ask("measure")
        for n in range(sessions):
            client = Side(work, f"client-{n}", directory)
            clients.append(client)
            await _session(client, ready["did"], quic=("127.0.0.1", ready["port"]))
        after = await ask("measure")
    finally:
        for client in clients:
            await client.close()
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=60)
    if after["sessions"] != sessions or after["links"] != sessions:
        raise RuntimeError(f"the server holds {after['sessions']} sessions, {after['links']} links")
    return {"before": before, "after": after, "per_session": (after["bytes"] - before["bytes"])
            / sessions}  # fmt: skip


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(quick: bool) -> dict[str, Any]:
    attempts, sessions = SIZES[quick]
    with scratch_dir("transports-") as work:
        timing = asyncio.run(_times(work, attempts))
    with scratch_dir("transports-resume-") as work:
        resumed = asyncio.run(_resumptions(work, attempts))
    with scratch_dir("transports-memory-") as work:
        memory = asyncio.run(_memory(work, sessions))
    responder_rates, floors = [], []
    for _ in range(RATE_ROUNDS[quick]):  # alternating with the floor, as the handshake suite
        floors.append(_responder_floor(0.25))
        with scratch_dir("transports-responder-") as work:
            responder_rates.append(asyncio.run(_responder_rate(work, RATE_SECONDS[quick], 32)))
    ms = timing["ms"]
    figures = []
    for kind, label in (("quic", "QUIC"), ("utcp", "μTCP")):
        p99 = _percentile(ms[kind], 99)
        figures.append(figure(
            f"dial -> established session over {label}, p50", statistics.median(ms[kind]),
            "ms", target=f"p99 <= {SESSION_P99_MS:.0f} ms", ok=p99 <= SESSION_P99_MS,
            note=f"p99 {p99:.1f} ms; {attempts} sessions, both nodes in one process",
        ))  # fmt: skip
    p99 = _percentile(ms["udp_blocked"], 99)
    figures.append(figure(
        "UDP blocked: dial -> established over uTCP, p50", statistics.median(ms["udp_blocked"]),
        "ms", target=f"p99 <= {UDP_BLOCKED_P99_MS:.0f} ms", ok=p99 <= UDP_BLOCKED_P99_MS,
        note=f"p99 {p99:.1f} ms; QUIC first, uTCP after its 250 ms head start; "
        f"carried by {', '.join(timing['transports']['udp_blocked'])}",
    ))  # fmt: skip
    p99 = _percentile(resumed["ms"], 99)
    figures.append(figure(
        "restarted node start -> session resumed over QUIC, p50",
        statistics.median(resumed["ms"]), "ms", target=f"p99 <= {RESUME_P99_MS:.0f} ms",
        ok=p99 <= RESUME_P99_MS,
        note=f"p99 {p99:.1f} ms; RESUME in 0-RTT on {resumed['early_data_accepted']} of "
        f"{resumed['links']} links; keys, ledger, recover and the dial included",
    ))  # fmt: skip
    kib = memory["per_session"] / 1024
    figures.append(figure(
        "server memory per live session over QUIC", kib, "KiB",
        target=f"<= {MEMORY_PER_SESSION_KIB:.0f} KiB", ok=kib <= MEMORY_PER_SESSION_KIB,
        note=f"tracemalloc in the server's process, {sessions} sessions on as many connections",
    ))  # fmt: skip
    rates = [r["rate"] for r in responder_rates]
    ratios = [r / f for r, f in zip(rates, floors, strict=True)]
    figures.append(figure(
        "handshakes/s a node answers, its client in another process",
        statistics.median(rates), "/s",
        note=f"{statistics.median(ratios):.2f} x the responder's own crypto floor "
        f"({statistics.median(floors):,.0f}/s, same run); 32 in flight over one uTCP "
        "connection; the client's process holds the other core",
    ))  # fmt: skip
    return {"figures": figures, "timing": timing, "resumed": resumed, "memory": memory,
            "responder": {"runs": responder_rates, "floors": floors},
            "sizes": {"attempts": attempts, "sessions": sessions}}  # fmt: skip


if __name__ == "__main__":
    for f in run("--quick" in sys.argv)["figures"]:
        print(f)
