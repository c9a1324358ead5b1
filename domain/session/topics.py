"""The names the ledger stores for the domain's aggregates and events: frozen, not Python paths.

Each ledger row names its event's type by a topic (eventsourcing's ``module:Class.Nested``), and
the topic is hashed, chained and signed with the row (docs/ledger-format.md): once written, it
can never be rewritten. A topic is therefore part of the ledger format, not a path into the
code. Every topic below is the module path its class had when the ledger format was fixed, and
stays exactly so wherever the class lives now.

``pin_topics`` gives each class of a stored aggregate its topic from ``STORED_TOPICS``, as a
``TOPIC`` attribute of the class itself (eventsourcing's ``get_topic`` reads it, and every
class gets its own: an inherited ``TOPIC`` would give a subclass its base's name), and
registers it (``register_topic``), so that a stored topic resolves to its class without any
module being imported by the name in the topic. Each aggregate module pins its classes when it
is imported (session.py pins SessionCore's with Session's); the ledger's mapper imports those
modules (infrastructure/ledger/codec.py).

A new event class needs a new entry here, or ``pin_topics`` refuses it: choose its topic once
(its module path at the time reads well) and never change it after.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from eventsourcing.domain import CanMutateAggregate
from eventsourcing.utils import get_topic, register_topic

_CORE = "l2_session.domain.session_core:"
_SESSION = "l2_session.domain.session:"
_PEER = "l2_session.domain.peer:"
_UNCONFIRMED = "l2_session.domain.unconfirmed:"
_WITNESSED = "l2_session.domain.witnessed:"

STORED_TOPICS: Final[Mapping[str, str]] = {
    # class (its __qualname__) -> the topic the ledger stores for it. Every event class of each
    # stored aggregate is named, written or not (base classes such as Event and Step, the
    # Created class eventsourcing defines, a subclass's copies of its base's events).
    "SessionCore": _CORE + "SessionCore",
    "SessionCore.CleanedUp": _CORE + "SessionCore.CleanedUp",
    "SessionCore.Created": _CORE + "SessionCore.Created",
    "SessionCore.Established": _CORE + "SessionCore.Established",
    "SessionCore.Event": _CORE + "SessionCore.Event",
    "SessionCore.Failed": _CORE + "SessionCore.Failed",
    "SessionCore.HandshakeInitiated": _CORE + "SessionCore.HandshakeInitiated",
    "SessionCore.HandshakeReceived": _CORE + "SessionCore.HandshakeReceived",
    "SessionCore.HeartbeatAnswered": _CORE + "SessionCore.HeartbeatAnswered",
    "SessionCore.HeartbeatMissed": _CORE + "SessionCore.HeartbeatMissed",
    "SessionCore.HeartbeatSent": _CORE + "SessionCore.HeartbeatSent",
    "SessionCore.Opened": _CORE + "SessionCore.Opened",
    "SessionCore.RotationStarted": _CORE + "SessionCore.RotationStarted",
    "SessionCore.Step": _CORE + "SessionCore.Step",
    "Session": _SESSION + "Session",
    "Session.CleanedUp": _SESSION + "Session.CleanedUp",
    "Session.Closed": _SESSION + "Session.Closed",
    "Session.CountersReserved": _SESSION + "Session.CountersReserved",
    "Session.Created": _SESSION + "Session.Created",
    "Session.Established": _SESSION + "Session.Established",
    "Session.Event": _SESSION + "Session.Event",
    "Session.Failed": _SESSION + "Session.Failed",
    "Session.FallbackAttempted": _SESSION + "Session.FallbackAttempted",
    "Session.HandshakeInitiated": _SESSION + "Session.HandshakeInitiated",
    "Session.HandshakeReceived": _SESSION + "Session.HandshakeReceived",
    "Session.HeartbeatAnswered": _SESSION + "Session.HeartbeatAnswered",
    "Session.HeartbeatMissed": _SESSION + "Session.HeartbeatMissed",
    "Session.HeartbeatSent": _SESSION + "Session.HeartbeatSent",
    "Session.LinkCameUp": _SESSION + "Session.LinkCameUp",
    "Session.LinkWentDown": _SESSION + "Session.LinkWentDown",
    "Session.MessageDelivered": _SESSION + "Session.MessageDelivered",
    "Session.MessageQueued": _SESSION + "Session.MessageQueued",
    "Session.MessagesAcknowledged": _SESSION + "Session.MessagesAcknowledged",
    "Session.NodeRestarted": _SESSION + "Session.NodeRestarted",
    "Session.Opened": _SESSION + "Session.Opened",
    "Session.PartitionDetected": _SESSION + "Session.PartitionDetected",
    "Session.ReestablishmentAttempted": _SESSION + "Session.ReestablishmentAttempted",
    "Session.RotationStarted": _SESSION + "Session.RotationStarted",
    "Session.Step": _SESSION + "Session.Step",
    "Session.Suspended": _SESSION + "Session.Suspended",
    "Session.TransportSwitched": _SESSION + "Session.TransportSwitched",
    "Peer": _PEER + "Peer",
    "Peer.BackoffReset": _PEER + "Peer.BackoffReset",
    "Peer.Created": _PEER + "Peer.Created",
    "Peer.Event": _PEER + "Peer.Event",
    "Peer.Quarantined": _PEER + "Peer.Quarantined",
    "Peer.Registered": _PEER + "Peer.Registered",
    "Peer.RetryScheduled": _PEER + "Peer.RetryScheduled",
    "UnconfirmedHandshakes": _UNCONFIRMED + "UnconfirmedHandshakes",
    "UnconfirmedHandshakes.Created": _UNCONFIRMED + "UnconfirmedHandshakes.Created",
    "UnconfirmedHandshakes.Event": _UNCONFIRMED + "UnconfirmedHandshakes.Event",
    "UnconfirmedHandshakes.Summarised": _UNCONFIRMED + "UnconfirmedHandshakes.Summarised",
    "WitnessedLog": _WITNESSED + "WitnessedLog",
    "WitnessedLog.CheckpointConflict": _WITNESSED + "WitnessedLog.CheckpointConflict",
    "WitnessedLog.CheckpointWitnessed": _WITNESSED + "WitnessedLog.CheckpointWitnessed",
    "WitnessedLog.Created": _WITNESSED + "WitnessedLog.Created",
    "WitnessedLog.Event": _WITNESSED + "WitnessedLog.Event",
    "WitnessedLog.Started": _WITNESSED + "WitnessedLog.Started",
}

# The topics that queries name (live.py, recovery, verify's summary). A session's events other
# than Opened are recorded by the class whose @event method records them: SessionCore's for the
# life cycle, Session's for the link, messages and close.
SESSION_OPENED: Final = STORED_TOPICS["Session.Opened"]
SESSION_CLEANED_UP: Final = STORED_TOPICS["SessionCore.CleanedUp"]
SESSION_CLOSED: Final = STORED_TOPICS["Session.Closed"]
SESSION_CREATIONS: Final = (SESSION_OPENED, STORED_TOPICS["SessionCore.Opened"])
PEER_REGISTERED: Final = STORED_TOPICS["Peer.Registered"]
CHECKPOINT_WITNESSED: Final = STORED_TOPICS["WitnessedLog.CheckpointWitnessed"]
CHECKPOINT_CONFLICT: Final = STORED_TOPICS["WitnessedLog.CheckpointConflict"]


def stored_classes(aggregate: type) -> list[type]:
    """``aggregate`` and each event class defined on it (every one may be stored)."""
    events = [
        value
        for value in vars(aggregate).values()
        if isinstance(value, type) and issubclass(value, CanMutateAggregate)
    ]
    return [aggregate, *events]


def pin_topics(*aggregates: type) -> None:
    """Give every class of ``aggregates`` its stored topic (``TOPIC``, in its own namespace)
    and register it. Call after the last of them is defined: eventsourcing refuses to
    define a subclass of an aggregate whose events already carry explicit topics."""
    for aggregate in aggregates:
        for cls in stored_classes(aggregate):
            topic = STORED_TOPICS.get(cls.__qualname__)
            if topic is None:
                raise LookupError(
                    f"{cls.__module__}.{cls.__qualname__} is stored in the ledger but has no topic "
                    "in STORED_TOPICS (domain/session/topics.py): add one, once, never to change"
                )
            type.__setattr__(cls, "TOPIC", topic)
            register_topic(topic, cls)
            if get_topic(cls) != topic:  # its old name was cached before it was pinned
                raise RuntimeError(f"{cls.__qualname__}: topic {get_topic(cls)!r}, not {topic!r}")
