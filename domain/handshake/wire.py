"""Wire format of the handshake and the session channel: every message byte by byte.

Every message is one frame::

    version u8 (= 1) | type u8 | body length u16 (big-endian) | body

Integers are big-endian. Each type has a fixed body size (INIT, RESPONSE, CONFIRM) or a bounded
one (BUNDLE, DATA, HEARTBEAT); a parser takes exactly one frame and rejects anything else —
short, long, trailing bytes, unknown version, type or suite, reserved bits set — with
``MalformedMessage`` naming the field and value. Parsers are pure: no state is touched until a
message has parsed. docs/handshake.md has the same layout with a worked example.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from l2_session.domain.handshake.errors import MalformedMessage

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">BBH")

# Suite 1: X25519 + ML-KEM-768 key agreement, Ed25519 signatures, BLAKE3 key schedule,
# ChaCha20-Poly1305 channel. The only suite; a second one would get a new number.
SUITE_X25519_MLKEM768 = 1
SUITES = frozenset({SUITE_X25519_MLKEM768})

X25519_LEN = 32
ED25519_LEN = 32
SIGNATURE_LEN = 64
MLKEM768_PUBLIC_LEN = 1184
MLKEM768_CIPHERTEXT_LEN = 1088
MAC_LEN = 32
HANDSHAKE_ID_LEN = 16
AEAD_TAG_LEN = 16

MAX_ONE_TIME_PREKEYS = 32  # per published bundle: bounds the bundle at ~3.6 kB
MAX_PLAINTEXT = 16384  # per channel record; larger payloads are split by the caller

FLAG_ONE_TIME_PREKEY = 0x01


class MessageType(IntEnum):
    INIT = 0x01
    RESPONSE = 0x02
    CONFIRM = 0x03
    RESUME = 0x04
    RESUME_RESPONSE = 0x05
    RESUME_CONFIRM = 0x06
    BUNDLE = 0x10
    DATA = 0x20
    HEARTBEAT = 0x21
    REKEY = 0x22  # a channel record carrying a handshake message (in-session rotation)


def frame(kind: MessageType, body: bytes) -> bytes:
    if len(body) > 0xFFFF:
        raise ValueError(f"{kind.name} body of {len(body)} bytes does not fit a frame")
    return HEADER.pack(PROTOCOL_VERSION, kind, len(body)) + body


def unframe(data: bytes, kind: MessageType, min_body: int, max_body: int) -> bytes:
    """The body of ``data`` if it is exactly one frame of ``kind`` within the size bounds."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"{kind.name}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > HEADER.size + max_body:
        raise MalformedMessage(
            f"{kind.name}: {len(data)} bytes exceeds the maximum of {HEADER.size + max_body}"
        )
    if len(data) < HEADER.size:
        raise MalformedMessage(f"{kind.name}: truncated header ({len(data)} of 4 bytes)")
    version, got_kind, length = HEADER.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise MalformedMessage(
            f"{kind.name}: unknown protocol version {version} (this side speaks {PROTOCOL_VERSION})"
        )
    if got_kind != kind:
        raise MalformedMessage(
            f"expected a {kind.name} message (type {kind:#04x}), got type {got_kind:#04x}"
        )
    if not min_body <= length <= max_body:
        raise MalformedMessage(f"{kind.name}: body length {length} outside {min_body}..{max_body}")
    if len(data) != HEADER.size + length:
        raise MalformedMessage(
            f"{kind.name}: header says {length} body bytes, frame carries {len(data) - 4}"
        )
    return data[HEADER.size :]


class Reader:
    """Consumes a body field by field; running out or leaving bytes over is malformed."""

    def __init__(self, what: str, body: bytes) -> None:
        self.what, self.body, self.offset = what, body, 0

    def take(self, n: int, field: str) -> bytes:
        if self.offset + n > len(self.body):
            raise MalformedMessage(f"{self.what}: truncated at {field} (offset {self.offset})")
        out = self.body[self.offset : self.offset + n]
        self.offset += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "big")

    def suite(self) -> int:
        suite = self.u8("suite")
        if suite not in SUITES:
            raise MalformedMessage(f"{self.what}: unknown suite {suite}")
        return suite

    def end(self) -> None:
        if self.offset != len(self.body):
            raise MalformedMessage(
                f"{self.what}: {len(self.body) - self.offset} unexpected trailing bytes"
            )


# --- handshake messages ---------------------------------------------------------------------------

INIT_SIGNED_LEN = 1 + 1 + 32 + 32 + 32 + 4 + 4 + 4 + 8 + MLKEM768_CIPHERTEXT_LEN
INIT_BODY_LEN = INIT_SIGNED_LEN + SIGNATURE_LEN


