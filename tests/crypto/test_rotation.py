"""In-session key rotation (SPEC-018 §2.2 "Automatic key rotation": new ephemeral keys,
re-handshake, no messages lost; §3 rotating → established | failed)."""

from __future__ import annotations

import contextlib

import pytest
from crypto_support import DAY_US, NOW_US
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from l2_session.domain.handshake.bundle import create_prekeys
from l2_session.domain.handshake.errors import HandshakeAuthenticationFailed, HandshakeError
from l2_session.domain.handshake.protocol import InitiatorHandshake, Responder
from l2_session.domain.handshake.rotation import (
    ROTATE_AFTER_US,
    ROTATION_TIMEOUT_US,
    RotationFailed,
    SessionCrypto,
)
from l2_session.domain.handshake.wire import MessageType


def _session():  # type: ignore[no-untyped-def]
    alice, bob = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    secrets, bundle = create_prekeys(bob, expires_at_us=NOW_US + 3 * DAY_US)
    responder = Responder(bob, secrets, bundle)
    hs, init = InitiatorHandshake.start(alice, bundle, now_us=NOW_US)
    response, pending = responder.receive_init(init, now_us=NOW_US)
    confirm, keys_a = hs.receive_response(response)
    keys_b = pending.receive_confirm(confirm)
    a = SessionCrypto(keys_a, alice, now_us=NOW_US)
    b = SessionCrypto(keys_b, bob, now_us=NOW_US, responder=responder)
    return a, b, bundle


def _both_responders():  # type: ignore[no-untyped-def]
    """Two nodes that both publish prekeys, so either can answer a rotation."""
    alice, bob = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    made = {k: create_prekeys(k, expires_at_us=NOW_US + 3 * DAY_US) for k in (alice, bob)}
    responders = {k: Responder(k, *made[k]) for k in (alice, bob)}
    hs, init = InitiatorHandshake.start(alice, made[bob][1], now_us=NOW_US)
    response, pending = responders[bob].receive_init(init, now_us=NOW_US)
    confirm, keys_a = hs.receive_response(response)
    keys_b = pending.receive_confirm(confirm)
    a = SessionCrypto(keys_a, alice, now_us=NOW_US, responder=responders[alice])
    b = SessionCrypto(keys_b, bob, now_us=NOW_US, responder=responders[bob])
    return a, b, made[alice][1], made[bob][1]


def _deliver(records: list[bytes], to: SessionCrypto, now: int, inbox: list[bytes]) -> list[bytes]:
    replies: list[bytes] = []
    for record in records:
        got = to.receive(record, now_us=now)
        if got.payload is not None and got.kind == MessageType.DATA:
            inbox.append(got.payload)
        replies += got.send
    return replies


def test_rotation_is_due_at_23_hours() -> None:
    a, _, _ = _session()
    assert not a.rotation_due(NOW_US + ROTATE_AFTER_US - 1)
    assert a.rotation_due(NOW_US + ROTATE_AFTER_US)
    assert ROTATE_AFTER_US == 23 * 3_600_000_000  # ttl 24 h − rotation window 1 h


def test_rotation_switches_keys_and_loses_no_message() -> None:
    a, b, bundle = _session()
    at_b: list[bytes] = []
    at_a: list[bytes] = []
    now = NOW_US + ROTATE_AFTER_US
    old_keys = (a.keys.send_key, a.keys.receive_key)
    in_flight = a.send(b"a1") + a.send(b"a2")
    rekey = a.start_rotation(bundle, now_us=now)
    queued_a = a.send(b"a3 during rotation")  # queued: nothing goes out yet
    assert queued_a == [] and a.rotating

    replies = _deliver(in_flight + rekey, b, now, at_b)  # b answers RESPONSE, starts queuing
    queued_b = b.send(b"b1 during rotation")
    assert queued_b == [] and b.rotating
    to_b = _deliver(replies, a, now, at_a)  # a: CONFIRM (old keys), then a3 under new keys
    assert a.rotations == 1 and not a.rotating
    to_a = _deliver(to_b, b, now, at_b)  # b switches on CONFIRM, flushes b1
    _deliver(to_a, a, now, at_a)
    assert b.rotations == 1

    assert at_b == [b"a1", b"a2", b"a3 during rotation"]
    assert at_a == [b"b1 during rotation"]
    assert {a.keys.send_key, a.keys.receive_key}.isdisjoint(old_keys)
    assert a.keys.send_key == b.keys.receive_key
    assert a.keys.session_id == b.keys.session_id  # same session, new keys
    assert a.previous is None and b.previous is None  # old keys dropped after the switch
    assert not a.rotation_due(now + 1)


