"""What carries a node's frames on one connection, whatever the transport: a ``Pipe``.

A node (tcp.py) routes, seals and decides frames the same way over every transport; what
differs is only how a connection's bytes leave and how it ends. A pipe is that difference:

- ``TcpPipe``: a TCP connection (asyncio's ``StreamWriter``); frames are written to the
  socket's buffer;
- ``QuicPipe``: a QUIC link (quic_link.py); frames go on its one stream, each when the link's
  send buffer has room for it — in the order given, those that find no room waiting in the
  pipe until it has (a link's buffer is bounded; asyncio's TCP buffer is not).

Reading is the connection's own (tcp_links.py reads TCP, ``QuicLink.receive`` QUIC): a pipe
only writes and closes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from l2_session.domain.session.session import QUIC, UTCP
from l2_session.transports.quic_link import LinkClosed, QuicLink


class Pipe(Protocol):
    """One connection's way out."""

    kind: str  # the transport a session over it records (decision 20)

    def peername(self) -> Any: ...
    def closing(self) -> bool: ...
    def write(self, frames: list[bytes]) -> None: ...
    def unsent(self) -> int: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class TcpPipe:
    kind = UTCP  # the node's framed TCP is the spec's μTCP (decision 24)

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def peername(self) -> Any:
        return self.writer.get_extra_info("peername")

    def closing(self) -> bool:
        return self.writer.is_closing()

    def write(self, frames: list[bytes]) -> None:
        self.writer.write(b"".join(frames))

    def unsent(self) -> int:
        """Bytes written and not yet handed to the kernel."""
        return self.writer.transport.get_write_buffer_size()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Close at once, discarding what was not sent."""
        self.writer.transport.abort()


class QuicPipe:
    kind = QUIC

    def __init__(self, link: QuicLink) -> None:
        self.link = link
        self._waiting: deque[bytes] = deque()  # frames the link had no room for yet
        self._flusher: asyncio.Task[None] | None = None

    def peername(self) -> Any:
        return self.link.peer_address

    def closing(self) -> bool:
        return self.link.closed

    @property
    def waiting(self) -> int:
        """Frames held until the link's send buffer has room."""
        return len(self._waiting)

    def write(self, frames: list[bytes]) -> None:
        for frame in frames:
            if self._waiting or not self.link.try_send(frame):
                self._waiting.append(frame)  # after those already waiting: order kept
        if self._waiting and self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())

    def unsent(self) -> int:
        """Frames held, and bytes sent that the peer has not acknowledged yet."""
        return len(self._waiting) + self.link.send_buffered

    async def _flush(self) -> None:
        try:
            while self._waiting:
                await self.link.send(self._waiting[0])
                self._waiting.popleft()
        except LinkClosed:
            self._waiting.clear()  # lost with the link, as on a network
        finally:
            self._flusher = None

    def close(self) -> None:
        self._stop()
        self.link.close()

    def abort(self) -> None:
        self._stop()
        self.link.close("cut")

    def _stop(self) -> None:
        self._waiting.clear()
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
