"""Our side of the messages suite (bench_messages.py): one server or one client process, a
``TcpNode`` with real PQxdh keys on a signed SQLite ledger of its own at the durability named.

``python -m benchmarks.messages_ours server|client CONFIG`` (CONFIG: JSON). The process
protocol is the one messages_libp2p.py speaks (see there): the server prints ``ready`` and
answers ``phase NAME`` / ``end`` lines with what it counted since the line before; the client
prints ``{"phase": NAME}``, waits for ``go``, and prints ``{"result": ...}`` at the end.

What each process counts per phase, from the node's outputs (``TcpNode.outputs``: every
``Send`` by the class of its frame, every ``Deliver``), from its ledger (appends committed,
``committer.requests``; transactions, ``committer.batches``) and from a probe task (the
longest a 1 ms ``asyncio.sleep`` overslept: the longest the event loop was held).

The server is the application a message reaches (``TcpNode.messages``): in phase ``echo`` it
sends every message delivered to it back on the same session; in phase ``answer`` its node's
``answer`` (decision 23) sends it back, in the save that records the delivery, without the
application's loop; in phase ``bulk`` it notes when the last one was delivered. In phase
``connect`` it notes when each new session became established (its save returned).

The client sends through ``TcpNode.send``: one at a time in ``echo`` and ``answer``; in
``bulk`` with twice the suite's ``window`` of sends under way, each a task the node holds
until the session's window (``SessionConfig.send_window``, the suite's ``window``) has room
for it — the backpressure a send call applies.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

# The suite's only imports from l2_session.domain, kept together.
from l2_session.domain.handshake.admission import HandshakeAdmission
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.domain.session.config import SessionConfig
from l2_session.infrastructure.clock import SessionTimeline, SystemClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.tcp import TcpNode

from benchmarks.handshake_sessions import UNLIMITED

DAY_US = 86_400_000_000
WAIT_S = 120.0  # a bound for waits that end at once on a working link; never a measurement
ESTABLISHED = "established"


def say(**what: Any) -> None:
    print(json.dumps(what), flush=True)


class Stalls:
    """The longest a 1 ms sleep overslept: how long the event loop could not run a task."""

    def __init__(self) -> None:
        self.longest = 0.0

    async def probe(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(0.001)
            self.longest = max(self.longest, time.monotonic() - start - 0.001)

    def take(self) -> float:
        longest, self.longest = self.longest, 0.0
        return longest


class Peer:
    """One identity, one ledger, one manager; nodes (connections) are made over it."""

    def __init__(
        self, work: Path, name: str, config: dict[str, Any], directory: DidKeyResolver
    ) -> None:
        self.timeline = SessionTimeline(SystemClock())
        self.now_us = self.timeline.now_us
        identity = NodeIdentity.generate()
        self.exchange = PqxdhKeyExchange.for_node(
            identity.did, identity.private_key, directory, now_us=self.now_us(),
            valid_for_us=DAY_US, one_time_prekeys=0,
            # A benchmark connects as fast as it can: admission must not be what is measured.
            engine_options={"admission": HandshakeAdmission(UNLIMITED)},
        )  # fmt: skip
        self.ledger = SessionLedger(
            work / f"{name}.sqlite3", identity=identity, storage_key=os.urandom(32),
            durability=config["durability"],
        )  # fmt: skip
        self.manager = SessionManager(
            identity.did, self.ledger, SessionConfig(send_window=config["window"]),
            key_exchange=self.exchange,
        )  # fmt: skip
        self.did = identity.did
        self.nodes: list[TcpNode] = []
        self._counted: Counter[str] = Counter()  # Sends by frame class, and Delivers, so far
        self.stalls = Stalls()
        self._last_appends = self._last_commits = 0

    @property
    def bundle(self) -> bytes:
        return bytes(self.exchange.engine.responder.bundle.encode())

    def node(self, answer: Any = None) -> TcpNode:
        node = TcpNode(self.manager, self.now_us, answer=answer)
        self.exchange.source_of = node.address_of  # the engine keys its gate by address
        self.nodes.append(node)
        node.start_timers()
        return node

    def take(self) -> dict[str, Any]:
        """What this process did since the last ``take``."""
        committer = self.ledger.recorder.committer  # type: ignore[attr-defined]
        appends, self._last_appends = committer.requests - self._last_appends, committer.requests
        commits, self._last_commits = committer.batches - self._last_commits, committer.batches
        total: Counter[str] = sum((node.outputs for node in self.nodes), Counter())
        sent, self._counted = dict(total - self._counted), total
        return {"sent": sent, "appends": appends, "commits": commits, "stall_s": self.stalls.take()}

    def close(self) -> None:
        self.ledger.close()


def settled() -> None:
    """What a long-running node process does once it has started (``l2-session node``):
    the objects made so far — modules, classes, keys — leave the garbage collector's view
    (``gc.freeze``), so that a full collection scans only what the node made since, and does
    not hold the event loop for 10-15 ms (measured: the first full collection of a process
    that imported aioquic, 53,000 objects)."""
    gc.collect()
    gc.freeze()


async def readline() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# ---------------------------------------------------------------------------- server
async def serve(config: dict[str, Any]) -> None:
    peer = Peer(Path(config["work"]), "server", config, DidKeyResolver())
    settled()
    established: dict[str, float] = {}
    save = peer.ledger.save

    def noting(*aggregates: Any, **kwargs: Any) -> Any:
        # A session is established at the server once the save recording it returned.
        done = save(*aggregates, **kwargs)
        for aggregate in aggregates:
            if getattr(aggregate, "state", None) == ESTABLISHED:
                established.setdefault(str(aggregate.conversation), time.monotonic())
        return done

    peer.ledger.save = noting  # type: ignore[method-assign]

    def answer(session_id: Any, payload: bytes) -> bytes | None:
        # On the node's worker, before the delivery is saved (decision 23): in phase
        # ``answer`` the echo rides with the delivery's save; otherwise the message goes to
        # the application below, as without an answer.
        return payload if mode == "answer" else None

    node = peer.node(answer)
    if config["transport"] == "quic":
        _, port = await node.serve_quic()
        server = None
    else:
        server = await node.serve()
        port = server.sockets[0].getsockname()[1]
    mode, bulk_done = "connect", None
    prober = asyncio.ensure_future(peer.stalls.probe())

    async def application() -> None:
        nonlocal bulk_done
        async for message in node.messages():
            if mode == "echo":
                await node.send(message.session_id, message.payload)
            elif mode == "bulk":
                bulk_done = time.monotonic()  # the latest delivery; the last one, at the end

    app = asyncio.ensure_future(application())
    say(ready=True, port=port, did=peer.did, bundle=peer.bundle.hex())
    while True:
        line = (await readline()).split()
        if not line:
            break
        say(phase=line[-1], established=established, bulk_done=bulk_done, **peer.take())
        established, bulk_done = {}, None
        mode = line[-1]
        if line[0] == "end":
            break
    for task in (app, prober):
        task.cancel()
    if server is not None:
        server.close()
    await node.close()
    peer.close()


# ---------------------------------------------------------------------------- client
async def phase(name: str) -> None:
    say(phase=name)
    if (await readline()).strip() != "go":
        raise SystemExit(f"no go for phase {name}")


async def stream(node: TcpNode, sid: Any, messages: list[bytes], outstanding: int) -> None:
    """Send ``messages`` in order, keeping ``outstanding`` sends under way: a producer that
    waits only when that many are not yet queued (the node holds those beyond the window)."""
    pending: set[asyncio.Future[None]] = set()
    for message in messages:
        pending.add(asyncio.ensure_future(node.send(sid, message)))
        if len(pending) >= outstanding:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*pending)


async def client(config: dict[str, Any]) -> None:
    directory = DidKeyResolver()
    peer = Peer(Path(config["work"]), "client", config, directory)
    settled()
    server_did, port = config["did"], config["port"]
    directory.publish_bundle(server_did, bytes.fromhex(config["bundle"]), peer.now_us())
    manager = peer.manager
    result: dict[str, Any] = {"connect": [], "echo_s": [], "phases": {}}
    prober = asyncio.ensure_future(peer.stalls.probe())

    async def session_on(node: TcpNode) -> Any:
        if config["transport"] == "quic":
            await node.connect_quic(server_did, "127.0.0.1", port)
        else:
            await node.connect(server_did, "127.0.0.1", port)
        sid = await node.establish(server_did)
        await node.until(lambda: manager.session(sid).state == ESTABLISHED, WAIT_S)
        return sid  # and the conversation's id: this end initiated it

    await phase("connect")
    for _ in range(config["connects"]):
        node = peer.node()  # a fresh node and connection each time, made before the clock
        start = time.monotonic()
        sid = await session_on(node)
        result["connect"].append([str(sid), start, time.monotonic()])
        await node.close(end_sessions=True)
    node = peer.node()
    sid = await session_on(node)  # the session the messages travel on
    result["phases"]["connect"] = peer.take()

    def acknowledged() -> bool:
        return not manager.session(sid).outbox

    await phase("echo")
    message = b"e" * config["echo_bytes"]
    for _ in range(config["echoes"]):
        start = time.monotonic()
        await node.send(sid, message)
        await asyncio.wait_for(node.receive(), WAIT_S)
        result["echo_s"].append(time.monotonic() - start)
    await node.until(acknowledged, WAIT_S)
    await asyncio.sleep(0.05)  # the server's last acknowledgements arrive in this phase
    result["phases"]["echo"] = peer.take()

    await phase("answer")  # the same echo, answered by the server node's ``answer``
    result["answer_s"] = []
    for _ in range(config["echoes"]):
        start = time.monotonic()
        await node.send(sid, message)
        await asyncio.wait_for(node.receive(), WAIT_S)
        result["answer_s"].append(time.monotonic() - start)
    await node.until(acknowledged, WAIT_S)
    await asyncio.sleep(0.05)
    result["phases"]["answer"] = peer.take()

    await phase("bulk")
    message = b"b" * config["bulk_bytes"]
    result["bulk_start"] = time.monotonic()
    async with asyncio.timeout(WAIT_S):
        await stream(node, sid, [message] * config["bulk_messages"], 2 * config["window"])
    await node.until(acknowledged, WAIT_S)  # acknowledged: delivered
    result["bulk_acked"] = time.monotonic()
    result["phases"]["bulk"] = peer.take()

    await phase("done")
    say(result=result)
    prober.cancel()
    await node.close()
    peer.close()


if __name__ == "__main__":
    role, settings = sys.argv[1], json.loads(sys.argv[2])
    asyncio.run(serve(settings) if role == "server" else client(settings))
