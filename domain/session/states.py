"""The session state machine: SPEC-018 §3.1 as one table.

Theory of operation
-------------------
A session is always in one of the eight states of SPEC-018 §3.1. Things happen to it — a
frame arrives from the peer, a deadline passes, the transport reports the link down, the
application asks to establish or clean up. Each such thing is a *trigger*. ``TRANSITIONS``
says, for every state, which triggers are acceptable there and which state follows:

    TRANSITIONS[state][trigger] -> next state

A trigger that is missing from ``TRANSITIONS[state]`` is not acceptable in that state: the
aggregate raises ``InvalidState`` and records nothing. That is the only place where the
question "may this follow that?" is answered; the ``Session`` aggregate asks ``next_state``,
the generated mermaid diagram (``diagram.py``) and the conformance tests read the same dict.

Two kinds of entry live in the table:

* state changes — the arrows of SPEC-018 §3.2. Each trigger carries the label the spec's
  diagram gives its arrow, so the diagram can be generated and compared with the spec;
* self-loops — triggers accepted in a state that leave it unchanged (a heartbeat answered
  while established, a message queued while degraded). The spec's diagram omits them, and so
  does ours, but they are guarded by the same table.

``FINAL`` stands for the spec's ``[cleanup]`` / ``[*]``: the session is closed. Its history
stays in the ledger (docs/spec-decisions.md, decision 8); a closed session accepts nothing.
A session reaches it by ``cleanup()`` (decision 8), by ``close()`` from any state, or when
the peer's close arrives (``receive_close()``, decision 17).

A restarted node records ``node_restarted`` for every session that was live when its process
died (decision 16): what was in memory only — connections, a handshake's ephemeral half, a
rotation in flight — is gone, so live sessions go to ``suspended`` (they resume with fresh
keys) and handshakes in flight to ``failed`` (they retry).

Where this table departs from the spec's diagram, the departure is listed in the
"Deviations" table of docs/spec-decisions.md, and tests/domain/test_spec_conformance.py
fails if the two disagree.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from l2_session.domain.session.errors import InvalidState


class State(StrEnum):
    """SPEC-018 §5.1 ``State``."""

    IDLE = "idle"
    HANDSHAKE_INITIATED = "handshake_initiated"
    HANDSHAKE_RECEIVED = "handshake_received"
    ESTABLISHED = "established"
    DEGRADED = "degraded"
    ROTATING = "rotating"
    SUSPENDED = "suspended"
    FAILED = "failed"


class Closed(StrEnum):
    """The spec's ``[cleanup]`` pseudo-state, drawn as ``[*]`` in §3.2."""

    FINAL = "[*]"


FINAL: Final = Closed.FINAL
Target = State | Closed


class Trigger(StrEnum):
    """Everything that can happen to a session. The value is the label of the arrow in
    SPEC-018 §3.2 for state-changing triggers the spec names, else a descriptive label."""

    # Application requests (SPEC-018 §5.2 establish / accept / resume, §3.2 cleanup)
    INITIATE_HANDSHAKE = "initiate_handshake()"
    RECEIVE_HANDSHAKE = "receive_handshake()"
    INITIATE_RESUMPTION = "initiate_resumption()"
    RETRY = "retry()"
    RETRY_WITH_BACKOFF = "retry_with_backoff()"
    CLEANUP = "cleanup()"
    CLOSE = "close()"
    # Handshake (SPEC-018 §2.1)
    RECEIVE_VALID_RESPONSE = "receive_valid_response()"
    RECEIVE_ACK = "send_response + ack"
    HANDSHAKE_TIMEOUT = "timeout"
    INVALID_SIGNATURE = "invalid_sig"
    # Maintenance (SPEC-018 §2.2)
    HEARTBEAT_DUE = "heartbeat_due"
    HEARTBEAT_ANSWERED = "heartbeat_answered"
    HEARTBEAT_MISSED = "heartbeat_missed"
    MISSED_HEARTBEATS = "missed_heartbeats(3)"
    TIME_TO_ROTATE = "time_to_rotate()"
    ROTATION_COMPLETE = "rotation_complete"
    ROTATION_TIMEOUT = "rotation_timeout"
    # Degradation and recovery (SPEC-018 §2.3)
    CONNECTIVITY_LOST = "connectivity_lost"
    PARTITION_DETECTED = "connectivity_lost(>30s)"
    CONNECTIVITY_RESTORED = "connectivity_restored"
    REESTABLISHMENT_CONFIRMED = "connectivity_restored + reply"
    DEGRADED_TIMEOUT = "timeout(60s)"
    TRANSPORT_FAILED = "transport_failed"
    TRANSPORT_SWITCHED = "transport_switched"
    # Messages (§2.2-§2.3 "queued messages": a queue, sequence numbers, acknowledgements)
    SUBMIT_MESSAGE = "submit_message"
    RECEIVE_MESSAGE = "receive_message"
    RECEIVE_MESSAGE_ACK = "receive_message_ack"
    # Channel (§7.2 ChaCha20-Poly1305: nonces never reused, counters reserved ahead in the ledger)
    RESERVE_COUNTERS = "reserve_counters"
    # Restart and close (decisions 16 and 17)
    NODE_RESTARTED = "node_restarted"
    RECEIVE_CLOSE = "receive_close()"


