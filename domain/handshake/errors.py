"""Errors of the hybrid handshake and the session channel.

They sit under SPEC-018 §5.1's ``SessionError`` so that the session manager can turn any of
them into a failure reason: an authentication problem is ``authentication_failed`` (§2.1);
malformed or replayed input is dropped without any change of state.
"""

from __future__ import annotations

from l2_session.domain.session.errors import AuthenticationFailed, SessionError


class HandshakeError(SessionError):
    """Base of the handshake's own errors."""

    reason = "handshake_error"


class MalformedMessage(HandshakeError, ValueError):
    """Bytes that are not a well-formed message: truncated, oversized, unknown version or type,
    bad field. Nothing was changed; the input is to be dropped."""

    reason = "malformed_message"


class HandshakeAuthenticationFailed(AuthenticationFailed, HandshakeError):
    """A signature, MAC or key that does not check out: the peer is not who it claims, or the
    transcript was altered in flight (SPEC-018 §2.1 "invalid signature received")."""


class ReplayedMessage(HandshakeError):
    """A handshake or channel message seen before, or too old to be judged (SPEC-018 §7.1)."""

    reason = "replay"


class PrekeyError(HandshakeError):
    """A prekey bundle that cannot be used: expired, unknown prekey id, or inconsistent."""

    reason = "prekey_error"


class HandshakeStateError(HandshakeError):
    """A handshake step called out of order (e.g. a response before an init was sent)."""

    reason = "invalid_state"
