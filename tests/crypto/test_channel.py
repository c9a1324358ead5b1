"""The session channel: directional AEAD records, monotonic counters, sliding replay window
(SPEC-018 §7.1 "Replay attacks: monotonic counters in heartbeats")."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from l2_session.domain.handshake.channel import (
    REPLAY_WINDOW,
    Channel,
    CountersExhausted,
    ReplayWindow,
    heartbeat,
)
from l2_session.domain.handshake.errors import (
    HandshakeAuthenticationFailed,
    MalformedMessage,
    ReplayedMessage,
)
from l2_session.domain.handshake.keys import SessionKeys
from l2_session.domain.handshake.wire import MAX_PLAINTEXT, MessageType


def _pair(seed: int = 1) -> tuple[Channel, Channel]:
    rng = random.Random(seed)
    k1, k2 = rng.randbytes(32), rng.randbytes(32)
    sid, th = rng.randbytes(16), rng.randbytes(32)
    a = SessionKeys(sid, k1, k2, b"B" * 32, True, th)
    b = SessionKeys(sid, k2, k1, b"A" * 32, False, th)
    return Channel(a), Channel(b)


def test_records_flow_both_ways() -> None:
    a, b = _pair()
    assert b.open(a.seal(b"hello")) == (MessageType.DATA, b"hello")
    assert a.open(b.seal(b"")) == (MessageType.DATA, b"")
    kind, payload = b.open(heartbeat(a, 42))
    assert (kind, struct.unpack(">Q", payload)[0]) == (MessageType.HEARTBEAT, 42)


def test_a_side_cannot_open_its_own_records() -> None:
    # Direction keys differ: a record reflected back to its sender does not open.
    a, _ = _pair()
    with pytest.raises(HandshakeAuthenticationFailed):
        a.open(a.seal(b"reflected"))


def test_counters_increase_and_are_bound_to_the_record() -> None:
    a, b = _pair()
    records = [a.seal(b"x") for _ in range(3)]
    assert [int.from_bytes(r[4:12], "big") for r in records] == [0, 1, 2]
    # Rewriting the clear counter (to dodge the replay window) breaks the tag.
    forged = records[0][:4] + (7).to_bytes(8, "big") + records[0][12:]
    with pytest.raises(HandshakeAuthenticationFailed):
        b.open(forged)
    # ...and a forged record does not move the window: counter 7 is still fresh afterwards.
    assert b.window.highest == -1


def test_replayed_record_is_refused() -> None:
    a, b = _pair()
    record = heartbeat(a, 1)
    b.open(record)
    with pytest.raises(ReplayedMessage, match="already received"):
        b.open(record)


def test_reordering_within_the_window_is_accepted_once() -> None:
    a, b = _pair()
    records = [a.seal(str(i).encode()) for i in range(100)]
    order = list(range(100))
    random.Random(7).shuffle(order)
    assert [b.open(records[i])[1] for i in order] == [str(i).encode() for i in order]
    for i in order[:10]:
        with pytest.raises(ReplayedMessage):
            b.open(records[i])


def test_too_old_record_is_refused_even_if_never_seen() -> None:
    a, b = _pair()
    first = a.seal(b"late")
    for _ in range(REPLAY_WINDOW):
        a.seal(b"filler")
    b.open(a.seal(b"newest"))  # counter REPLAY_WINDOW + 1
    with pytest.raises(ReplayedMessage, match="behind the newest"):
        b.open(first)


def test_tampered_payload_or_kind_is_refused() -> None:
    a, b = _pair()
    record = bytearray(a.seal(b"payload"))
    record[-20] ^= 1
    with pytest.raises(HandshakeAuthenticationFailed):
        b.open(bytes(record))
    as_heartbeat = bytearray(a.seal(b"payload"))
    as_heartbeat[1] = MessageType.HEARTBEAT  # the header is associated data
    with pytest.raises(HandshakeAuthenticationFailed):
        b.open(bytes(as_heartbeat))


def test_sender_stops_at_the_reserved_limit_and_resumes_after_reserve() -> None:
    # The ledger reserves counters in blocks; the channel never goes past a reservation.
    a, b = _pair()
    sender = Channel(a.keys, next_send_counter=10, reserved_until=12)
    b.open(sender.seal(b"10"))
    b.open(sender.seal(b"11"))
    with pytest.raises(CountersExhausted, match="reserved limit 12"):
        sender.seal(b"12")
    sender.reserve(20)
    assert int.from_bytes(sender.seal(b"12")[4:12], "big") == 12


def test_restart_from_a_reservation_never_repeats_a_nonce() -> None:
    # After a crash the sender restarts at the reserved limit: counters it may have used
    # before the crash are skipped, none is used twice.
    a, _ = _pair()
    before = Channel(a.keys, reserved_until=64)
    used = {int.from_bytes(before.seal(b"x")[4:12], "big") for _ in range(40)}
    after = Channel(a.keys, next_send_counter=64, reserved_until=128)
    again = {int.from_bytes(after.seal(b"x")[4:12], "big") for _ in range(40)}
    assert used.isdisjoint(again)


def test_payload_size_is_bounded() -> None:
    a, b = _pair()
    assert b.open(a.seal(bytes(MAX_PLAINTEXT)))[1] == bytes(MAX_PLAINTEXT)
    with pytest.raises(ValueError, match="exceeds"):
        a.seal(bytes(MAX_PLAINTEXT + 1))


def test_non_record_messages_are_malformed_for_the_channel() -> None:
    _, b = _pair()
    with pytest.raises(MalformedMessage):
        b.open(bytes([1, MessageType.CONFIRM, 0, 0]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=300))
def test_replay_window_accepts_each_counter_at_most_once(counters: list[int]) -> None:
    # Model check against a plain set: accepted iff never accepted before and not older than
    # the window below the highest accepted counter.
    window = ReplayWindow(size=64)
    seen: set[int] = set()
    highest = -1
    for c in counters:
        expect = c not in seen and (c > highest or highest - c < 64)
        try:
            window.accept(c)
            accepted = True
        except ReplayedMessage:
            accepted = False
        assert accepted == expect, (c, highest)
        if accepted:
            seen.add(c)
            highest = max(highest, c)


def test_records_opened_together_are_all_accepted_or_the_window_does_not_move() -> None:
    # Two authentic records, each new to the window, a window apart: accepting the higher
    # one first would push the lower one out half-way through (the window moved, the call
    # failed). Opened together they are accepted whole, and each only once.
    a, b = _pair()
    records = [a.seal(str(i).encode()) for i in range(REPLAY_WINDOW + 51)]
    b.open(records[100])
    low, high = records[50], records[50 + REPLAY_WINDOW]
    opened = b.open_together([high, low])
    assert [payload for _, _, payload in opened] == [str(50 + REPLAY_WINDOW).encode(), b"50"]
    for record in (high, low):
        with pytest.raises(ReplayedMessage):
            b.open(record)

    # A batch with one stale record moves nothing: its fresh companion still opens alone.
    fresh = a.seal(b"fresh")
    with pytest.raises(ReplayedMessage):
        b.open_together([fresh, records[100]])
    assert b.open(fresh) == (MessageType.DATA, b"fresh")


def test_verified_records_move_the_window_only_when_accepted() -> None:
    a, b = _pair()
    records = [a.seal(b"x"), a.seal(b"y")]
    opened = b.verify_together(records)
    assert [counter for _, counter, _ in opened] == [0, 1] and b.window.highest == -1
    b.accept_together([1, 0])
    with pytest.raises(ReplayedMessage):
        b.accept_together([1])
    with pytest.raises(ReplayedMessage):
        b.open_together(records)
