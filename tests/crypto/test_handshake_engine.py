"""The engine a session manager drives: dispatch, outcomes in SPEC-018's words, timeouts,
quarantine, and bounded state."""

from __future__ import annotations

from dataclasses import replace

import pytest
from crypto_support import DAY_US, NOW_US
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from l2_session.domain.handshake.bundle import create_prekeys
from l2_session.domain.handshake.engine import HANDSHAKE_TIMEOUT_US, HandshakeEngine
from l2_session.domain.handshake.protocol import Responder
from l2_session.domain.handshake.resume import ResumeResponder, ResumptionTicket
from l2_session.domain.handshake.wire import Response

A, B = "192.0.2.1:7000", "192.0.2.2:7000"


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture
def nodes():  # type: ignore[no-untyped-def]
    alice, bob = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    secrets, bundle = create_prekeys(bob, expires_at_us=NOW_US + DAY_US)
    tickets: dict[bytes, ResumptionTicket] = {}
    engine_b = HandshakeEngine(
        bob,
        responder=Responder(bob, secrets, bundle),
        resume_responder=ResumeResponder(tickets.get, (1, 1)),
    )
    return HandshakeEngine(alice), engine_b, bundle, alice, bob, tickets


def test_two_engines_establish(nodes) -> None:  # type: ignore[no-untyped-def]
    a, b, bundle, alice, bob, _ = nodes
    hid, init = a.initiate(bundle, now_us=NOW_US, expected_responder=_pub(bob), source=B)
    got = b.receive(init, source=A, now_us=NOW_US)
    assert got.send and got.peer_identity == _pub(alice) and got.established is None
    done_a = a.receive(got.send, source=B, now_us=NOW_US)
    assert done_a.established and done_a.handshake_id == hid and done_a.send
    done_b = b.receive(done_a.send, source=A, now_us=NOW_US)
    assert done_b.established and done_b.send is None
    assert done_a.established.send_key == done_b.established.receive_key
    assert (a.pending(), b.pending()) == (0, 0)


def test_no_response_is_a_timeout(nodes) -> None:  # type: ignore[no-untyped-def]
    a, b, bundle, _, bob, _ = nodes
    hid, init = a.initiate(bundle, now_us=NOW_US, expected_responder=_pub(bob))
    b.receive(init, source=A, now_us=NOW_US)
    assert a.expire(NOW_US + HANDSHAKE_TIMEOUT_US - 1) == []
    [timeout] = a.expire(NOW_US + HANDSHAKE_TIMEOUT_US)
    assert (timeout.failed, timeout.handshake_id) == ("timeout", hid)
    [responder_timeout] = b.expire(NOW_US + HANDSHAKE_TIMEOUT_US)  # handshake_received -> failed
    assert responder_timeout.failed == "timeout"


def test_forged_response_fails_authentication_and_quarantines(nodes) -> None:  # type: ignore[no-untyped-def]
    a, b, bundle, _, bob, _ = nodes
    hid, init = a.initiate(bundle, now_us=NOW_US, expected_responder=_pub(bob), source=B)
    reply = Response.parse(b.receive(init, source=A, now_us=NOW_US).send)
    forged = replace(reply, signature=bytes(64)).encode()
    out = a.receive(forged, source=B, now_us=NOW_US)
    assert (out.failed, out.quarantined, out.handshake_id) == ("authentication_failed", True, hid)
    assert a.pending() == 0


def test_forged_init_is_dropped_and_its_source_quarantined(nodes) -> None:  # type: ignore[no-untyped-def]
    _, b, bundle, alice, bob, _ = nodes
    a2 = HandshakeEngine(Ed25519PrivateKey.generate())
    _, init = a2.initiate(bundle, now_us=NOW_US, expected_responder=_pub(bob))
    claimed = init[:6] + _pub(alice) + init[38:]  # claims Alice, cannot sign as her
    out = b.receive(claimed, source="203.0.113.9:1", now_us=NOW_US)
    assert out.dropped and out.quarantined and b.pending() == 0
    again = b.receive(claimed, source="203.0.113.9:1", now_us=NOW_US + 1)
    assert again.dropped and "quarantined" in again.dropped
    # Alice herself, from her own address, is not locked out by the forger.
    _, real = HandshakeEngine(alice).initiate(bundle, now_us=NOW_US, expected_responder=_pub(bob))
    assert b.receive(real, source=A, now_us=NOW_US + 2).send


