"""What the manager needs of the ledger: the interface the domain declares and the
infrastructure implements (``SessionLedger``; any eventsourcing ``Application`` fits).

The manager and the parts mixed into it (answering.py, recovery.py) all name it, so it lives
here, below them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol
from uuid import UUID


class Ledger(Protocol):
    """Saves aggregates and reads them back. To find the sessions that were live when the node
    stopped (decision 16) the manager asks the ledger's ``live_session_ids`` if it has one
    (``LiveSessionIndex``), else scans its recorder's notifications (recovery.py)."""

    @property
    def repository(self) -> Any: ...

    def save(self, *objs: Any, **kwargs: Any) -> Any: ...


class LiveSessionIndex(Protocol):
    """A ledger that can name its live sessions without replaying them (SessionLedger)."""

    def live_session_ids(self, opened_topic: str, final_topics: Sequence[str]) -> Iterable[UUID]:
        """The sessions this node opened (first event ``opened_topic``) whose newest event is
        none of ``final_topics``."""
        ...
