"""What a handshake that never proved who sent it costs the ledger (decision 18 in
docs/spec-decisions.md).

A responder answers a handshake request before the initiator has proved anything: the
request is signed, but only the key confirmation shows that its sender holds the keys the
answer derived. Anyone can make identities and send requests, so a ledger that recorded each
answered request as a session would grow with an attacker's traffic. A responder's session
that was never saved and fails holding nothing (``timers.holds_nothing``) is therefore never
written; the manager counts it here, by outcome (its failure reason), and writes one signed
``UnconfirmedHandshakes`` summary per interval in which there were any. The ledger then grows
with time, at most one event an interval, never with traffic.
"""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import State
from l2_session.domain.session.timers import holds_nothing, timestamp_of
from l2_session.domain.session.topics import pin_topics

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://libertaria.org/l2-session/unconfirmed")


def never_saved_answer(s: Session) -> bool:
    """A responder's session none of whose events is in the ledger yet (decision 14: it is
    saved with its handshake's outcome)."""
    return s.role == "responder" and s.version == len(s.pending_events)


def goes_unwritten(s: Session) -> bool:
    """A responder's session never saved that failed holding nothing: not written, counted."""
    return never_saved_answer(s) and s.state == State.FAILED and holds_nothing(s)


class UnconfirmedHandshakes(Aggregate):
    """How many answered handshakes failed unconfirmed between ``since_us`` and ``at_us``,
    by outcome (``{"timeout": 9120, "authentication_failed": 3}``)."""

    class Summarised(Aggregate.Created):
        at_us: int
        since_us: int
        counts: dict[str, Any]

    def __init__(self, at_us: int, since_us: int, counts: dict[str, Any]) -> None:
        self.at_us, self.since_us = at_us, since_us
        self.counts: dict[str, int] = dict(counts)

    @classmethod
    def summarise(
        cls, local_did: str, since_us: int, now_us: int, counts: dict[str, int]
    ) -> UnconfirmedHandshakes:
        return cls._create(
            cls.Summarised,
            # One per node and interval: a summary whose save failed is made again, same id.
            id=uuid.uuid5(_NAMESPACE, f"{local_did}#{since_us}"),
            timestamp=timestamp_of(now_us),
            at_us=now_us,
            since_us=since_us,
            counts=dict(sorted(counts.items())),
        )


pin_topics(UnconfirmedHandshakes)  # the ledger's names for its classes (topics.py)


class UnconfirmedTally:
    """The counts not yet written: in memory (a crash loses at most one interval's), written
    as one summary once ``interval_us`` has passed since the first of them."""

    def __init__(self, local_did: str, interval_us: int) -> None:
        self.local_did, self.interval_us = local_did, interval_us
        self.counts: dict[str, int] = {}
        self.since_us: int | None = None

    def count(self, outcome: str, now_us: int) -> None:
        if self.since_us is None:
            self.since_us = now_us
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def is_due(self, now_us: int) -> bool:
        return self.since_us is not None and now_us >= self.since_us + self.interval_us

    def due(self, now_us: int) -> UnconfirmedHandshakes | None:
        """The summary to save now, if the interval is over (None: nothing to write yet)."""
        if self.since_us is None or not self.is_due(now_us):
            return None
        return UnconfirmedHandshakes.summarise(self.local_did, self.since_us, now_us, self.counts)

    def saved(self) -> None:
        self.counts, self.since_us = {}, None
