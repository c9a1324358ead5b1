"""How much a TCP node lets its connections hold, and which connection goes when it is full
(docs/security.md, "Denial of service"; tcp_links.py holds the connections).

Anyone can open connections, so the node decides whom to keep when they are more than it
will hold: peers that proved who they are (tcp_worker.py) and connections it dialled itself are
kept; of the others, the least recently active goes first — as a SYN cache forgets the
oldest half-open connection — so connections that sit idle cannot lock out a peer that
talks. The same order decides who gives back room in the node's budget for frames being
read. Sans-I/O: the node cuts the connections this names.

Sources (decision 19 in docs/spec-decisions.md): the admission gate budgets handshakes per
source, and a source is where a connection comes from without its port — a new connection
has a new port — and, for IPv6, the /64 one host commonly holds whole.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar


def source_of(peername: Any) -> str:
    """The source of a connection whose socket's peer name is ``peername``: its IPv4
    address (also when mapped into IPv6), or its IPv6 address's /64; "" if unknown."""
    if not peername:
        return ""
    address = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])  # no IPv6 zone
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class NoRoom(Exception):
    """A frame the node has no room to read: the budget is held by connections kept."""


C = TypeVar("C", bound=Hashable)


class Occupancy(Generic[C]):
    """The connections that may be cut for room (accepted, not proven), least recently active
    first, and the bytes of frames being read, all connections together."""

    def __init__(self, max_partial_bytes: int) -> None:
        self.max_partial_bytes = max_partial_bytes
        self.partial_bytes = 0
        self._unproven: OrderedDict[C, None] = OrderedDict()
        self._reserved: dict[C, int] = {}

    def opened(self, connection: C) -> None:
        """An accepted connection: unproven, and the most recently active."""
        self._unproven[connection] = None

    def active(self, connection: C) -> None:
        if connection in self._unproven:
            self._unproven.move_to_end(connection)

    def proven(self, connection: C) -> None:
        """Kept from now on: it is never cut for room."""
        self._unproven.pop(connection, None)

    def closed(self, connection: C) -> None:
        self._unproven.pop(connection, None)
        self.release(connection)

    def least_active(self) -> C | None:
        """The connection to cut for a new one, if any may be cut."""
        return next(iter(self._unproven), None)

    def reserve(self, connection: C, n: int, cut: Callable[[C], None]) -> None:
        """Count the ``n`` bytes of a frame ``connection`` is about to read. If that is more
        than the budget has free, ``cut`` the least recently active unproven connections
        holding part of it; if that is not enough, ``NoRoom``."""
        while self.partial_bytes + n > self.max_partial_bytes:
            holders = (c for c in self._unproven if c in self._reserved and c != connection)
            holder = next(holders, None)
            if holder is None:
                raise NoRoom(
                    f"no room for a frame of {n} bytes: {self.partial_bytes} of "
                    f"{self.max_partial_bytes} bytes of frames being read are kept connections'"
                )
            cut(holder)
            self.closed(holder)
        self.release(connection)
        self._reserved[connection] = n
        self.partial_bytes += n

    def release(self, connection: C) -> None:
        """The frame is read (or will not be): its bytes go back to the budget."""
        self.partial_bytes -= self._reserved.pop(connection, 0)
