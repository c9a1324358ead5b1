"""The session channel after the handshake: ChaCha20-Poly1305 records for data and heartbeats,
with per-direction counters and a WireGuard-style sliding replay window (SPEC-018 §7.1).

Record = frame(DATA or HEARTBEAT, counter u64 || ciphertext || tag 16). The counter is sent in
clear but cannot be altered: it is the AEAD nonce (4 zero bytes || counter, little-endian, as
WireGuard does) and the whole header is the associated data. Each direction has its own key, so
the two counters never share a (key, nonce) pair.

A receiver accepts a counter once: newer than anything seen, or within the last
``REPLAY_WINDOW`` counters and not yet seen (reordering tolerated, replays refused). The window
moves only after the tag verified, so forged records cannot push it forward.

Nonce reuse across restarts: the sender only uses counters below ``reserved_until``; when it
runs out it raises ``CountersExhausted`` and the session layer reserves the next block in the
ledger (durably) before calling ``reserve``. After a crash it resumes from the reserved limit,
skipping counters it may have used, never repeating one.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from l2_session.domain.handshake.errors import (
    HandshakeAuthenticationFailed,
    HandshakeError,
    MalformedMessage,
    ReplayedMessage,
)
from l2_session.domain.handshake.keys import SessionKeys
from l2_session.domain.handshake.wire import (
    AEAD_TAG_LEN,
    HEADER,
    MAX_PLAINTEXT,
    PROTOCOL_VERSION,
    MessageType,
    peek_type,
    unframe,
)

REPLAY_WINDOW = 2048  # counters; WireGuard's window (RFC 6479 style)
# Keys must be rotated well before the 64-bit counter could wrap (WireGuard: REJECT_AFTER_MESSAGES).
REJECT_AFTER_MESSAGES = 2**60
RECORD_MIN_BODY = 8 + AEAD_TAG_LEN
RECORD_MAX_BODY = 8 + MAX_PLAINTEXT + AEAD_TAG_LEN
RECORD_KINDS = (MessageType.DATA, MessageType.HEARTBEAT, MessageType.REKEY)


class CountersExhausted(HandshakeError):
    """The sender reached the end of its reserved counters (or of the key's lifetime)."""

    reason = "counters_exhausted"


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack("<Q", counter)


class ReplayWindow:
    """Which counters were accepted: the highest one, and a bitmap of the ``size`` below it."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.highest = -1
        self._bits = 0  # bit i set: counter (highest - i) was accepted

    def check(self, counter: int) -> None:
        if counter > self.highest:
            return
        age = self.highest - counter
        if age >= self.size:
            raise ReplayedMessage(
                f"counter {counter} is {age} behind the newest ({self.highest}); window is "
                f"{self.size}"
            )
        if self._bits >> age & 1:
            raise ReplayedMessage(f"counter {counter} was already received")

    def accept(self, counter: int) -> None:
        self.check(counter)
        if counter > self.highest:
            shift = counter - self.highest
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1)
            self.highest = counter
        else:
            self._bits |= 1 << (self.highest - counter)


class Channel:
    """One side's end of an established session."""

    def __init__(
        self, keys: SessionKeys, *, next_send_counter: int = 0, reserved_until: int | None = None
    ) -> None:
        self.keys = keys
        self._seal = ChaCha20Poly1305(keys.send_key)
        self._open = ChaCha20Poly1305(keys.receive_key)
        self.next_send_counter = next_send_counter
        self.reserved_until = (
            REJECT_AFTER_MESSAGES
            if reserved_until is None
            else min(reserved_until, REJECT_AFTER_MESSAGES)
        )
        self.window = ReplayWindow()

    def reserve(self, until: int) -> None:
        """Allow sending up to (excluding) counter ``until``, once that is durably recorded."""
        self.reserved_until = max(self.reserved_until, min(until, REJECT_AFTER_MESSAGES))

    def seal(self, payload: bytes, kind: MessageType = MessageType.DATA) -> bytes:
        if kind not in RECORD_KINDS:
            raise ValueError(f"a channel record is DATA, HEARTBEAT or REKEY, not {kind.name}")
        if len(payload) > MAX_PLAINTEXT:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PLAINTEXT}")
        counter = self.next_send_counter
        if counter >= self.reserved_until:
            raise CountersExhausted(
                f"send counter {counter} reached the reserved limit {self.reserved_until}: "
                "reserve the next block (or rotate keys) before sending"
            )
        self.next_send_counter = counter + 1
        header = HEADER.pack(PROTOCOL_VERSION, kind, 8 + len(payload) + AEAD_TAG_LEN)
        header += struct.pack(">Q", counter)
        return header + self._seal.encrypt(_nonce(counter), payload, header)

    def open(self, record: bytes) -> tuple[MessageType, bytes]:
        (opened,) = self.open_together([record])
        return opened[0], opened[2]

    def open_together(self, records: list[bytes]) -> list[tuple[MessageType, int, bytes]]:
        """(kind, counter, payload) of each record, all or none: the window moves only once
        every record verified, so one forged or replayed record changes nothing (a frame
        split over several records is accepted whole or not at all)."""
        opened = self.verify_together(records)
        self.accept_together([counter for _, counter, _ in opened])
        return opened

    def verify_together(self, records: list[bytes]) -> list[tuple[MessageType, int, bytes]]:
        """(kind, counter, payload) of each record if every one verifies and is new to the
        window; the window does not move (``accept_together`` moves it). A caller that checks
        more (that the records form one frame) accepts only once that check passed too."""
        opened = [self._decrypt(record) for record in records]
        counters = [counter for _, counter, _ in opened]
        if len(set(counters)) != len(counters):
            raise ReplayedMessage(f"counters {counters} repeat within one frame")
        return opened

    def accept_together(self, counters: list[int]) -> None:
        """Record ``counters`` (verified, distinct, each new to the window) as received.
        In ascending order: each was checked against the window as it was, and accepting a
        higher counter first could push a lower one out of the window half-way."""
        for counter in counters:
            self.window.check(counter)
        for counter in sorted(counters):
            self.window.accept(counter)

    def _decrypt(self, record: bytes) -> tuple[MessageType, int, bytes]:
        kind = peek_type(record)
        if kind not in RECORD_KINDS:
            raise MalformedMessage(f"expected DATA, HEARTBEAT or REKEY, got {kind.name}")
        body = unframe(record, kind, RECORD_MIN_BODY, RECORD_MAX_BODY)
        counter = int.from_bytes(body[:8], "big")
        if counter >= REJECT_AFTER_MESSAGES:
            raise ReplayedMessage(f"counter {counter} is beyond the key's lifetime")
        # Cheap refusal of old or repeated counters before the AEAD work.
        self.window.check(counter)
        try:
            payload = self._open.decrypt(_nonce(counter), body[8:], bytes(record[:12]))
        except InvalidTag:
            raise HandshakeAuthenticationFailed(
                f"{kind.name} record {counter} failed authentication"
            ) from None
        return kind, counter, payload


def heartbeat(channel: Channel, sent_at_us: int) -> bytes:
    """A heartbeat record carrying the sender's time (SPEC-018 §2.2), sealed like data."""
    return channel.seal(struct.pack(">Q", sent_at_us), MessageType.HEARTBEAT)
