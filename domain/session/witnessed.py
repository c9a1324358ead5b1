"""What this node witnessed of another node's ledger: the ``WitnessedLog`` of one origin
(a ledger id), recorded in this node's own ledger (decision 25 in docs/spec-decisions.md).

A peer's node sends, over an established session, a signed checkpoint of its ledger and a
consistency proof from the last checkpoint of that ledger this node witnessed. The checks are
the ledger layer's (infrastructure/ledger/witness.py: signatures, Merkle proofs); this
aggregate records their outcome, so that what was witnessed survives restarts and is part of
this node's own signed history:

- ``CheckpointWitnessed``: the checkpoint extends the last one witnessed (or is the first);
  this node cosigned it, and it is the one the next must extend;
- ``CheckpointConflict``: it does not — a rewritten, truncated or forked log. Both signed
  checkpoints are recorded: together they are evidence of the origin's misbehaviour that
  anyone can check. The last witnessed checkpoint stays the reference.

Times are values (``at_us``) given by the caller, as everywhere in the domain.
"""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event
from l2_session.domain.session.timers import timestamp_of
from l2_session.domain.session.topics import pin_topics

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://libertaria.org/l2-session/witnessed-log")


def witnessed_log_id(origin: str) -> uuid.UUID:
    """The ``WitnessedLog`` aggregate id of an origin: one per witnessed ledger."""
    return uuid.uuid5(_NAMESPACE, origin)


class WitnessedLog(Aggregate):
    class Started(Aggregate.Created):
        at_us: int
        origin: str

    def __init__(self, at_us: int, origin: str) -> None:
        self.origin = origin
        self.size = 0  # the last checkpoint witnessed: its tree size, root (hex) and text
        self.root = ""
        self.checkpoint = ""
        self.signer = ""
        self.witnessed = 0  # checkpoints cosigned
        self.conflicts = 0  # checkpoints that did not extend the last witnessed one
        self.last_conflict: dict[str, Any] | None = None

    @classmethod
    def start(cls, origin: str, now_us: int) -> WitnessedLog:
        return cls._create(
            cls.Started,
            id=witnessed_log_id(origin),
            timestamp=timestamp_of(now_us),
            at_us=now_us,
            origin=origin,
        )

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        if kwargs.get("timestamp") is None and "at_us" in kwargs:
            kwargs["timestamp"] = timestamp_of(kwargs["at_us"])
        super().trigger_event(event_class, **kwargs)

    # ------------------------------------------------------------------ what happened
    @event("CheckpointWitnessed")
    def checkpoint_witnessed(
        self, at_us: int, peer_did: str, size: int, root: str, checkpoint: str
    ) -> None:
        """``checkpoint`` (its text, signed by ``peer_did``) extends the last one witnessed."""
        self.size, self.root, self.checkpoint, self.signer = size, root, checkpoint, peer_did
        self.witnessed += 1

    @event("CheckpointConflict")
    def checkpoint_conflict(
        self, at_us: int, peer_did: str, reason: str, witnessed: str, offered: str
    ) -> None:
        """``offered`` (signed by ``peer_did``) does not extend ``witnessed``: ``reason`` says
        how (``truncated``, ``forked``, ``rewritten``)."""
        self.conflicts += 1
        self.last_conflict = {
            "at_us": at_us,
            "peer_did": peer_did,
            "reason": reason,
            "witnessed": witnessed,
            "offered": offered,
        }


pin_topics(WitnessedLog)  # the ledger's names for its classes (topics.py)
