"""Per-peer quarantine and backoff (decision 7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import PeerQuarantined
from l2_session.domain.session.peer import Peer, backoff_delay_us, peer_id
from l2_session.transports.mock import Simulation
from session_helpers import ALICE, BOB, SECOND, T0


def test_quarantine_refuses_new_sessions_and_survives_restart(
    session_ledger_factory: Callable[..., Any],
) -> None:
    ledger = session_ledger_factory("alice")
    manager = SessionManager(ALICE, ledger, key_exchange="mock")
    peer = manager.peer(BOB)
    retry_at = peer.authentication_failed(T0, jitter=0.0)
    ledger.save(peer)
    assert peer.quarantined_until_us == T0 + 60 * SECOND
    assert retry_at >= peer.quarantined_until_us  # the retry waits out the quarantine

    restarted = SessionManager(ALICE, session_ledger_factory("alice"), key_exchange="mock")
    with pytest.raises(PeerQuarantined, match="quarantined after an authentication failure"):
        restarted.establish(BOB, T0 + 60 * SECOND - 1)
    assert len(restarted) == 0  # nothing was opened, nothing recorded
    session_id, outputs = restarted.establish(BOB, T0 + 60 * SECOND)
    assert outputs and restarted.session(session_id).state == "handshake_initiated"


def test_backoff_grows_per_peer_across_sessions_and_resets_on_success() -> None:
    config = SessionConfig(backoff_base=1.0, backoff_factor=2.0, backoff_cap=5.0)
    peer = Peer.register(BOB, config, T0)
    delays = [peer.schedule_retry(T0, jitter=0.0) - T0 for _ in range(5)]
    assert delays == [1 * SECOND, 2 * SECOND, 4 * SECOND, 5 * SECOND, 5 * SECOND]
    peer.succeeded(T0)
    assert peer.schedule_retry(T0, jitter=0.0) - T0 == 1 * SECOND
    assert peer.id == peer_id(BOB) == Peer.register(BOB, config, T0).id


def test_jitter_shortens_the_delay_by_at_most_the_jitter_fraction() -> None:
    config = SessionConfig(backoff_jitter=0.2)
    assert backoff_delay_us(config, 3, 0.0) == 4 * SECOND
    assert backoff_delay_us(config, 3, 0.999) > 4 * SECOND * 0.8
    with pytest.raises(ValueError, match="jitter must be in"):
        backoff_delay_us(config, 1, 1.0)


def test_forged_response_quarantines_peer_and_fails_session(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim()
    alice, bob = sim.nodes[ALICE], sim.nodes[BOB]
    sid, outputs = alice.establish(BOB, sim.clock.wall_us())
    sim.perform(ALICE, outputs)
    request = next(iter(sim.transport.due()), None)
    assert request is None  # still in flight
    sim.clock.advance(0.02)
    (_, _, frame), *_ = list(sim.transport.due())
    response = bob.receive(ALICE, frame, sim.clock.wall_us())[0].frame
    forged = type(response)(response.conversation, response.key_share, authentic=False)
    alice.receive(BOB, forged, sim.clock.wall_us())
    session = alice.session(sid)
    assert session.state == "failed" and session.failure_reason == "authentication_failed"
    assert alice.peer(BOB).is_quarantined(sim.clock.wall_us() + 59 * SECOND)
    assert not alice.peer(BOB).is_quarantined(sim.clock.wall_us() + 60 * SECOND)


def test_request_from_quarantined_peer_is_refused_and_opens_nothing(
    make_sim: Callable[..., Simulation],
) -> None:
    from uuid import uuid4

    from l2_session.domain.session.commands import HandshakeRequest

    sim = make_sim()
    bob = sim.nodes[BOB]
    now = sim.clock.wall_us()
    forged = HandshakeRequest(uuid4(), b"\x00" * 32, authentic=False)
    assert bob.receive(ALICE, forged, now) == []
    assert bob.peer(ALICE).is_quarantined(now)
    genuine = HandshakeRequest(uuid4(), b"\x00" * 32)
    assert bob.receive(ALICE, genuine, now + 59 * SECOND) == []
    assert len(bob) == 0 and bob.dropped_frames == 1
    assert bob.receive(ALICE, genuine, now + 60 * SECOND) != []
    assert len(bob) == 1


def test_recovery_of_a_session_waits_out_its_peers_quarantine(
    make_sim: Callable[..., Simulation],
) -> None:
    """A suspended session's recovery timer falls due while its peer is quarantined (by
    another session's failure): the retry is deferred to the quarantine's end, not spun on."""
    sim = make_sim()
    alice = sim.nodes[ALICE]
    sid, outputs = alice.establish(BOB, sim.clock.wall_us())
    sim.perform(ALICE, outputs)
    sim.run_for(1)
    sim.transport.partition(ALICE, BOB)
    sim.run_for(160)
    session = alice.session(sid)
    assert session.state == "suspended"
    recovery_at = session.state_since_us + 60 * SECOND
    quarantine_ends = recovery_at - SECOND + 60 * SECOND
    alice.peer(BOB).authentication_failed(recovery_at - SECOND, jitter=0.0)
    alice.tick(recovery_at)  # tick directly: a spinning timer must fail here, not hang
    assert session.state == "suspended"
    assert alice.next_wakeup_us() == quarantine_ends
    assert alice.tick(quarantine_ends - 1) == []
    alice.tick(quarantine_ends)
    assert session.state == "handshake_initiated"
