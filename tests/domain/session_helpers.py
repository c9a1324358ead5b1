"""Builders for sessions in a given state, driven only through commands."""

from __future__ import annotations

from typing import Any

from l2_session.domain.manager.unconfirmed import UnconfirmedHandshakes
from l2_session.domain.session import timers
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.session import Session
from l2_session.domain.session.timers import Timer

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
SECOND = 1_000_000
KEY = bytes(range(32))
PEER = "did:key:z6MkPeer"
ALICE = "did:key:z6MkAlice"
BOB = "did:key:z6MkBob"
PREKEYS = {ALICE: "prekeys-alice-1", BOB: "prekeys-bob-1"}  # DID -> prekey fingerprint


def due(s: Session, timer: Timer) -> int:
    return timers.deadlines(s)[timer]


def established(role: str = "initiator", config: SessionConfig | None = None) -> Session:
    s = Session.open(PEER, "initiator" if role == "initiator" else "responder",
                     config or SessionConfig(), T0)  # fmt: skip
    if role == "initiator":
        s.initiate_handshake(T0)
        s.receive_valid_response(T0 + 50_000, KEY, prekeys="prekeys-1")
    else:
        s.receive_handshake(T0)
        s.receive_ack(T0 + 50_000, KEY)
    return s


def miss_heartbeat(s: Session) -> int:
    """Let one heartbeat go out and go unanswered; returns the time of the miss."""
    sent = due(s, Timer.SEND_HEARTBEAT)
    s.heartbeat_due(sent)
    missed_at = due(s, Timer.HEARTBEAT_RESPONSE)
    s.heartbeat_timed_out(missed_at)
    return missed_at


def degraded(s: Session) -> Session:
    for _ in range(s.config.heartbeat_tolerance):
        miss_heartbeat(s)
    return s


def suspended(s: Session) -> Session:
    degraded(s)
    s.degraded_timed_out(due(s, Timer.DEGRADED_TIMEOUT))
    return s


def failed_by_timeout(retry_at_us: int | None = None) -> Session:
    s = Session.open(PEER, "initiator", SessionConfig(), T0)
    s.initiate_handshake(T0)
    s.handshake_timed_out(due(s, Timer.HANDSHAKE_TIMEOUT), retry_at_us)
    return s


def triggers(s: Session) -> list[str]:
    return [e.trigger for e in s.pending_events if hasattr(e, "trigger")]


def states(s: Session) -> list[str]:
    return [e.state for e in s.pending_events if hasattr(e, "state")]


def unconfirmed_summaries(ledger: Any) -> list[dict[str, int]]:
    """The counts of each summary of unconfirmed handshakes in ``ledger`` (decision 18),
    in the order they were written."""
    notifications = ledger.recorder.select_notifications(start=1, limit=1_000_000)
    return [
        ledger.repository.get(n.originator_id).counts
        for n in notifications
        if n.topic.endswith(f"{UnconfirmedHandshakes.__name__}.Summarised")
    ]
