"""The stream encoding of the manager's frames (transports/frames.py): every kind round-trips,
``authentic`` never crosses the wire, and malformed input is refused with FrameError."""

from __future__ import annotations

from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from l2_session.domain.session.commands import (
    Close,
    CloseAck,
    Data,
    DataAck,
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
from l2_session.transports.frames import (
    KINDS,
    MAX_FRAME,
    FrameError,
    body_length,
    decode,
    encode,
)
from l2_session.transports.link_check import LinkCheck
from l2_session.transports.witness_frames import CheckpointOffer, CheckpointReply

C = uuid4()
FRAMES = [
    HandshakeRequest(C, b"init", resuming=True),
    HandshakeResponse(C, b"response", "prekeys-é"),
    HandshakeAck(C, b"confirm"),
    Heartbeat(C, 7),
    HeartbeatAck(C, 7),
    Data(C, 3, b"x" * 1000),
    DataAck(C, 2**63),
    RotationRequest(C, b"i"),
    RotationResponse(C, b"r"),
    RotationConfirm(C, b"c"),
    Close(C),
    CloseAck(C),
    BundleRequest("did:key:z6MkPeer"),
    BundleResponse("did:key:z6MkPeer", b"bundle"),
    CheckpointOffer(C, b"note", 3, b"\x01" * 64),
    CheckpointReply(C, 4, b"\x02" * 32, b"", "refused: a reason", 3),
    LinkCheck(C, False),
    LinkCheck(C, True),
]


def test_the_round_trips_cover_every_kind_of_the_wire() -> None:
    assert {type(f) for f in FRAMES} == set(KINDS)


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_every_frame_kind_round_trips(frame: object) -> None:
    wire = encode(frame)  # type: ignore[arg-type]
    assert body_length(wire[:4]) == len(wire) - 4
    assert decode(wire[4:]) == frame


def test_authentic_is_not_carried_so_no_peer_can_get_another_quarantined() -> None:
    forged = HandshakeRequest(C, b"init", authentic=False)
    assert decode(encode(forged)[4:]).authentic is True  # type: ignore[union-attr]


def test_malformed_frames_are_refused_naming_what_is_wrong() -> None:
    body = encode(Data(C, 1, b"abc"))[4:]
    with pytest.raises(FrameError, match="truncated payload"):
        decode(body[:-1])
    with pytest.raises(FrameError, match="1 trailing bytes"):
        decode(body + b"\x00")
    with pytest.raises(FrameError, match="unknown frame kind 99"):
        decode(b"\x63" + body[1:])
    with pytest.raises(FrameError, match="outside"):
        body_length((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(FrameError, match="resuming is 2"):
        decode(encode(HandshakeRequest(C, b""))[4:-1] + b"\x02")


@given(st.binary(max_size=200))
def test_random_bytes_decode_to_a_frame_that_re_encodes_or_fail_cleanly(data: bytes) -> None:
    try:
        frame = decode(data)
    except FrameError:
        return
    assert encode(frame)[4:] == data
