"""The py-libp2p side of the messages suite (bench_messages.py): one server or one client
process, run by the python of the venv the suite makes for py-libp2p (never the package's own:
py-libp2p is not a dependency of l2-session). Standalone on purpose: it imports nothing from
this repository.

py-libp2p 0.8.1 as a Python developer gets it from ``new_host()``: TCP, its default security
(Noise) and stream muxer (yamux), identify and the rest of its defaults, and one setting:
``ConnectionConfig(max_connections_per_peer=1)``, so that a dial returns as soon as its first
connection is up instead of waiting out the happy-eyeballs delay for more.

``server CONFIG`` / ``client CONFIG`` (CONFIG: JSON). The process protocol is the one
messages_ours.py speaks; bench_messages.py drives both:
- the server prints ``{"ready": ..., "address": ...}``, then answers each stdin line
  ``phase NAME`` with what it recorded since the line before (JSON) and ``end`` with the same,
  then exits;
- the client prints ``{"phase": NAME}`` before each phase and waits for ``go`` on stdin, and
  prints ``{"result": ...}`` at the end.
Times are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of the machine),
so a client's start and the server's last delivery can be subtracted.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr

CONNECT = TProtocol("/l2-bench/connect/1.0.0")
ECHO = TProtocol("/l2-bench/echo/1.0.0")
BULK = TProtocol("/l2-bench/bulk/1.0.0")
LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


def say(**what: Any) -> None:
    print(json.dumps(what), flush=True)


def make_host() -> Any:
    return new_host(connection_config=ConnectionConfig(max_connections_per_peer=1))


class Stalls:
    """The longest a 1 ms sleep overslept: how long the event loop could not run a task."""

    def __init__(self) -> None:
        self.longest = 0.0

    async def probe(self) -> None:
        while True:
            start = time.monotonic()
            await trio.sleep(0.001)
            self.longest = max(self.longest, time.monotonic() - start - 0.001)

    def take(self) -> float:
        longest, self.longest = self.longest, 0.0
        return longest


async def read_exactly(stream: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.read(n - len(data))
        if not chunk:
            raise EOFError(f"stream ended after {len(data)} of {n} bytes")
        data += chunk
    return data


async def readline() -> str:
    return await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)


# ---------------------------------------------------------------------------- server
async def serve(config: dict[str, Any]) -> None:
    host = make_host()
    stalls = Stalls()
    records: dict[str, Any] = {"connected": [], "bulk_done": None}

    async def on_connect(stream: Any) -> None:
        records["connected"].append(time.monotonic())
        await stream.close()

    async def on_echo(stream: Any) -> None:
        size = config["echo_bytes"]
        try:
            while True:
                await stream.write(await read_exactly(stream, size))
        except Exception:  # the client closed the stream: the echo phase is over
            pass

    async def on_bulk(stream: Any) -> None:
        await read_exactly(stream, config["bulk_messages"] * config["bulk_bytes"])
        records["bulk_done"] = time.monotonic()
        await stream.write(b"k")

    host.set_stream_handler(CONNECT, on_connect)
    host.set_stream_handler(ECHO, on_echo)
    host.set_stream_handler(BULK, on_bulk)
    async with host.run(listen_addrs=[LOOPBACK]), trio.open_nursery() as nursery:
        nursery.start_soon(stalls.probe)
        address = next(str(a) for a in host.get_addrs() if "/tcp/" in str(a))
        say(ready=True, address=address)
        while True:
            line = (await readline()).split()
            if not line:
                break
            say(phase=line[-1], stall_s=stalls.take(), **records)
            records = {"connected": [], "bulk_done": None}
            if line[0] == "end":
                break
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- client
async def phase(name: str) -> None:
    say(phase=name)
    if (await readline()).strip() != "go":
        raise SystemExit(f"no go for phase {name}")


async def client(config: dict[str, Any]) -> None:
    host = make_host()
    stalls = Stalls()
    info = info_from_p2p_addr(multiaddr.Multiaddr(config["address"]))
    result: dict[str, Any] = {"connect": [], "echo_s": [], "stall_s": {}}
    async with host.run(listen_addrs=[LOOPBACK]), trio.open_nursery() as nursery:
        nursery.start_soon(stalls.probe)

        await phase("connect")
        for _ in range(config["connects"]):
            start = time.monotonic()
            await host.connect(info)  # dialled: TCP, Noise and yamux
            dialled = time.monotonic()
            stream = await host.new_stream(info.peer_id, [CONNECT])
            result["connect"].append([start, time.monotonic(), dialled])
            await stream.close()
            await host.disconnect(info.peer_id)
        result["stall_s"]["connect"] = stalls.take()

        await phase("echo")
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [ECHO])
        message = b"e" * config["echo_bytes"]
        for _ in range(config["echoes"]):
            start = time.monotonic()
            await stream.write(message)
            await read_exactly(stream, len(message))
            result["echo_s"].append(time.monotonic() - start)
        await stream.close()
        result["stall_s"]["echo"] = stalls.take()

        await phase("bulk")
        stream = await host.new_stream(info.peer_id, [BULK])
        message = b"b" * config["bulk_bytes"]
        result["bulk_start"] = time.monotonic()
        for _ in range(config["bulk_messages"]):
            await stream.write(message)  # one message, one yamux frame
        await read_exactly(stream, 1)  # the server has them all
        result["stall_s"]["bulk"] = stalls.take()
        await stream.close()

        await phase("done")
        say(result=result)
        nursery.cancel_scope.cancel()
    await host.close()


if __name__ == "__main__":
    role, settings = sys.argv[1], json.loads(sys.argv[2])
    trio.run(serve if role == "server" else client, settings)
