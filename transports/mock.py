"""SPEC-018 §6.3 mock interfaces: ``MockTransport`` and a ``Simulation`` of session managers.

The §6.3 ``MockResolver`` lives with the real resolver in ``infrastructure/resolver.py``.

They ship in the library so that users can simulate their own systems. Everything is driven
by a ``ManualClock`` and a seed: the same seed and the same calls give the same run.

``MockTransport`` carries frames between named nodes with latency, loss, duplication,
reordering and partitions. Delivery order is by (delivery time, send order); reordering adds
a random extra delay to some frames so that they overtake each other.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from l2_session.domain.manager.manager import Answer, SessionManager
from l2_session.domain.session.commands import Deliver, Frame, Output, Send
from l2_session.domain.session.states import State
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.ledger.witness import Witnessing
from l2_session.transports.witness_frames import (
    WITNESS_FRAMES,
    CheckpointOffer,
    CheckpointReply,
    offer_frame,
    take,
)


@dataclass
class LinkProfile:
    latency: float = 0.010
    """Seconds from send to delivery."""
    loss: float = 0.0
    """Probability that a frame is dropped."""
    duplication: float = 0.0
    """Probability that a frame is delivered twice."""
    reordering: float = 0.0
    """Probability that a frame gets an extra delay of up to ``reorder_delay``."""
    reorder_delay: float = 0.050

    def __post_init__(self) -> None:
        for name in ("loss", "duplication", "reordering"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"LinkProfile.{name} = {value!r}: expected 0 <= p <= 1")
        for name in ("latency", "reorder_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"LinkProfile.{name} = {getattr(self, name)!r}: expected >= 0")


@dataclass
class TransportStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    blocked: int = 0


@dataclass(order=True)
class _InFlight:
    at_us: int
    order: int
    src: str = field(compare=False)
    dst: str = field(compare=False)
    frame: Any = field(compare=False)


class MockTransport:
    def __init__(self, clock: ManualClock, *, seed: int = 0, profile: LinkProfile | None = None):
        self.clock = clock
        self.profile = profile or LinkProfile()
        self.stats = TransportStats()
        self._rng = random.Random(seed)
        self._order = itertools.count()
        self._in_flight: list[_InFlight] = []
        self._partitions: set[frozenset[str]] = set()
        self._isolated: set[str] = set()
        self._failed_transports: set[tuple[str, str]] = set()

    # -------------------------------------------------------------- controls
    def partition(self, a: str, b: str) -> None:
        """Drop every frame between ``a`` and ``b`` (both ways) until ``heal``."""
        self._partitions.add(frozenset((a, b)))

    def heal(self, a: str, b: str) -> None:
        self._partitions.discard(frozenset((a, b)))

    def isolate(self, node: str) -> None:
        self._isolated.add(node)

    def rejoin(self, node: str) -> None:
        self._isolated.discard(node)

    def fail_transport(self, node: str, transport: str) -> None:
        """Frames ``node`` sends over ``transport`` (e.g. "quic") are dropped."""
        self._failed_transports.add((node, transport))

    def is_blocked(self, src: str, dst: str, transport: str = "quic") -> bool:
        return (
            frozenset((src, dst)) in self._partitions
            or src in self._isolated
            or dst in self._isolated
            or (src, transport) in self._failed_transports
        )

    # -------------------------------------------------------------- carrying frames
    def send(self, src: str, dst: str, frame: Frame, transport: str = "quic") -> None:
        self.stats.sent += 1
        if self.is_blocked(src, dst, transport):
            self.stats.blocked += 1
            return
        p = self.profile
        if self._rng.random() < p.loss:
            self.stats.lost += 1
            return
        copies = 2 if self._rng.random() < p.duplication else 1
        self.stats.duplicated += copies - 1
        now = self.clock.wall_us()
        for _ in range(copies):
            delay = p.latency
            if self._rng.random() < p.reordering:
                delay += self._rng.random() * p.reorder_delay
            at = now + round(delay * 1_000_000)
            heapq.heappush(self._in_flight, _InFlight(at, next(self._order), src, dst, frame))

    def due(self) -> Iterator[tuple[str, str, Frame]]:
        """Frames whose delivery time has come, in delivery order; a partition that began
        while a frame was in flight drops it on arrival."""
        now = self.clock.wall_us()
        while self._in_flight and self._in_flight[0].at_us <= now:
            item = heapq.heappop(self._in_flight)
            if frozenset((item.src, item.dst)) in self._partitions or item.dst in self._isolated:
                self.stats.blocked += 1
                continue
            self.stats.delivered += 1
            yield item.src, item.dst, item.frame

    def next_delivery_us(self) -> int | None:
        return self._in_flight[0].at_us if self._in_flight else None

    def in_flight(self) -> int:
        return len(self._in_flight)


RETRY_AFTER_FAILURE_US = 1_000  # a node whose call failed tries again this much later


class Simulation:
    """Session managers wired through one ``MockTransport`` and one ``ManualClock``.

    With ``failures_lost``, a node whose ``receive`` or ``tick`` raises (its ledger failed to
    save, say) goes on as a real node does: what that call would have sent is lost, as on a
    network, the failure is counted in ``failures``, and time moves on a millisecond before
    the next try. By default the error propagates."""

    def __init__(
        self, clock: ManualClock, transport: MockTransport, *, failures_lost: bool = False
    ) -> None:
        self.clock = clock
        self.transport = transport
        self.nodes: dict[str, SessionManager] = {}
        self.delivered: dict[str, list[Deliver]] = {}
        # A node's ``answer`` (decision 23): its frames are decided by ``receive_each`` with
        # it, so that each answer rides in the save of the delivery it answers.
        self.answers: dict[str, Answer] = {}
        self.failures_lost = failures_lost
        self.failures = 0
        # Peers witnessing each other's ledgers (decision 25), as a node's worker does it:
        # a node given here offers each peer with an established session its checkpoint when
        # the session is up and every ``witness_interval_us``; the frames ride the transport.
        self.witnessing: dict[str, Witnessing] = {}
        self.witness_interval_us = 300_000_000
        self._witness_due: dict[tuple[str, str], int] = {}

    def add(self, manager: SessionManager) -> SessionManager:
        self.nodes[manager.local_did] = manager
        self.delivered[manager.local_did] = []
        return manager

    def perform(self, node: str, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                self.transport.send(node, output.peer_did, output.frame, output.transport)
            else:
                self.delivered[node].append(output)

    def run_until(self, until_us: int) -> None:
        """Advance the clock to ``until_us``, stopping at every delivery and deadline."""
        while True:
            now, failures = self.clock.wall_us(), self.failures
            for src, dst, frame in self.transport.due():
                if isinstance(frame, WITNESS_FRAMES):
                    self._witness_frame(dst, src, frame, now)
                elif dst in self.nodes:
                    self.perform(dst, self._call(self._receive, dst, src, frame, now))
            for did, manager in list(self.nodes.items()):
                self.perform(did, self._call(manager.tick, now))
            self._witness(now)
            candidates = [self.transport.next_delivery_us()]
            candidates += [m.next_wakeup_us() for m in self.nodes.values()]
            upcoming = [c for c in candidates if c is not None and c > now]
            # Offers due later; one due now for a session not established waits for it.
            upcoming += [d for d in self._witness_due.values() if d > now]
            if self.failures > failures:
                upcoming.append(now + RETRY_AFTER_FAILURE_US)  # as a node's timer retries
            elif any(c is not None and c <= now for c in candidates):
                continue  # something became due at this same instant
            step_to = min([*upcoming, until_us])
            if step_to <= now:
                return
            self.clock.advance((step_to - now) / 1_000_000)

    def _witness(self, now: int) -> None:
        for did, witnessing in self.witnessing.items():
            if did not in self.nodes:
                continue
            for session in self.nodes[did].sessions():
                key = (did, session.peer_did)
                if session.state != State.ESTABLISHED or self._witness_due.get(key, 0) > now:
                    continue
                self._witness_due[key] = now + self.witness_interval_us
                frame = offer_frame(witnessing, session.peer_did, session.conversation)
                if frame is not None:
                    self.transport.send(did, session.peer_did, cast(Frame, frame))

    def _witness_frame(
        self, dst: str, src: str, frame: CheckpointOffer | CheckpointReply, now: int
    ) -> None:
        witnessing = self.witnessing.get(dst)
        if witnessing is None:
            return
        reply = take(witnessing, src, frame, now)
        if reply is not None:
            self.transport.send(dst, src, cast(Frame, reply))

    def _receive(self, dst: str, src: str, frame: Frame, now: int) -> list[Output]:
        answer = self.answers.get(dst)
        if answer is None:
            return self.nodes[dst].receive(src, frame, now)
        (outputs,) = self.nodes[dst].receive_each([(src, frame)], now, answer=answer)
        return outputs

    def _call(self, entry: Callable[..., list[Output]], *args: Any) -> list[Output]:
        try:
            return entry(*args)
        except Exception:
            if not self.failures_lost:
                raise
            self.failures += 1
            return []

    def run_for(self, seconds: float) -> None:
        self.run_until(self.clock.wall_us() + round(seconds * 1_000_000))
