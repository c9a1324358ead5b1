"""A UDP relay for chaos tests (importable: pytest puts tests/ on sys.path, for its
conftest): between a client and a server, it loses datagrams at random (seeded), partitions
them, and rebinds its port as a NAT does."""

from __future__ import annotations

import asyncio
import random
from typing import Any


class ChaosRelay(asyncio.DatagramProtocol):
    """Alice sends to ``address``; the relay forwards to Bob from its upstream socket and
    Bob's answers back, losing ``loss`` of the datagrams each way (seeded), none while
    ``partitioned``; ``rebind`` moves the upstream socket to a new port."""

    def __init__(self, server: tuple[str, int], loss: float, seed: int) -> None:
        self.server, self.loss, self.random = server, loss, random.Random(seed)
        self.partitioned = False
        self.lost = self.forwarded = 0
        self.client: Any = None
        self._down: asyncio.DatagramTransport | None = None
        self._up: asyncio.DatagramTransport | None = None

    @classmethod
    async def start(cls, server: tuple[str, int], loss: float, seed: int) -> ChaosRelay:
        relay = cls(server, loss, seed)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
        await relay.rebind()
        return relay

    @property
    def address(self) -> tuple[str, int]:
        assert self._down is not None
        return self._down.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    async def rebind(self) -> None:
        old = self._up
        loop = asyncio.get_running_loop()
        self._up, _ = await loop.create_datagram_endpoint(
            lambda: _Answers(self), local_addr=("127.0.0.1", 0)
        )
        if old is not None:
            old.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._down = transport  # type: ignore[assignment]

    def _passes(self) -> bool:
        if self.partitioned or self.random.random() < self.loss:
            self.lost += 1
            return False
        self.forwarded += 1
        return True

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client = addr
        if self._up is not None and self._passes():
            self._up.sendto(data, self.server)

    def answer(self, data: bytes) -> None:
        if self._down is not None and self.client is not None and self._passes():
            self._down.sendto(data, self.client)

    def close(self) -> None:
        for transport in (self._down, self._up):
            if transport is not None:
                transport.close()


class _Answers(asyncio.DatagramProtocol):
    def __init__(self, relay: ChaosRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.answer(data)
