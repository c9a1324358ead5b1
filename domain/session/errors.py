"""SPEC-018 §5.1 ``SessionError`` and the failure reasons of §2.1.

Each error says what was wrong, with the value, and what to do. ``reason`` is the failure
reason as the spec spells it; it is what a ``failed`` session records.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import ClassVar


class FailureReason(StrEnum):
    """Why a session is ``failed`` (SPEC-018 §2.1 "failure reason is ...")."""

    TIMEOUT = "timeout"
    AUTHENTICATION_FAILED = "authentication_failed"
    TRANSPORT_FAILED = "transport_failed"
    KEY_ROTATION_FAILED = "key_rotation_failed"
    NODE_RESTARTED = "node_restarted"
    """Decision 16: a handshake was in flight when this node's process died."""


class CloseReason(StrEnum):
    """Why a session was closed (decision 17): what its ``Closed`` event records."""

    CLOSED = "closed"
    """The application here closed it (``SessionManager.close``)."""
    CLOSED_BY_PEER = "closed by peer"
    """The peer's close arrived, sealed under the session keys."""


class SessionError(Exception):
    """Base of every error the session domain raises on purpose."""

    reason: ClassVar[str] = "session_error"


class Timeout(SessionError):
    reason = FailureReason.TIMEOUT.value


class AuthenticationFailed(SessionError):
    reason = FailureReason.AUTHENTICATION_FAILED.value


class TransportFailed(SessionError):
    reason = FailureReason.TRANSPORT_FAILED.value


class KeyRotationFailed(SessionError):
    reason = FailureReason.KEY_ROTATION_FAILED.value


class InvalidState(SessionError):
    """A command that SPEC-018 §3.1 does not allow in the session's current state."""

    reason = "invalid_state"

    # ``state`` and ``trigger`` are str: states.py's State and Trigger are StrEnums, and the
    # table (states.py) raises this error, so this module names neither.
    def __init__(self, state: str, trigger: str, allowed: Iterable[str] = ()) -> None:
        self.state = str(state)
        self.trigger = str(trigger)
        self.allowed = [str(a) for a in allowed]
        hint = f"; allowed here: {', '.join(self.allowed)}" if self.allowed else ""
        super().__init__(
            f"'{self.trigger}' is not allowed in state '{self.state}' (SPEC-018 §3.1){hint}"
        )


class SessionClosed(InvalidState):
    """The session was cleaned up; its history stays in the ledger, it accepts nothing."""

    def __init__(self, trigger: str) -> None:
        super().__init__("[cleanup]", trigger)
        self.args = (f"'{self.trigger}' refused: the session was cleaned up; open a new session",)


class PeerQuarantined(AuthenticationFailed):
    """SPEC-018 §2.1: a peer that failed authentication is quarantined for a while."""

    def __init__(self, peer_did: str, until_us: int, now_us: int) -> None:
        self.peer_did = peer_did
        self.until_us = until_us
        remaining = max(0, until_us - now_us) / 1_000_000
        super().__init__(
            f"peer {peer_did} is quarantined after an authentication failure for another "
            f"{remaining:.3f} s; try again after that"
        )


class UnknownSession(SessionError):
    reason = "unknown_session"

    def __init__(self, session_id: object) -> None:
        self.session_id = session_id
        super().__init__(f"no session with id {session_id} is registered with this manager")


class MessageTooLarge(SessionError):
    reason = "message_too_large"

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"message of {size} bytes is over the limit of {limit} bytes "
            "(SessionConfig.max_message_size); split it"
        )


class WindowFull(SessionError):
    """The session holds ``SessionConfig.send_window`` messages not yet acknowledged: the
    application waits until an acknowledgement makes room (backpressure), then submits again.
    Nothing was recorded."""

    reason = "window_full"

    def __init__(self, held: int, window: int) -> None:
        self.held = held
        self.window = window
        super().__init__(
            f"{held} messages are not yet acknowledged, the send window is {window} "
            "(SessionConfig.send_window); wait for an acknowledgement"
        )


class ConfigError(ValueError):
    """A ``SessionConfig`` field with a value that cannot work."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"SessionConfig.{field} = {value!r}: {expected}")


class NotDue(SessionError):
    """A timer command that arrived before its deadline (a stale or early timer)."""

    reason = "not_due"

    def __init__(self, timer: str, due_us: int | None, now_us: int) -> None:
        self.timer = timer
        self.due_us = due_us
        when = "is not pending" if due_us is None else f"is due at {due_us} µs, now is {now_us}"
        super().__init__(f"timer '{timer}' {when}; nothing was recorded")


class TimeWentBackwards(SessionError):
    reason = "time_went_backwards"

    def __init__(self, now_us: int, last_us: int) -> None:
        super().__init__(
            f"command at {now_us} µs is before the session's last event at {last_us} µs; "
            "feed the session a monotonic timeline (infrastructure.clock)"
        )


class StaleFrame(SessionError):
    """A frame that does not answer what the session is waiting for (replay, §7.1)."""

    reason = "stale_frame"


class NothingToResume(SessionError):
    """Resumption needs the previous key material and unchanged prekeys (§2.1)."""

    reason = "nothing_to_resume"
