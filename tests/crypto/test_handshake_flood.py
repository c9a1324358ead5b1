"""Handshake floods stay bounded, and legitimate peers still get through (SPEC-018 §7.1 DoS)."""

from __future__ import annotations

import contextlib
import random
import time
import tracemalloc

import pytest
from crypto_support import DAY_US, NOW_US
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from l2_session.domain.handshake.admission import (
    QUARANTINE_US,
    Bucket,
    FloodLimits,
    HandshakeAdmission,
    HandshakeRefused,
)
from l2_session.domain.handshake.bundle import create_prekeys
from l2_session.domain.handshake.errors import HandshakeAuthenticationFailed, HandshakeError
from l2_session.domain.handshake.protocol import InitiatorHandshake, Responder

SECOND = 1_000_000


def test_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = Bucket(rate=2, burst=3, tokens=3, updated_us=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(SECOND // 2) and not bucket.take(SECOND // 2)
    assert sum(bucket.take(100 * SECOND) for _ in range(10)) == 3  # never more than the burst


def test_quarantine_refuses_cheaply_for_60_seconds_at_that_source() -> None:
    gate = HandshakeAdmission(now_us=0)
    peer = b"p" * 32
    gate.quarantine(peer, "10.0.0.1:4000", now_us=0)
    with pytest.raises(HandshakeRefused, match="quarantined"):
        gate.admit(peer, "10.0.0.1:4000", now_us=QUARANTINE_US - 1)
    gate.admit(peer, "10.0.0.2:4000", now_us=1)  # a forger elsewhere cannot lock the peer out
    gate.admit(peer, "10.0.0.1:4000", now_us=QUARANTINE_US)
    assert QUARANTINE_US == 60 * SECOND  # SPEC-018 §2.1


def test_per_source_and_per_peer_limits() -> None:
    gate = HandshakeAdmission(FloodLimits(per_source_burst=3, per_peer_burst=100), now_us=0)
    for i in range(3):
        gate.admit(bytes([i]) * 32, "noisy", 0)
    with pytest.raises(HandshakeRefused, match="source rate"):
        gate.admit(b"x" * 32, "noisy", 0)
    gate = HandshakeAdmission(FloodLimits(per_peer_burst=2), now_us=0)
    gate.admit(b"i" * 32, "a", 0)
    gate.admit(b"i" * 32, "a", 0)
    with pytest.raises(HandshakeRefused, match="peer rate"):
        gate.admit(b"i" * 32, "a", 0)
    gate.admit(b"i" * 32, "b", 0)  # the same identity claimed elsewhere is another peer


def test_flood_is_bounded_and_known_peers_get_through() -> None:
    """20,000 INITs in 10 s from random identities and addresses, each well-formed (so it costs
    the responder a parse), against one responder; a known peer handshakes every 0.5 s."""
    responder_key, alice, mallory = (Ed25519PrivateKey.generate() for _ in range(3))
    secrets, bundle = create_prekeys(responder_key, expires_at_us=NOW_US + DAY_US)
    responder = Responder(responder_key, secrets, bundle)
    limits = FloodLimits(max_tracked=2_000)
    gate = HandshakeAdmission(limits, now_us=NOW_US)

    def handshake(now: int) -> None:
        hs, init = InitiatorHandshake.start(alice, bundle, now_us=now)
        gate.admit_init(init, "alice:1", now)
        response, pending = responder.receive_init(init, now_us=now)
        confirm, _ = hs.receive_response(response)
        pending.receive_confirm(confirm)
        gate.authenticated(Init_identity(init), "alice:1")

    handshake(NOW_US)  # Alice has met this node before the flood
    _, template = InitiatorHandshake.start(mallory, bundle, now_us=NOW_US)
    rng = random.Random(1)
    expensive = alice_ok = 0
    started = time.process_time()
    total, duration = 20_000, 10 * SECOND
    for n in range(total):
        now = NOW_US + n * duration // total
        forged = template[:6] + rng.randbytes(32) + template[38:]  # a fresh claimed identity
        source = f"198.51.100.{rng.randrange(256)}:{rng.randrange(1024, 65536)}"
        try:
            init = gate.admit_init(forged, source, now)
        except HandshakeRefused:
            pass
        else:
            expensive += 1
            with pytest.raises(HandshakeAuthenticationFailed):
                responder.receive_init(forged, now_us=now)
            gate.quarantine(init.initiator_identity, source, now)
        if n % (total // 20) == 0:
            handshake(now)
            alice_ok += 1
    cpu = time.process_time() - started

    # CPU: signature checks (the first expensive step) stay within the new-peer budget.
    assert expensive <= limits.unknown_burst + limits.unknown_rate * 10 + 1
    assert sum(gate.refused.values()) == total - expensive
    # Memory: every table is capped; the replay cache holds only authenticated INITs.
    assert gate.tracked() <= 4 * limits.max_tracked
    assert len(responder.replay_cache) == alice_ok + 1
    # The known peer was never refused, and the whole flood cost little CPU per INIT.
    assert alice_ok == 20
    assert cpu / total < 1e-3, f"{cpu / total * 1e6:.0f} us of CPU per flood INIT"


def Init_identity(init: bytes) -> bytes:
    return init[6:38]


def test_refusal_is_a_handshake_error() -> None:
    assert issubclass(HandshakeRefused, HandshakeError)


def test_gate_memory_does_not_grow_with_the_flood() -> None:
    """Peak memory of the admission gate after N and after 3N forged INITs from fresh identities
    and addresses: bounded tables mean the second is not three times the first."""

    def peak(total: int) -> int:
        gate = HandshakeAdmission(FloodLimits(max_tracked=500), now_us=NOW_US)
        rng = random.Random(total)
        tracemalloc.start()
        for n in range(total):
            identity = rng.randbytes(32)
            with contextlib.suppress(HandshakeRefused):
                gate.admit(identity, f"10.{n % 250}.{n // 250 % 250}.1:1", NOW_US + n * 1000)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert gate.tracked() <= 4 * 500
        return top

    small, large = peak(2_000), peak(6_000)
    assert large < 1.3 * small, (small, large)


def test_a_borrowed_known_identity_cannot_starve_its_owner() -> None:
    """Identities are public: a flood claiming Alice's identity from other addresses must not
    use up Alice's budget nor the known-peers budget she draws on."""
    alice = b"a" * 32
    limits = FloodLimits(known_burst=10, known_rate=5, unknown_burst=10, unknown_rate=5)
    gate = HandshakeAdmission(limits, now_us=0)
    gate.authenticated(alice, "alice:1")
    rng = random.Random(2)
    for n in range(5_000):
        now = n * 1_000  # 5 s of flood
        with contextlib.suppress(HandshakeRefused):
            gate.admit(alice, f"198.51.100.{rng.randrange(256)}:{rng.randrange(65536)}", now)
        if n % 500 == 0:
            gate.admit(alice, "alice:1", now)  # never refused
    assert gate.refused.get("global rate", 0) > 4_000
