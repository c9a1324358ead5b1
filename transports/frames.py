"""The session manager's frames (domain/session/commands.py) as bytes, for stream transports.

One frame on the wire::

    length u32 (big-endian; of what follows) | kind u8 | fields, in dataclass order

A field is a UUID (16 bytes), an int (u64), a bool (u8 0/1), bytes (u32 length | data) or a str
(u16 length | UTF-8). ``authentic`` is not sent: it stands for a signature check in simulations
(commands.py), and on a real wire the check is the cryptography's — a peer must not be able to
declare its own frame unauthentic and so get someone else's DID quarantined.

The handshake messages inside ``key_share`` and ``confirmation`` carry their own versioned
framing (domain/handshake/wire.py); this layer only moves them. ``decode`` rejects anything
malformed, truncated, oversized or of an unknown kind with ``FrameError`` naming what was
wrong; it never returns a partial frame.

Kinds from 0x80 up are not frames of this table: 0x80 is a sealed frame (sealed.py), which
carries a Data, DataAck, Heartbeat, HeartbeatAck, Close, CloseAck, CheckpointOffer,
CheckpointReply or LinkCheck frame encoded here, inside the session channel's records. Those
nine kinds never travel in clear on a real transport.
"""

from __future__ import annotations

import struct
from dataclasses import fields
from typing import Any
from uuid import UUID

from l2_session.domain.session.commands import (
    Close,
    CloseAck,
    Data,
    DataAck,
    Frame,
    HandshakeAck,
    HandshakeRequest,
    HandshakeResponse,
    Heartbeat,
    HeartbeatAck,
    RotationConfirm,
    RotationRequest,
    RotationResponse,
)
from l2_session.transports.bundles import BundleRequest, BundleResponse
from l2_session.transports.link_check import LinkCheck
from l2_session.transports.witness_frames import CheckpointOffer, CheckpointReply

# Append only: a kind's number is part of the wire format.
KINDS: tuple[type[Any], ...] = (
    HandshakeRequest,
    HandshakeResponse,
    HandshakeAck,
    Heartbeat,
    HeartbeatAck,
    Data,
    DataAck,
    RotationRequest,
    RotationResponse,
    RotationConfirm,
    Close,
    CloseAck,
    BundleRequest,  # 13, 14: a node's prekey bundle, asked and given (bundles.py)
    BundleResponse,
    CheckpointOffer,  # 15, 16: witnessing, sealed in a session's channel (witness_frames.py)
    CheckpointReply,
    LinkCheck,  # 17: a link proven to carry a peer's sessions, sealed (link_check.py)
)
KIND_OF = {cls: n for n, cls in enumerate(KINDS, start=1)}
LENGTH = struct.Struct(">I")
# The largest message (64 KiB) plus field overhead; anything longer is refused unread.
MAX_FRAME = 128 * 1024


class FrameError(ValueError):
    """Bytes that are not a frame of this protocol; the connection should be dropped."""


def _wire_fields(cls: type[Any]) -> list[Any]:
    return [f for f in fields(cls) if f.name != "authentic"]


# What travels on a connection: the session manager's frames and the node's own (bundles.py,
# witness_frames.py, link_check.py).
WireFrame = Frame | BundleRequest | BundleResponse | CheckpointOffer | CheckpointReply | LinkCheck


def encode(frame: WireFrame) -> bytes:
    kind = KIND_OF.get(type(frame))
    if kind is None:
        raise FrameError(f"{type(frame).__name__} is not a frame this transport carries")
    out = [bytes([kind])]
    for f in _wire_fields(type(frame)):
        value = getattr(frame, f.name)
        if f.type == "UUID":
            out.append(value.bytes)
        elif f.type == "bool":
            out.append(b"\x01" if value else b"\x00")
        elif f.type == "int":
            out.append(struct.pack(">Q", value))
        elif f.type == "bytes":
            out.append(LENGTH.pack(len(value)) + value)
        else:  # str
            data = value.encode()
            out.append(struct.pack(">H", len(data)) + data)
    body = b"".join(out)
    if len(body) > MAX_FRAME:
        raise FrameError(f"{type(frame).__name__} of {len(body)} bytes exceeds {MAX_FRAME}")
    return LENGTH.pack(len(body)) + body


def body_length(prefix: bytes) -> int:
    """The length announced by a 4-byte prefix, checked against the maximum."""
    n: int = LENGTH.unpack(prefix)[0]
    if not 1 <= n <= MAX_FRAME:
        raise FrameError(f"frame length {n} outside 1..{MAX_FRAME}")
    return n


def decode(body: bytes) -> WireFrame:
    """The frame in ``body`` (what follows the length prefix)."""
    if not body or not 1 <= body[0] <= len(KINDS):
        raise FrameError(f"unknown frame kind {body[0] if body else 'none'}")
    cls = KINDS[body[0] - 1]
    at, values = 1, list[Any]()

    def take(n: int, what: str) -> bytes:
        nonlocal at
        if at + n > len(body):
            raise FrameError(f"{cls.__name__}: truncated {what} at byte {at}")
        at += n
        return body[at - n : at]

    for f in _wire_fields(cls):
        if f.type == "UUID":
            values.append(UUID(bytes=take(16, f.name)))
        elif f.type == "bool":
            flag = take(1, f.name)[0]
            if flag > 1:
                raise FrameError(f"{cls.__name__}: {f.name} is {flag}, expected 0 or 1")
            values.append(bool(flag))
        elif f.type == "int":
            values.append(struct.unpack(">Q", take(8, f.name))[0])
        elif f.type == "bytes":
            values.append(take(LENGTH.unpack(take(4, f.name))[0], f.name))
        else:
            text = take(struct.unpack(">H", take(2, f.name))[0], f.name)
            try:
                values.append(text.decode())
            except UnicodeDecodeError as error:
                raise FrameError(f"{cls.__name__}: {f.name} is not UTF-8 ({error})") from None
    if at != len(body):
        raise FrameError(f"{cls.__name__}: {len(body) - at} trailing bytes")
    frame: Frame = cls(*values)
    return frame