@dataclass(frozen=True)
class Init:
    """Message 1, initiator → responder: its identity and ephemeral, the prekeys it used, the
    ML-KEM ciphertext, a timestamp for replay checks, and its signature over the transcript."""

    suite: int
    initiator_identity: bytes
    initiator_ephemeral: bytes
    responder_identity: bytes
    signed_prekey_id: int
    kem_prekey_id: int
    one_time_prekey_id: int | None
    timestamp_us: int
    kem_ciphertext: bytes
    signature: bytes

    def signed_part(self) -> bytes:
        """The frame up to (excluding) the signature: what the transcript hash covers."""
        flags = FLAG_ONE_TIME_PREKEY if self.one_time_prekey_id is not None else 0
        body = (
            struct.pack(">BB", self.suite, flags)
            + self.initiator_identity
            + self.initiator_ephemeral
            + self.responder_identity
            + struct.pack(
                ">III", self.signed_prekey_id, self.kem_prekey_id, self.one_time_prekey_id or 0
            )
            + struct.pack(">Q", self.timestamp_us)
            + self.kem_ciphertext
        )
        return HEADER.pack(PROTOCOL_VERSION, MessageType.INIT, INIT_BODY_LEN) + body

    def encode(self) -> bytes:
        return self.signed_part() + self.signature

    @classmethod
    def parse(cls, data: bytes) -> Init:
        r = Reader("INIT", unframe(data, MessageType.INIT, INIT_BODY_LEN, INIT_BODY_LEN))
        suite = r.suite()
        flags = r.u8("flags")
        if flags & ~FLAG_ONE_TIME_PREKEY:
            raise MalformedMessage(f"INIT: reserved flag bits set in {flags:#04x}")
        initiator_identity = r.take(ED25519_LEN, "initiator identity")
        initiator_ephemeral = r.take(X25519_LEN, "initiator ephemeral")
        responder_identity = r.take(ED25519_LEN, "responder identity")
        spk_id, kem_id, otp_id = (
            r.u32("signed prekey id"),
            r.u32("kem prekey id"),
            r.u32("one-time prekey id"),
        )
        if not flags & FLAG_ONE_TIME_PREKEY and otp_id != 0:
            raise MalformedMessage(f"INIT: one-time prekey id {otp_id} without its flag")
        timestamp = r.u64("timestamp")
        ciphertext = r.take(MLKEM768_CIPHERTEXT_LEN, "kem ciphertext")
        signature = r.take(SIGNATURE_LEN, "signature")
        r.end()
        return cls(
            suite,
            initiator_identity,
            initiator_ephemeral,
            responder_identity,
            spk_id,
            kem_id,
            otp_id if flags & FLAG_ONE_TIME_PREKEY else None,
            timestamp,
            ciphertext,
            signature,
        )


RESPONSE_BODY_LEN = HANDSHAKE_ID_LEN + X25519_LEN + SIGNATURE_LEN + MAC_LEN


@dataclass(frozen=True)
class Response:
    """Message 2, responder → initiator: its ephemeral, its signature over the transcript, and
    a MAC proving it derived the session keys."""

    handshake_id: bytes
    responder_ephemeral: bytes
    signature: bytes
    confirm: bytes

    def signed_part(self) -> bytes:
        return (
            HEADER.pack(PROTOCOL_VERSION, MessageType.RESPONSE, RESPONSE_BODY_LEN)
            + self.handshake_id
            + self.responder_ephemeral
        )

    def encode(self) -> bytes:
        return self.signed_part() + self.signature + self.confirm

    @classmethod
    def parse(cls, data: bytes) -> Response:
        body = unframe(data, MessageType.RESPONSE, RESPONSE_BODY_LEN, RESPONSE_BODY_LEN)
        r = Reader("RESPONSE", body)
        out = cls(
            r.take(HANDSHAKE_ID_LEN, "handshake id"),
            r.take(X25519_LEN, "ephemeral"),
            r.take(SIGNATURE_LEN, "signature"),
            r.take(MAC_LEN, "confirm"),
        )
        r.end()
        return out


CONFIRM_BODY_LEN = HANDSHAKE_ID_LEN + MAC_LEN


@dataclass(frozen=True)
class Confirm:
    """Message 3, initiator → responder: a MAC proving the initiator derived the same keys
    (SPEC-018 §3 "send_response + ack")."""

    handshake_id: bytes
    confirm: bytes

    def header_and_id(self) -> bytes:
        return (
            HEADER.pack(PROTOCOL_VERSION, MessageType.CONFIRM, CONFIRM_BODY_LEN) + self.handshake_id
        )

    def encode(self) -> bytes:
        return self.header_and_id() + self.confirm

    @classmethod
    def parse(cls, data: bytes) -> Confirm:
        body = unframe(data, MessageType.CONFIRM, CONFIRM_BODY_LEN, CONFIRM_BODY_LEN)
        r = Reader("CONFIRM", body)
        out = cls(r.take(HANDSHAKE_ID_LEN, "handshake id"), r.take(MAC_LEN, "confirm"))
        r.end()
        return out


def peek_type(data: bytes) -> MessageType:
    """The message type of a frame, for dispatch, from its first two bytes only."""
    if len(data) < HEADER.size:
        raise MalformedMessage(f"truncated header ({len(data)} of 4 bytes)")
    if data[0] != PROTOCOL_VERSION:
        raise MalformedMessage(f"unknown protocol version {data[0]}")
    try:
        return MessageType(data[1])
    except ValueError:
        raise MalformedMessage(f"unknown message type {data[1]:#04x}") from None
