"""What recorded events ask to put on the wire, or to hand to the application: derived,
never stored.

After a command, the manager hands the new events here, once they are saved, and performs what
comes back: handshake and heartbeat frames, closes, and a ``Deliver`` for each message
delivered. Data frames are not derived here but by the transmission (transmit.py), which
knows what is in flight.
"""

from __future__ import annotations

import logging
from typing import Any

from l2_session.domain.manager.keyexchange import KeyExchange
from l2_session.domain.session.commands import (
    Close,
    CloseAck,
    Deliver,
    Frame,
    HandshakeRequest,
    Heartbeat,
    Output,
    RotationRequest,
    Send,
)
from l2_session.domain.session.errors import CloseReason
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import State

log = logging.getLogger("l2_session.session")


def send(s: Session, frame: Frame) -> Send:
    return Send(s.peer_did, frame, s.transport)


def outputs_for(s: Session, events: list[Any], kx: KeyExchange) -> list[Output]:
    out: list[Output] = []
    for e in events:
        name = type(e).__name__
        if name == "MessageDelivered":
            # Saved before the application sees it: delivered once, in order.
            out.append(Deliver(s.id, e.seq, e.payload))
            continue
        # A responder's full retry waits for its initiator; a resumption either end can start
        # (decision 16: the end that restarted resumes, whichever role it had).
        if name == "HandshakeInitiated" and (s.role == "initiator" or e.resuming):
            request = (
                # Decision 4: a resumption proves possession of the stored keys; no KEM.
                kx.resume(s.conversation, s.peer_did, s.key_material or b"", e.at_us)
                if e.resuming
                else kx.initiate(s.conversation, s.peer_did, e.at_us)
            )
            out.append(send(s, HandshakeRequest(s.conversation, request, e.resuming)))
        elif name in ("HeartbeatSent", "ReestablishmentAttempted"):
            out.append(send(s, Heartbeat(s.conversation, e.counter)))
        elif name == "HeartbeatMissed" and e.state == State.ESTABLISHED:
            # SPEC-018 §2.2 "Single missed heartbeat … warning is logged".
            log.warning(
                "session %s: peer %s missed heartbeat %d of %d",
                s.id, s.peer_did, e.missed, s.config.heartbeat_tolerance,
            )  # fmt: skip
        elif name == "RotationStarted" and s.role == "initiator":
            request = kx.initiate(s.conversation, s.peer_did, e.at_us)
            out.append(send(s, RotationRequest(s.conversation, request)))
        elif name == "Closed" and e.counters_until:
            # Decision 17: the peer is told, under the session keys (none: nothing to tell
            # it with); a close from the peer is acknowledged.
            by_peer = e.reason == CloseReason.CLOSED_BY_PEER
            out.append(send(s, (CloseAck if by_peer else Close)(s.conversation)))
    return out