S = State
T = Trigger

# Messages may be submitted in every live state and are held until established (§2.2
# "queued messages are held", §2.3 "messages are queued"); data frames from the peer are only
# accepted once the keys are confirmed, and acks likewise.
_QUEUE = {T.SUBMIT_MESSAGE}
_TRAFFIC = {T.RECEIVE_MESSAGE, T.RECEIVE_MESSAGE_ACK}
# Sending under the current keys — data, heartbeats, probes — needs counters reserved.
_SEAL = {T.RESERVE_COUNTERS}
_LINK = {T.CONNECTIVITY_LOST, T.CONNECTIVITY_RESTORED, T.TRANSPORT_FAILED, T.TRANSPORT_SWITCHED}
# Decision 24: a session whose link dies while it rotates, or while it is suspended or failed,
# records the fallback too, so that the transport it records is the one it comes back over.
_FALLBACK = {T.TRANSPORT_FAILED, T.TRANSPORT_SWITCHED}
# Decision 17: the application may close a session in any state; the peer's close can arrive
# in any state but idle (it travels sealed under keys an idle session never had).
_CLOSE: dict[Trigger, Target] = {T.CLOSE: FINAL, T.RECEIVE_CLOSE: FINAL}


def _stay(state: State, *triggers: set[Trigger]) -> dict[Trigger, Target]:
    return {t: state for group in triggers for t in group}


