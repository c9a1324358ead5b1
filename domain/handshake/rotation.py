"""A session's keys over its lifetime: the channel, and rotation inside it (SPEC-018 §2.2
"Automatic key rotation": new ephemeral keys, a re-handshake, no message lost).

Rotation is a full hybrid handshake whose three messages travel as REKEY records of the current
channel, so they are encrypted and bound to the session they renew. From the moment a side takes
part in a rotation (initiator: ``start_rotation``; responder: on the INIT) until it switches, the
data it is asked to send is queued; at the switch the queue is sealed under the new keys, in
order. The initiator switches after RESPONSE (sending CONFIRM under the old keys first), the
responder after CONFIRM. The old receiving keys are kept until the first record under the new
ones arrives, for records already in flight; then they are dropped. The peer must be the same
identity as before, or the rotation fails. If both sides start at once, the larger identity
key's rotation wins. Rotation is due at key age ``ttl − rotation_window``
(23 h by default) and fails if not complete within ``rotation_timeout_us``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from l2_session.domain.handshake.bundle import PrekeyBundle
from l2_session.domain.handshake.channel import Channel
from l2_session.domain.handshake.errors import (
    HandshakeAuthenticationFailed,
    HandshakeError,
    HandshakeStateError,
)
from l2_session.domain.handshake.kem import DEFAULT_BACKEND, KemBackend
from l2_session.domain.handshake.keys import SessionKeys, ed25519_public_bytes
from l2_session.domain.handshake.protocol import InitiatorHandshake, PendingResponse, Responder
from l2_session.domain.handshake.wire import MessageType, peek_type

HOUR_US = 3_600_000_000
ROTATE_AFTER_US = 23 * HOUR_US  # SPEC-018 §5.1: ttl 24 h − rotation_window 1 h
ROTATION_TIMEOUT_US = 5_000_000


class RotationFailed(HandshakeError):
    reason = "key_rotation_failed"  # SPEC-018 §5.1 KeyRotationFailed


@dataclass
class Received:
    """What one incoming record gave: application data (if any), records to send back, and
    whether the keys were switched by it."""

    kind: MessageType | None = None
    payload: bytes | None = None
    send: list[bytes] = field(default_factory=list)
    rotated: bool = False


class SessionCrypto:
    def __init__(
        self,
        keys: SessionKeys,
        identity: Ed25519PrivateKey,
        *,
        now_us: int,
        responder: Responder | None = None,
        kem: KemBackend = DEFAULT_BACKEND,
        rotate_after_us: int = ROTATE_AFTER_US,
        rotation_timeout_us: int = ROTATION_TIMEOUT_US,
    ) -> None:
        self.keys, self.channel = keys, Channel(keys)
        self.identity, self.responder, self.kem = identity, responder, kem
        self.keys_since_us = now_us
        self.rotate_after_us, self.rotation_timeout_us = rotate_after_us, rotation_timeout_us
        self.previous: Channel | None = None
        self.queue: list[tuple[bytes, MessageType]] = []
        self._rotation: InitiatorHandshake | PendingResponse | None = None
        self._rotation_started_us = 0
        self.rotations = 0

    @property
    def rotating(self) -> bool:
        return self._rotation is not None

    def rotation_due(self, now_us: int) -> bool:
        return not self.rotating and now_us - self.keys_since_us >= self.rotate_after_us

    def send(self, payload: bytes, kind: MessageType = MessageType.DATA) -> list[bytes]:
        if self.rotating:
            self.queue.append((payload, kind))
            return []
        return [self.channel.seal(payload, kind)]

    def start_rotation(self, peer_bundle: PrekeyBundle, *, now_us: int) -> list[bytes]:
        if self.rotating:
            raise HandshakeStateError("a rotation is already in progress")
        hs, init = InitiatorHandshake.start(
            self.identity,
            peer_bundle,
            now_us=now_us,
            expected_responder=self.keys.peer_identity,
            kem=self.kem,
        )
        self._rotation, self._rotation_started_us = hs, now_us
        return [self.channel.seal(init, MessageType.REKEY)]

    def check_timeout(self, now_us: int) -> None:
        """Raise ``RotationFailed`` (SPEC-018 §3 rotating → failed) once the rotation is late."""
        if self.rotating and now_us - self._rotation_started_us >= self.rotation_timeout_us:
            self._rotation = None
            raise RotationFailed(
                f"key rotation not complete after {self.rotation_timeout_us / 1e6:.0f}s"
            )

    def receive(self, record: bytes, *, now_us: int) -> Received:
        kind, payload = self._open(record)
        if kind != MessageType.REKEY:
            return Received(kind, payload)
        return self._rekey(payload, now_us)

    def _open(self, record: bytes) -> tuple[MessageType, bytes]:
        try:
            opened = self.channel.open(record)
        except HandshakeAuthenticationFailed:
            if self.previous is None:
                raise
            return self.previous.open(record)  # a record sent before the peer switched
        self.previous = None  # first record under the current keys: the old ones can go
        return opened

    def _rekey(self, message: bytes, now_us: int) -> Received:
        kind = peek_type(message)
        if kind == MessageType.INIT and isinstance(self._rotation, InitiatorHandshake):
            # Both sides started a rotation at once: the side with the larger identity key
            # keeps its own; the other abandons it and answers (its queue is kept).
            if ed25519_public_bytes(self.identity) > self.keys.peer_identity:
                return Received()
            self._rotation = None
        if kind == MessageType.INIT and self._rotation is None and self.responder is not None:
            reply, pending = self.responder.receive_init(message, now_us=now_us)
            if pending.peer_identity != self.keys.peer_identity:
                raise RotationFailed("rotation INIT from another identity than the session's")
            self._rotation, self._rotation_started_us = pending, now_us
            return Received(send=[self.channel.seal(reply, MessageType.REKEY)])
        if kind == MessageType.RESPONSE and isinstance(self._rotation, InitiatorHandshake):
            confirm, keys = self._rotation.receive_response(message)
            sent = [self.channel.seal(confirm, MessageType.REKEY)]
            return Received(send=sent + self._switch(keys, now_us), rotated=True)
        if kind == MessageType.CONFIRM and isinstance(self._rotation, PendingResponse):
            keys = self._rotation.receive_confirm(message)
            return Received(send=self._switch(keys, now_us), rotated=True)
        raise HandshakeStateError(f"unexpected {kind.name} in a REKEY record")

    def _switch(self, keys: SessionKeys, now_us: int) -> list[bytes]:
        if keys.peer_identity != self.keys.peer_identity:
            raise RotationFailed("the rotated keys belong to another peer")
        # The session keeps its id; only the keys change.
        self.keys = SessionKeys(
            self.keys.session_id,
            keys.send_key,
            keys.receive_key,
            keys.peer_identity,
            keys.is_initiator,
            keys.transcript_hash,
            keys.resumption_secret,
            0,
            keys.prekey_ids,
        )
        self.previous, self.channel = self.channel, Channel(self.keys)
        self._rotation, self.keys_since_us = None, now_us
        self.rotations += 1
        queued, self.queue = self.queue, []
        return [self.channel.seal(payload, kind) for payload, kind in queued]
