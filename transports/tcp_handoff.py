"""What passes between a TCP node's event loop (tcp.py, tcp_links.py) and its worker thread
(tcp_worker.py): the connections, as the worker knows them; the batch the loop collected; the
outcome of each of its stages and the report after it. The loop makes a ``Batch`` and hands
it over; from then until the worker's report, only the worker reads or writes it and what it
holds (the loop only resolves the futures of ``Pending`` things it gets back)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from l2_session.domain.session.commands import Deliver
from l2_session.transports.pipes import Pipe
from l2_session.transports.tcp_bounds import source_of


@dataclass(eq=False)
class Link:
    """One connection — TCP or QUIC, its ``pipe`` (pipes.py) — and the DID it is with
    (claimed or, once proven, proved). ``did`` is set before the worker hears of the link and
    never changes after; ``source`` is read from the socket when the link is made, so the
    worker needs nothing of the socket."""

    pipe: Pipe
    did: str
    outgoing: bool
    source: str = field(init=False)

    def __post_init__(self) -> None:
        self.source = source_of(self.pipe.peername())

    @property
    def kind(self) -> str:
        """The transport: ``quic`` or ``utcp`` (decision 24)."""
        return self.pipe.kind

    @property
    def address(self) -> str:
        peer = self.pipe.peername()
        return "" if peer is None else f"{peer[0]}:{peer[1]}"

    @property
    def name(self) -> str:
        return self.did or f"a connection from {self.address} in its hello"


class Pending:
    """Something the application waits on (a send, a command): the worker sets ``result``
    or ``error``; the loop resolves ``done`` with it."""

    __slots__ = ("done", "error", "result")

    def __init__(self, done: asyncio.Future[Any]) -> None:
        self.done = done
        self.result: Any = None
        self.error: BaseException | None = None

    def resolve(self) -> None:
        """On the loop, once the worker decided."""
        if self.done.done():
            return  # cancelled meanwhile: nothing is undone (see TcpNode.send)
        if self.error is not None:
            self.done.set_exception(self.error)
        else:
            self.done.set_result(self.result)


class Message(Pending):
    """An application's message, until its ``MessageQueued`` is saved (or refused)."""

    __slots__ = ("payload", "session_id")

    def __init__(self, session_id: UUID, payload: bytes, done: asyncio.Future[Any]) -> None:
        super().__init__(done)
        self.session_id, self.payload = session_id, payload


class Command(Pending):
    """A function run on the worker (``TcpNode.command``, ``query``, ``until``)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any], done: asyncio.Future[Any]) -> None:
        super().__init__(done)
        self.fn = fn


@dataclass
class Batch:
    """What the loop collected while the worker was busy, decided in this order."""

    links: list[tuple[Link, bool]] = field(default_factory=list)  # (link, up), in order
    commands: list[Command] = field(default_factory=list)
    frames: list[tuple[Link, bytes]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    tick: bool = False
    watch: set[UUID] = field(default_factory=set)  # sessions whose room the loop waits on
    conditions: list[Command] = field(default_factory=list)  # ``until``: re-checked after

    def __bool__(self) -> bool:
        return bool(
            self.links or self.commands or self.frames or self.messages or self.tick
            or self.conditions
        )  # fmt: skip


@dataclass
class Outcome:
    """What one stage of a batch asks the loop to do, in this order: drop connections
    (a frame broke their framing), mark connections proven, write, close the connections a
    link check replaced (``settled``: the links a check's answer settled; this node's other
    connections to that peer over later transports close once what was written on them is
    out), deliver, answer."""

    dropped: list[tuple[Link, str]] = field(default_factory=list)
    proven: list[Link] = field(default_factory=list)
    writes: list[tuple[Link, bytes]] = field(default_factory=list)
    settled: list[Link] = field(default_factory=list)
    delivered: list[Deliver] = field(default_factory=list)
    decided: list[Pending] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.dropped or self.proven or self.writes or self.settled or self.delivered
            or self.decided
        )  # fmt: skip


@dataclass
class Report:
    """After a whole batch: the room of the sessions watched (None: unknown, or a session
    that takes no more messages — its sends go on and are refused with the reason), when
    the manager wants its next tick, and the outcome of the batch's last stage."""

    room: dict[UUID, int | None]
    next_wakeup_us: int | None
    outcome: Outcome