TRANSITIONS: Final[dict[State, dict[Trigger, Target]]] = {
    S.IDLE: {
        T.INITIATE_HANDSHAKE: S.HANDSHAKE_INITIATED,
        T.RECEIVE_HANDSHAKE: S.HANDSHAKE_RECEIVED,
        T.CLOSE: FINAL,
        **_stay(S.IDLE, _QUEUE, {T.NODE_RESTARTED}),
    },
    S.HANDSHAKE_INITIATED: {
        T.RECEIVE_VALID_RESPONSE: S.ESTABLISHED,
        T.HANDSHAKE_TIMEOUT: S.FAILED,
        T.INVALID_SIGNATURE: S.FAILED,
        # Decision 16: the handshake's in-memory half died with the process; it retries.
        T.NODE_RESTARTED: S.FAILED,
        # Decision 16: both ends started one at once; the smaller DID answers the larger's.
        T.RECEIVE_HANDSHAKE: S.HANDSHAKE_RECEIVED,
        **_CLOSE,
        **_stay(S.HANDSHAKE_INITIATED, _QUEUE),
    },
    S.HANDSHAKE_RECEIVED: {
        # Decision 6: the initiator's ack is the key confirmation.
        T.RECEIVE_ACK: S.ESTABLISHED,
        T.HANDSHAKE_TIMEOUT: S.FAILED,
        T.INVALID_SIGNATURE: S.FAILED,
        T.NODE_RESTARTED: S.FAILED,
        **_CLOSE,
        **_stay(S.HANDSHAKE_RECEIVED, _QUEUE),
    },
    S.ESTABLISHED: {
        # Decision 1: three missed heartbeats degrade (§3.2), they do not suspend.
        T.MISSED_HEARTBEATS: S.DEGRADED,
        # Decision 2: a partition reported by the transport for > 30 s degrades (§2.3).
        T.PARTITION_DETECTED: S.DEGRADED,
        T.TIME_TO_ROTATE: S.ROTATING,
        # Decision 16: a restart loses the connection; the session resumes with fresh keys.
        T.NODE_RESTARTED: S.SUSPENDED,
        **_CLOSE,
        **_stay(
            S.ESTABLISHED,
            {T.HEARTBEAT_DUE, T.HEARTBEAT_ANSWERED, T.HEARTBEAT_MISSED},
            _QUEUE,
            _TRAFFIC,
            _LINK,
            _SEAL,
        ),
    },
    S.DEGRADED: {
        # Decision 5: back to established only once the peer answers the attempt.
        T.REESTABLISHMENT_CONFIRMED: S.ESTABLISHED,
        T.DEGRADED_TIMEOUT: S.SUSPENDED,
        T.NODE_RESTARTED: S.SUSPENDED,
        # Decision 16: the peer restarted and resumes (or retries) while our heartbeats fail.
        T.RECEIVE_HANDSHAKE: S.HANDSHAKE_RECEIVED,
        **_CLOSE,
        # Inbound traffic under the current keys is still delivered; outbound is held.
        **_stay(S.DEGRADED, {T.HEARTBEAT_DUE, T.HEARTBEAT_MISSED}, _QUEUE, _TRAFFIC, _LINK, _SEAL),
    },
    S.ROTATING: {
        T.ROTATION_COMPLETE: S.ESTABLISHED,
        T.ROTATION_TIMEOUT: S.FAILED,
        T.INVALID_SIGNATURE: S.FAILED,
        # Decision 16: the rotation's in-memory half is gone; resume from the current keys.
        T.NODE_RESTARTED: S.SUSPENDED,
        **_CLOSE,
        # The old keys stay valid until the rotation completes (§2.2 "no messages are lost").
        **_stay(S.ROTATING, _QUEUE, _TRAFFIC, _SEAL, _FALLBACK),
    },
    S.SUSPENDED: {
        T.CLEANUP: FINAL,
        T.RETRY: S.HANDSHAKE_INITIATED,
        # Decision 10: the responder's side of the peer's retry, on the same session.
        T.RECEIVE_HANDSHAKE: S.HANDSHAKE_RECEIVED,
        # Decision 4: resumption takes the handshake_initiated edge, never idle -> established.
        T.INITIATE_RESUMPTION: S.HANDSHAKE_INITIATED,
        **_CLOSE,
        **_stay(S.SUSPENDED, _QUEUE, {T.NODE_RESTARTED}, _FALLBACK),
    },
    S.FAILED: {
        T.CLEANUP: FINAL,
        T.RETRY_WITH_BACKOFF: S.HANDSHAKE_INITIATED,
        T.INITIATE_RESUMPTION: S.HANDSHAKE_INITIATED,
        T.RECEIVE_HANDSHAKE: S.HANDSHAKE_RECEIVED,
        **_CLOSE,
        **_stay(S.FAILED, _QUEUE, {T.NODE_RESTARTED}, _FALLBACK),
    },
}


def next_state(state: State, trigger: Trigger) -> Target:
    """The state that ``trigger`` leads to from ``state``; ``InvalidState`` if it may not
    happen there."""
    try:
        return TRANSITIONS[state][trigger]
    except KeyError:
        raise InvalidState(state, trigger, allowed=sorted(TRANSITIONS[state])) from None


def is_allowed(state: State, trigger: Trigger) -> bool:
    return trigger in TRANSITIONS[state]


def state_changes() -> list[tuple[State, Trigger, Target]]:
    """Every arrow of the machine (self-loops left out), in table order."""
    return [
        (source, trigger, target)
        for source, row in TRANSITIONS.items()
        for trigger, target in row.items()
        if target != source
    ]
