"""The bytes of a QUIC link's stream (transports/quic_framing.py), sans-I/O: the hello and the
frames reassembled from pieces of any size, with hypothesis; and the settings' checks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from l2_session.transports.frames import LENGTH, MAX_FRAME, FrameError
from l2_session.transports.quic_framing import FrameReader, check_frame, hello_bytes
from l2_session.transports.quic_settings import MAX_HELLO, QuicSettings


def frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


bodies = st.lists(st.binary(min_size=1, max_size=300), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    hello=st.binary(max_size=MAX_HELLO),
    bodies=bodies,
    cuts=st.lists(st.integers(min_value=0), max_size=40),
)
def test_frames_split_anywhere_come_out_whole_and_in_order(hello, bodies, cuts):
    stream = hello_bytes(hello) + b"".join(frame(b) for b in bodies)
    reader = FrameReader(hello=True)
    out = []
    for piece in pieces(stream, cuts):
        out += reader.feed(piece)
    assert reader.hello == hello
    assert out == bodies
    assert reader.buffered == 0 and reader.frame_in_progress == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_arbitrary_bytes_give_frames_or_a_frame_error_and_hold_one_frame_at_most(data, cuts):
    reader = FrameReader(hello=False)
    try:
        for piece in pieces(data, cuts):
            for body in reader.feed(piece):
                assert 1 <= len(body) <= MAX_FRAME
            assert reader.buffered <= LENGTH.size + MAX_FRAME
            assert 0 <= reader.frame_in_progress <= MAX_FRAME
    except FrameError:
        pass


@settings(max_examples=100, deadline=None)
@given(bodies=bodies, cut=st.integers(min_value=1, max_value=3))
def test_a_frame_in_progress_announces_its_length(bodies, cut):
    body = b"\x07" * 100
    reader = FrameReader(hello=False)
    assert reader.feed(b"".join(frame(b) for b in bodies)) == bodies
    assert reader.feed(frame(body)[: LENGTH.size + cut]) == []
    assert reader.frame_in_progress == 100
    assert reader.feed(frame(body)[LENGTH.size + cut :]) == [body]
    assert reader.frame_in_progress == 0


def test_the_largest_frame_passes_and_one_byte_more_is_refused_from_its_prefix():
    reader = FrameReader(hello=False)
    largest = b"\x01" * MAX_FRAME
    assert reader.feed(frame(largest)) == [largest]
    with pytest.raises(FrameError, match=f"frame length {MAX_FRAME + 1} outside"):
        reader.feed(LENGTH.pack(MAX_FRAME + 1))
    with pytest.raises(FrameError, match="frame length 0 outside"):
        FrameReader(hello=False).feed(LENGTH.pack(0))


def test_an_empty_hello_and_an_oversized_one():
    reader = FrameReader(hello=True)
    assert reader.feed(hello_bytes(b"") + frame(b"\x01")) == [b"\x01"]
    assert reader.hello == b""
    with pytest.raises(FrameError, match=f"a hello of {MAX_HELLO + 1} bytes"):
        FrameReader(hello=True).feed((MAX_HELLO + 1).to_bytes(2, "big"))
    with pytest.raises(ValueError, match="at most"):
        hello_bytes(b"x" * (MAX_HELLO + 1))


def test_check_frame_wants_a_prefix_that_says_the_body_length():
    assert check_frame(frame(b"\x01\x02")) == 2
    with pytest.raises(FrameError, match="no length prefix"):
        check_frame(b"\x00\x00")
    with pytest.raises(FrameError, match="prefix says 3, the body has 2"):
        check_frame(LENGTH.pack(3) + b"ab")
    with pytest.raises(FrameError, match="outside"):
        check_frame(frame(b"\x01" * (MAX_FRAME + 1)))


def test_settings_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="receive_window must hold one largest frame"):
        QuicSettings(receive_window=MAX_FRAME)
    with pytest.raises(ValueError, match="keepalive_s .* must be below idle_timeout_s"):
        QuicSettings(keepalive_s=30.0, idle_timeout_s=30.0)
    with pytest.raises(ValueError, match="max_connections must be a number > 0"):
        QuicSettings(max_connections=0)