def test_records_in_flight_under_the_old_keys_still_open_once() -> None:
    a, b, bundle = _session()
    now = NOW_US + ROTATE_AFTER_US
    inbox: list[bytes] = []
    replies = _deliver(a.start_rotation(bundle, now_us=now), b, now, inbox)
    late = b.channel.seal(b"sent by b before it switched")  # still under b's old keys
    to_b = _deliver(replies, a, now, inbox)  # a switches
    _deliver([late], a, now, inbox)  # arrives after a's switch: opened with the previous keys
    assert inbox == [b"sent by b before it switched"]
    _deliver(to_b, b, now, inbox)
    _deliver(b.send(b"new"), a, now, inbox)
    assert a.previous is None  # dropped at the first record under the new keys
    with pytest.raises(HandshakeAuthenticationFailed):
        a.receive(late, now_us=now)  # and with them, nothing under the old keys opens


def test_rotation_timeout_fails() -> None:
    a, _, bundle = _session()
    now = NOW_US + ROTATE_AFTER_US
    a.start_rotation(bundle, now_us=now)
    a.check_timeout(now + ROTATION_TIMEOUT_US - 1)
    with pytest.raises(RotationFailed, match="not complete"):
        a.check_timeout(now + ROTATION_TIMEOUT_US)
    assert RotationFailed.reason == "key_rotation_failed"


def test_rotation_to_another_identity_is_refused() -> None:
    # A bundle of some other node cannot be used to rotate this session's keys.
    a, _, _ = _session()
    mallory = Ed25519PrivateKey.generate()
    _, other = create_prekeys(mallory, expires_at_us=NOW_US + DAY_US)
    with pytest.raises(HandshakeAuthenticationFailed, match="not the expected"):
        a.start_rotation(other, now_us=NOW_US)


def test_simultaneous_rotations_converge() -> None:
    # Both sides decide to rotate at the same moment; one yields, both end on the same keys.
    a, b, bundle_a, bundle_b = _both_responders()
    now = NOW_US + ROTATE_AFTER_US
    to_b = a.start_rotation(bundle_b, now_us=now) + a.send(b"from a")
    to_a = b.start_rotation(bundle_a, now_us=now) + b.send(b"from b")
    at_a: list[bytes] = []
    at_b: list[bytes] = []
    for _ in range(4):  # deliver until quiet
        to_a, to_b = _deliver(to_b, b, now, at_b), _deliver(to_a, a, now, at_a)
    assert (a.rotations, b.rotations) == (1, 1)
    assert a.keys.send_key == b.keys.receive_key and a.keys.receive_key == b.keys.send_key
    assert at_a == [b"from b"] and at_b == [b"from a"]


@settings(max_examples=100, deadline=None)
@given(inner=st.binary(max_size=1400))
def test_rekey_records_with_any_content_raise_only_handshake_errors(inner: bytes) -> None:
    # Even the authenticated peer cannot make the rotation code fail other than cleanly.
    a, b, _ = _SESSION
    record = a.channel.seal(inner, MessageType.REKEY)
    with contextlib.suppress(HandshakeError):
        b.receive(record, now_us=NOW_US)


_SESSION = _session()
