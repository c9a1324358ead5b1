"""Per-peer standing: quarantine and retry backoff (decision 7 in docs/spec-decisions.md).

SPEC-018 §7.1 answers denial of service with "quarantine + exponential backoff". Both
belong to the *peer*, not to one session: a new session with a peer that just failed
authentication must still be refused, and backoff must keep growing across the sessions a
failing peer burns through. They are recorded as events on a ``Peer`` aggregate, so a
restart does not forget a quarantine or reset a backoff.

Jitter is a value (``jitter`` in [0, 1)) chosen by the caller and recorded in the result,
like time: the aggregate never reads a random source, so replay is exact.
"""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event
from l2_session.domain.session.config import (
    SessionConfig,
    config_fields,
    config_from_fields,
    shared_fields,
)
from l2_session.domain.session.errors import PeerQuarantined
from l2_session.domain.session.timers import timestamp_of, us
from l2_session.domain.session.topics import pin_topics

_PEER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://libertaria.org/l2-session/peer")


def peer_id(peer_did: str) -> uuid.UUID:
    """The ``Peer`` aggregate id of a DID: the same DID always finds the same standing."""
    return uuid.uuid5(_PEER_NAMESPACE, peer_did)


def backoff_delay_us(config: SessionConfig, attempt: int, jitter: float) -> int:
    """Delay before retry ``attempt`` (1-based): base * factor^(attempt-1), capped, then
    reduced by up to ``backoff_jitter`` of itself so that peers do not retry in lockstep."""
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
    raw = config.backoff_base * config.backoff_factor ** (attempt - 1)
    capped = min(config.backoff_cap, raw)
    return us(capped * (1 - config.backoff_jitter * jitter))


class Peer(Aggregate):
    class Registered(Aggregate.Created):
        at_us: int
        peer_did: str
        config: dict[str, Any]

    def __init__(self, at_us: int, peer_did: str, config: dict[str, Any]) -> None:
        self.peer_did = peer_did
        # Plain values, not a SessionConfig: the aggregate's __dict__ goes into snapshots.
        self.config_fields = shared_fields(config)
        self.quarantined_until_us: int | None = None
        self.failed_attempts = 0
        self.retry_at_us: int | None = None

    @property
    def config(self) -> SessionConfig:
        return config_from_fields(self.config_fields)

    @classmethod
    def register(cls, peer_did: str, config: SessionConfig, now_us: int) -> Peer:
        return cls._create(
            cls.Registered,
            id=peer_id(peer_did),
            timestamp=timestamp_of(now_us),
            at_us=now_us,
            peer_did=peer_did,
            config=config_fields(config),
        )

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        if kwargs.get("timestamp") is None and "at_us" in kwargs:
            kwargs["timestamp"] = timestamp_of(kwargs["at_us"])
        super().trigger_event(event_class, **kwargs)

    # ------------------------------------------------------------------ commands
    def is_quarantined(self, now_us: int) -> bool:
        return self.quarantined_until_us is not None and now_us < self.quarantined_until_us

    def check_admissible(self, now_us: int) -> None:
        """Refuse establishing with or accepting from a quarantined peer (§2.1)."""
        if self.quarantined_until_us is not None and self.is_quarantined(now_us):
            raise PeerQuarantined(self.peer_did, self.quarantined_until_us, now_us)

    def authentication_failed(self, now_us: int, jitter: float) -> int:
        """§2.1 "peer is quarantined for 60 seconds"; the retry waits for the quarantine to
        end and for the backoff. Returns when the retry is due."""
        until = now_us + us(self.config.quarantine)
        self._quarantined(at_us=now_us, until_us=until)
        return self.schedule_retry(now_us, jitter, not_before_us=until)

    def schedule_retry(self, now_us: int, jitter: float, not_before_us: int = 0) -> int:
        """§2.1 "retry is scheduled with exponential backoff". Returns when it is due."""
        attempt = self.failed_attempts + 1
        retry_at = max(not_before_us, now_us + backoff_delay_us(self.config, attempt, jitter))
        self._retry_scheduled(at_us=now_us, attempt=attempt, jitter=jitter, retry_at_us=retry_at)
        return retry_at

    def succeeded(self, now_us: int) -> None:
        """A session with this peer was established: backoff starts again from the base."""
        if self.failed_attempts or self.retry_at_us is not None:
            self._backoff_reset(at_us=now_us)

    # ------------------------------------------------------------------ what happened
    @event("Quarantined")
    def _quarantined(self, at_us: int, until_us: int) -> None:
        self.quarantined_until_us = until_us

    @event("RetryScheduled")
    def _retry_scheduled(self, at_us: int, attempt: int, jitter: float, retry_at_us: int) -> None:
        self.failed_attempts = attempt
        self.retry_at_us = retry_at_us

    @event("BackoffReset")
    def _backoff_reset(self, at_us: int) -> None:
        self.failed_attempts = 0
        self.retry_at_us = None


pin_topics(Peer)  # the ledger's names for its classes (topics.py)
