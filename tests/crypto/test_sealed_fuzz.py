"""The sealed-frame parser (transports/sealed.py) against random bytes and mutations of valid
sealed frames (hypothesis), with real keys and no network.

The property: ``SealedFrames.open`` returns the frame that was sealed, or raises
``SealRefused`` naming a reason — never another exception — and a refused frame changes
nothing: the untouched original still opens afterwards. Also: a frame too large for one
record is split, and opened whole.
"""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.domain.session.commands import Data, Frame, Heartbeat
from l2_session.domain.session.config import DEFAULT_CONFIG
from l2_session.domain.session.session import Session
from l2_session.infrastructure.identity import public_bytes_from_did_key
from l2_session.infrastructure.keystore import KeyStore
from l2_session.transports.sealed import SealedFrames, SealRefused
from ledger_sessions import established_pair

REASONS = {"malformed", "unknown_session", "old_key", "no_keys", "replayed", "forged"}


class Ends:
    """Alice's and Bob's sessions with real keys, each with its own ``SealedFrames``."""

    def __init__(self, tmp: Path) -> None:
        alice, bob = KeyStore.create(tmp / "a.keys"), KeyStore.create(tmp / "b.keys")
        now = time.time_ns() // 1000
        mine, theirs = established_pair(alice, bob, now)
        self.alice = Session.open(bob.identity.did, "initiator", DEFAULT_CONFIG, now)
        self.alice.initiate_handshake(now)
        self.alice.receive_valid_response(now, mine)
        self.conversation: UUID = self.alice.conversation
        self.bob = Session.open(alice.identity.did, "responder", DEFAULT_CONFIG, now,
                                conversation=self.conversation)  # fmt: skip
        self.bob.receive_handshake(now)
        self.bob.receive_ack(now, theirs)
        self.alice_did, self.now = alice.identity.did, now
        self.sending = self._frames(self.alice, alice.identity.did)
        self.receiving = self._frames(self.bob, bob.identity.did)

    def _frames(self, session: Session, did: str) -> SealedFrames:
        return SealedFrames(lambda c: session if c == session.conversation else None,
                            public_bytes_from_did_key, did, lambda s: None)  # fmt: skip

    def seal(self, frame: Frame) -> bytes:
        return self.sending.seal(frame, self.now)[4:]  # the body, as tcp.py reads it


@pytest.fixture(scope="module")
def ends(tmp_path_factory: pytest.TempPathFactory) -> Ends:
    return Ends(tmp_path_factory.mktemp("sealed"))


def _open_or_refused(ends: Ends, body: bytes) -> Frame | None:
    try:
        return ends.receiving.open(ends.alice_did, body)[0]
    except SealRefused as refused:
        assert refused.reason in REASONS
        return None


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_cleanly(ends: Ends, data: bytes) -> None:
    assert _open_or_refused(ends, b"\x80" + data) is None


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_mutations_are_refused_and_change_nothing(ends: Ends, data: st.DataObject) -> None:
    frame = Heartbeat(ends.conversation, data.draw(st.integers(0, 2**64 - 1)))
    body = bytearray(ends.seal(frame))
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        choice = data.draw(st.sampled_from(["flip", "cut", "extend"]))
        if choice == "flip" and mutated:
            at = data.draw(st.integers(0, len(mutated) - 1))
            mutated[at] ^= data.draw(st.integers(1, 255))
        elif choice == "cut" and mutated:
            del mutated[data.draw(st.integers(0, len(mutated) - 1)) :]
        else:
            mutated += data.draw(st.binary(min_size=1, max_size=8))
    if mutated[:1] != b"\x80" or bytes(mutated) == bytes(body):
        return
    assert _open_or_refused(ends, bytes(mutated)) is None
    assert ends.receiving.open(ends.alice_did, bytes(body))[0] == frame  # nothing consumed


def test_a_frame_larger_than_a_record_is_split_and_opened_whole(ends: Ends) -> None:
    frame = Data(ends.conversation, 1, bytes(range(256)) * 256)  # the 64 KiB maximum
    body = ends.seal(frame)
    assert body[25] == 5  # records: 64 KiB and the frame's fields, in 16 KiB pieces
    assert ends.receiving.open(ends.alice_did, body)[0] == frame


def _records(body: bytes) -> list[bytes]:
    at, out = 26, []
    while at < len(body):
        end = at + 4 + int.from_bytes(body[at + 2 : at + 4], "big")
        out.append(body[at:end])
        at = end
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_authentic_records_that_are_not_one_whole_frame_change_nothing(
    ends: Ends, data: st.DataObject
) -> None:
    # An on-path attacker cuts a split frame short, drops, repeats or reorders its records
    # (each record authentic, the record count in clear adjusted): refused, and the window
    # has not moved — the frame as sent still opens.
    frame = Data(ends.conversation, 1, bytes(40_000))  # three records
    body = ends.seal(frame)
    records = _records(body)
    assert len(records) == 3
    chosen = data.draw(st.lists(st.sampled_from(range(3)), min_size=1, max_size=4))
    if chosen == [0, 1, 2]:
        return
    spliced = body[:25] + bytes([len(chosen)]) + b"".join(records[i] for i in chosen)
    assert _open_or_refused(ends, spliced) is None
    assert ends.receiving.open(ends.alice_did, body)[0] == frame