@pytest.mark.parametrize(
    "garbage", [b"", b"\x01", b"\x02\x01\x00\x00", b"\x01\x20\x00\x00", bytes(200)]
)
def test_garbage_and_strays_are_dropped_without_state(nodes, garbage: bytes) -> None:  # type: ignore[no-untyped-def]
    a, b, *_ = nodes
    assert b.receive(garbage, source=A, now_us=NOW_US).dropped
    stray = bytes([1, 3, 0, 48]) + bytes(48)  # a CONFIRM for no handshake
    assert b.receive(stray, source=A, now_us=NOW_US).dropped
    assert (a.pending(), b.pending()) == (0, 0)


def test_pending_handshakes_are_bounded(nodes) -> None:  # type: ignore[no-untyped-def]
    _, _, bundle, _, bob, _ = nodes
    a = HandshakeEngine(Ed25519PrivateKey.generate(), max_pending=5)
    for i in range(12):
        a.initiate(bundle, now_us=NOW_US + i, expected_responder=_pub(bob))
    assert a.pending() == 5


def test_resume_through_the_engines(nodes) -> None:  # type: ignore[no-untyped-def]
    a, b, bundle, _, bob, tickets = nodes
    _, init = a.initiate(bundle, now_us=NOW_US, expected_responder=_pub(bob))
    reply = b.receive(init, source=A, now_us=NOW_US).send
    done_a = a.receive(reply, source=B, now_us=NOW_US)
    done_b = b.receive(done_a.send, source=A, now_us=NOW_US)
    tickets[done_b.established.session_id] = ResumptionTicket.of(done_b.established)

    later = NOW_US + 3_600_000_000
    request = a.resume(ResumptionTicket.of(done_a.established), now_us=later)
    response = b.receive(request, source=A, now_us=later)
    resumed_a = a.receive(response.send, source=B, now_us=later)
    resumed_b = b.receive(resumed_a.send, source=A, now_us=later)
    assert resumed_a.established.send_key == resumed_b.established.receive_key
    assert resumed_a.established.generation == 1


def test_reply_from_another_address_cannot_abort_the_handshake(nodes) -> None:  # type: ignore[no-untyped-def]
    # An off-path attacker who learned the handshake id sends a forged CONFIRM from its own
    # address: dropped, the handshake goes on, and Alice is not quarantined.
    a, b, bundle, _, bob, _ = nodes
    _, init = a.initiate(bundle, now_us=NOW_US, expected_responder=_pub(bob), source=B)
    response = b.receive(init, source=A, now_us=NOW_US).send
    confirm = a.receive(response, source=B, now_us=NOW_US).send
    forged = confirm[:-1] + bytes([confirm[-1] ^ 1])
    out = b.receive(forged, source="203.0.113.66:9", now_us=NOW_US)
    assert out.dropped and "expected from" in out.dropped and not out.quarantined
    assert b.receive(confirm, source=A, now_us=NOW_US).established is not None


def test_spending_a_one_time_prekey_is_reported_for_persistence() -> None:
    alice, bob = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    secrets, bundle = create_prekeys(bob, expires_at_us=NOW_US + DAY_US, one_time_prekey_ids=(1,))
    b = HandshakeEngine(bob, responder=Responder(bob, secrets, bundle))
    _, with_opk = HandshakeEngine(alice).initiate(
        bundle, now_us=NOW_US, expected_responder=_pub(bob)
    )
    assert b.receive(with_opk, source=A, now_us=NOW_US).prekeys_changed
    _, without = HandshakeEngine(Ed25519PrivateKey.generate()).initiate(
        replace(bundle, one_time_prekeys=()), now_us=NOW_US, expected_responder=_pub(bob)
    )
    assert not b.receive(without, source=B, now_us=NOW_US).prekeys_changed
