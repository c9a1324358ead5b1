"""A session manager over TCP with asyncio: the thin adapter around the sans-I/O core.

Bytes from a connection become frames (frames.py) and ``manager.receive`` calls; the manager's
``Send`` outputs are written to the connection of their peer; its deadlines are served by one
timer task calling ``manager.tick``. Time comes from the caller's timeline (decision 9:
``infrastructure.clock.SessionTimeline`` in a real process).

A connection opens with the connecting node's DID (``u16 length | UTF-8``), so that the
accepting node knows which peer's frames arrive on it. That is a claim, not a proof: the
handshake proves it (the INIT is signed by the DID's key, a RESUME carries a MAC under the
session's secret), and a frame that does not fit its session is dropped by the manager. The
handshake engine keys quarantine by identity and *address* (``address_of``), never by the
claim alone. Limit: routing follows the latest claim, so a connection claiming a DID takes
over the frames sent to it until the real peer reconnects; binding a connection to the DID its
handshake proved is the transports issue's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from l2_session.domain.commands import Deliver, Output, Send
from l2_session.domain.manager import SessionManager
from l2_session.transports.frames import FrameError, body_length, decode, encode

HELLO_LENGTH = struct.Struct(">H")
TIMER_IDLE_S = 0.05  # the timer task re-checks at least this often


class TcpNode:
    def __init__(self, manager: SessionManager, now_us: Callable[[], int]) -> None:
        self.manager, self.now_us = manager, now_us
        self.delivered: list[Deliver] = []
        self.dropped_connections: list[str] = []
        self._writers: dict[str, asyncio.StreamWriter] = {}
        self._progress = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ connections
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        return await asyncio.start_server(self._accepted, host, port)

    async def connect(self, peer_did: str, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        _no_delay(writer)
        did = self.manager.local_did.encode()
        writer.write(HELLO_LENGTH.pack(len(did)) + did)
        self._writers[peer_did] = writer
        self._spawn(self._read(peer_did, reader))

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _no_delay(writer)
        try:
            (n,) = HELLO_LENGTH.unpack(await reader.readexactly(HELLO_LENGTH.size))
            peer_did = (await reader.readexactly(n)).decode()
        except (asyncio.IncompleteReadError, UnicodeDecodeError) as error:
            self.dropped_connections.append(f"bad hello: {error}")
            writer.close()
            return
        self._writers[peer_did] = writer
        # The server runs this handler as its own task; one cancelled at shutdown must end
        # quietly here (asyncio logs the CancelledError of a handler task as an error).
        with contextlib.suppress(asyncio.CancelledError):
            await self._read(peer_did, reader)

    async def _read(self, peer_did: str, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                body = await reader.readexactly(body_length(await reader.readexactly(4)))
                self.perform(self.manager.receive(peer_did, decode(body), self.now_us()))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away; its sessions notice through their deadlines
        except FrameError as error:
            # A stream that broke framing cannot be resynchronised: drop the connection.
            self.dropped_connections.append(f"{peer_did}: {error}")
        writer = self._writers.pop(peer_did, None)
        if writer is not None:
            writer.close()

    def address_of(self, peer_did: str) -> str:
        """The address ``peer_did``'s frames arrive from: the source the handshake engine keys
        quarantine and rate limits by (``PqxdhKeyExchange(source_of=node.address_of)``)."""
        writer = self._writers.get(peer_did)
        peer = None if writer is None else writer.get_extra_info("peername")
        return "" if peer is None else f"{peer[0]}:{peer[1]}"

    # ------------------------------------------------------------------ outputs and time
    def perform(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                writer = self._writers.get(output.peer_did)
                if writer is not None:  # no connection: the frame is lost, as on a network
                    writer.write(encode(output.frame))
            else:
                self.delivered.append(output)
        self._progress.set()

    async def run_timers(self) -> None:
        """Serve the manager's deadlines until cancelled."""
        while True:
            now = self.now_us()
            self.perform(self.manager.tick(now))
            wake = self.manager.next_wakeup_us()
            delay = TIMER_IDLE_S if wake is None else (wake - now) / 1e6
            await asyncio.sleep(min(TIMER_IDLE_S, max(0.0, delay)))

    def start_timers(self) -> None:
        self._spawn(self.run_timers())

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> None:
        """Until ``condition()`` holds, re-checked whenever a frame or deadline was handled."""
        async with asyncio.timeout(timeout_s):
            while not condition():
                self._progress.clear()
                await self._progress.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _no_delay(writer: asyncio.StreamWriter) -> None:
    # Handshake messages are small and latency-bound: do not let Nagle hold them back.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
