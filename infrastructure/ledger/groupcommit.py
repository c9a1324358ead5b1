"""Group commit: appends from many callers share one transaction.

The first caller to arrive becomes the *leader*: it takes every queued request (up to
``max_batch_events`` events), commits them in one transaction, and wakes their callers. While it
commits, new requests queue up; when it is done it hands leadership to the oldest waiting caller,
whose batch is everything that queued meanwhile. Under load, batches grow by themselves, so one
fsync covers many appends and signing sets the pace; with one caller, nothing waits.
``max_delay`` (seconds) lets a leader wait a little for a fuller batch (default 0: never wait).
``close()`` refuses new requests (``LedgerClosed``) and returns once every request submitted
before it has been committed or refused: nothing is left using the store being closed.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from l2_session.infrastructure.ledger.errors import LedgerClosed

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class GroupCommitConfig:
    max_batch_events: int = 4096
    max_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch_events < 1:
            raise ValueError(
                f"GroupCommitConfig.max_batch_events must be >= 1, got {self.max_batch_events}"
            )
        if not 0.0 <= self.max_delay <= 1.0:
            raise ValueError(
                f"GroupCommitConfig.max_delay must be between 0 and 1 second, got {self.max_delay}"
            )


class _Request(Generic[T, R]):
    __slots__ = ("done", "error", "items", "lead", "result", "wake")

    def __init__(self, items: Sequence[T]) -> None:
        self.items = items
        self.result: R | None = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        # Made only for a caller that will wait (someone else is leading): a lone caller
        # commits on its own thread and never needs waking.
        self.wake: threading.Event | None = None


# A batch commit returns, per request, either its result or the exception that request raised
# (a per-request failure rolls back only that request); raising fails the whole batch.
BatchCommit = Callable[[list[Sequence[T]]], list["R | BaseException"]]


class GroupCommitter(Generic[T, R]):
    def __init__(self, commit_batch: BatchCommit[T, R], config: GroupCommitConfig) -> None:
        self._commit_batch = commit_batch
        self._config = config
        self._cond = threading.Condition()
        self._queue: deque[_Request[T, R]] = deque()
        self._queued_items = 0
        self._leading = False
        self._closed = False
        self.batches = 0  # transactions committed (for tests and benchmarks)
        self.requests = 0

    def submit(self, items: Sequence[T]) -> R:
        request: _Request[T, R] = _Request(items)
        with self._cond:
            if self._closed:
                raise LedgerClosed(
                    "the ledger was closed: nothing more can be appended (open it again)"
                )
            self._queue.append(request)
            self._queued_items += len(items)
            if self._leading:
                request.wake = threading.Event()
                self._cond.notify_all()
            else:
                self._leading = True
                request.lead = True
        if request.wake is not None:
            request.wake.wait()
        if not request.done:
            self._lead()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _lead(self) -> None:
        limit = self._config.max_batch_events
        with self._cond:
            if self._config.max_delay > 0 and self._queued_items < limit:
                self._cond.wait_for(
                    lambda: self._queued_items >= limit, timeout=self._config.max_delay
                )
            batch: list[_Request[T, R]] = []
            taken = 0
            while self._queue and (not batch or taken + len(self._queue[0].items) <= limit):
                request = self._queue.popleft()
                batch.append(request)
                taken += len(request.items)
            self._queued_items -= taken
        try:
            outcomes = self._commit_batch([r.items for r in batch])
        except BaseException as error:  # the whole transaction failed: every caller learns why
            outcomes = [error] * len(batch)
        self.batches += 1
        self.requests += len(batch)
        for request, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                request.error = outcome
            else:
                request.result = outcome
            request.done = True
        with self._cond:
            if self._queue:
                successor = self._queue[0]
                successor.lead = True
                assert successor.wake is not None  # it queued while this leader led
                successor.wake.set()
            else:
                self._leading = False
                self._cond.notify_all()  # close() may be waiting for the last leader
        for request in batch:
            if request.wake is not None:
                request.wake.set()

    def close(self) -> None:
        """Refuse new requests; return once those already queued are done. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: not self._leading)
