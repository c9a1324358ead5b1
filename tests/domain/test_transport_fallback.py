"""SPEC-018 §2.3 at the manager: a QUIC connection to a peer dies, its sessions record the
fallback to μTCP and hold their messages; a μTCP connection comes up, they record the switch
and send what they held — same session, same keys, every message once (decision 24). Two
managers on signed SQLite ledgers, a MockTransport and a manual clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from l2_session.domain.session.commands import Data, Send
from l2_session.domain.session.config import SessionConfig
from l2_session.transports.mock import Simulation
from session_helpers import ALICE, BOB
from test_manager import connect, payloads


def run_until(sim: Simulation, condition: Callable[[], bool], limit_s: float) -> None:
    waited = 0.0
    while not condition():
        assert waited < limit_s, f"not reached within {limit_s} s of manual time"
        sim.run_for(0.1)
        waited += 0.1


def kinds(sim: Simulation, node: str, sid) -> list[str]:
    return [type(e).__name__ for e in sim.nodes[node].ledger.events.get(sid)]


def test_a_lost_quic_connection_falls_back_to_utcp_without_losing_a_message(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    assert alice.session(sid).transport == "quic"
    now = sim.clock.wall_us()
    assert alice.transport_lost(BOB, "quic", now) == []
    s = alice.session(sid)
    assert s.transport == "utcp" and s.fallback_pending
    assert kinds(sim, ALICE, sid)[-1] == "FallbackAttempted"
    # While the fallback is pending, a message is queued (saved), not sent.
    outputs = alice.submit(sid, b"held", now)
    assert not [o for o in outputs if isinstance(o, Send) and isinstance(o.frame, Data)]
    # Losing it again, or finding a QUIC connection, changes nothing.
    assert alice.transport_lost(BOB, "quic", now) == []
    assert alice.transport_found(BOB, "quic", now) == []
    assert alice.session(sid).fallback_pending
    outputs = alice.transport_found(BOB, "utcp", sim.clock.wall_us())
    assert [o.frame.payload for o in outputs if isinstance(o.frame, Data)] == [b"held"]
    assert not alice.session(sid).fallback_pending
    assert kinds(sim, ALICE, sid)[-1] == "TransportSwitched"
    sim.perform(ALICE, outputs)
    sim.run_for(5)
    assert payloads(sim, BOB) == [b"held"]
    assert alice.session(sid).unacknowledged() == []
    # The switch is history: replayed, the session is on μTCP with nothing pending.
    replayed = alice.ledger.repository.get(sid)
    assert replayed.transport == "utcp" and not replayed.fallback_pending


def test_only_the_lost_transports_sessions_with_that_peer_fall_back(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    now = sim.clock.wall_us()
    alice.transport_lost("did:key:z6MkSomeoneElse", "quic", now)  # another peer
    alice.transport_lost(BOB, "utcp", now)  # a transport it is not on
    assert alice.session(sid).transport == "quic" and not alice.session(sid).fallback_pending
    alice.transport_lost(BOB, "quic", now)
    assert alice.session(sid).transport == "utcp"
    alice.transport_found(BOB, "utcp", now)
    # On μTCP, the last in the order: losing it has nothing to fall back to.
    assert alice.transport_lost(BOB, "utcp", now) == []
    assert not alice.session(sid).fallback_pending and alice.session(sid).transport == "utcp"


def test_a_peer_arriving_over_utcp_moves_its_quic_sessions_at_once(
    make_sim: Callable[..., Simulation],
) -> None:
    """The accepting end does not see QUIC fail: a μTCP connection from the peer is how it
    learns the peer fell back, and its sessions record the fallback and the switch together."""
    sim = make_sim()
    connect(sim)
    bob = sim.nodes[BOB]
    (alice_side,) = sim.nodes[ALICE]._sessions.values()
    bob_session = bob.session_for(alice_side.conversation)
    assert bob_session is not None and bob_session.transport == "quic"
    assert bob.transport_found(ALICE, "quic", sim.clock.wall_us()) == []  # QUIC again: nothing
    assert kinds(sim, BOB, bob_session.id)[-1] != "TransportSwitched"
    bob.transport_found(ALICE, "utcp", sim.clock.wall_us())
    assert bob_session.transport == "utcp" and not bob_session.fallback_pending
    assert kinds(sim, BOB, bob_session.id)[-2:] == ["FallbackAttempted", "TransportSwitched"]
    assert alice_side.transport == "quic"  # the other end's sessions are its own


def test_a_session_whose_link_dies_while_it_rotates_records_the_fallback_and_comes_back_over_it(
    make_sim: Callable[..., Simulation],
) -> None:
    """Found by `l2-session demo`: a QUIC link that died during a key rotation left the
    session recording QUIC while it came back (the rotation timed out, a retry established it)
    over μTCP. A rotating, suspended or failed session records the fallback and the switch
    too; the transport it records is the one it runs on."""
    # As `l2-session demo` runs: keys rotated 4 s after they were made, heartbeats every 1 s.
    config = SessionConfig(
        ttl=20.0, rotation_window=16.0, heartbeat_interval=1.0, heartbeat_tolerance=2,
        heartbeat_response_timeout=0.5,
    )  # fmt: skip
    sim = make_sim(config=config)
    sid = connect(sim)
    alice, bob = sim.nodes[ALICE], sim.nodes[BOB]
    s = alice.session(sid)
    sim.run_for(2.5)
    sim.transport.partition(ALICE, BOB)  # the rotation's request is lost with the link
    run_until(sim, lambda: s.state == "rotating", limit_s=10)
    alice.transport_lost(BOB, "quic", sim.clock.wall_us())  # the QUIC link died
    assert (s.state, s.transport, s.fallback_pending) == ("rotating", "utcp", True)
    sim.run_for(3)  # a μTCP connection comes up after a while; each end finds it
    sim.transport.heal(ALICE, BOB)
    sim.perform(BOB, bob.transport_found(ALICE, "utcp", sim.clock.wall_us()))
    sim.perform(ALICE, alice.transport_found(BOB, "utcp", sim.clock.wall_us()))
    assert not s.fallback_pending and kinds(sim, ALICE, sid).count("TransportSwitched") == 1
    run_until(sim, lambda: s.state == "established", limit_s=60)
    sim.perform(ALICE, alice.submit(sid, b"after the fallback", sim.clock.wall_us()))
    sim.run_for(5)
    assert payloads(sim, BOB) == [b"after the fallback"]
    assert alice.ledger.repository.get(sid).transport == "utcp"
    assert bob.session_for(s.conversation).transport == "utcp"


def test_a_proven_quic_link_moves_the_sessions_on_utcp_back(
    make_sim: Callable[..., Simulation],
) -> None:
    """Decision 24: once a QUIC link to the peer is proven both ways (a link check), the
    sessions that fell back to μTCP move back — ``TransportSwitched`` naming QUIC, same keys,
    what was in flight sent again, and the move kept in the ledger."""
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    s = alice.session(sid)
    keys = s.key_id
    now = sim.clock.wall_us()
    alice.transport_lost(BOB, "quic", now)
    alice.transport_found(BOB, "utcp", now)
    sim.transport.partition(ALICE, BOB)  # in flight on the old link: lost with it
    sim.perform(ALICE, alice.submit(sid, b"in flight", now))
    assert (s.transport, s.fallback_pending) == ("utcp", False)
    # μTCP proven, or a peer no session is with: nothing moves.
    assert alice.transport_proven(BOB, "utcp", now) == []
    assert alice.transport_proven("did:key:z6MkSomeoneElse", "quic", now) == []
    assert kinds(sim, ALICE, sid).count("TransportSwitched") == 1
    sim.transport.heal(ALICE, BOB)
    outputs = alice.transport_proven(BOB, "quic", sim.clock.wall_us())
    assert (s.transport, s.fallback_pending, s.key_id) == ("quic", False, keys)
    history = alice.ledger.events.get(sid)
    switches = [e for e in history if type(e).__name__ == "TransportSwitched"]
    assert [(e.transport, e.state) for e in switches] == [
        ("utcp", "established"),  # the fallback completed
        ("quic", "established"),  # and back
    ]
    # What was unacknowledged goes again on the new link.
    assert [o.frame.payload for o in outputs if isinstance(o.frame, Data)] == [b"in flight"]
    sim.perform(ALICE, outputs)
    sim.run_for(5)
    assert payloads(sim, BOB) == [b"in flight"]
    # Proven again: already there, nothing recorded.
    assert alice.transport_proven(BOB, "quic", sim.clock.wall_us()) == []
    assert kinds(sim, ALICE, sid).count("TransportSwitched") == 2
    replayed = alice.ledger.repository.get(sid)
    assert replayed.transport == "quic" and not replayed.fallback_pending


def test_a_pending_fallback_is_not_moved_back_and_moves_are_only_up_the_order(
    make_sim: Callable[..., Simulation],
) -> None:
    sim = make_sim()
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    s = alice.session(sid)
    now = sim.clock.wall_us()
    with pytest.raises(ValueError, match="not one of"):
        alice.transport_proven(BOB, "carrier-pigeon", now)
    # Over QUIC, a switch to μTCP without a fallback is down the order: refused.
    with pytest.raises(ValueError, match="moves back only"):
        s.transport_switched(now, "utcp")
    s.transport_switched(now, "quic")  # where it is: nothing recorded
    assert "TransportSwitched" not in kinds(sim, ALICE, sid)
    alice.transport_lost(BOB, "quic", now)
    assert s.fallback_pending
    # A fallback under way completes over its own transport, not another.
    with pytest.raises(ValueError, match="fallback to utcp is pending"):
        s.transport_switched(now, "quic")
    assert alice.transport_proven(BOB, "quic", now) == []
    assert (s.transport, s.fallback_pending) == ("utcp", True)


def test_a_degraded_session_moves_back_to_quic_too(make_sim: Callable[..., Simulation]) -> None:
    """The link that failed took the heartbeats with it: a session often reaches μTCP
    ``degraded``, and moves back in that state (the table takes ``transport_switched`` there);
    the next heartbeat answered over QUIC re-establishes it."""
    config = SessionConfig(
        heartbeat_interval=1.0, heartbeat_tolerance=2, heartbeat_response_timeout=0.5
    )
    sim = make_sim(config=config)
    sid = connect(sim)
    alice = sim.nodes[ALICE]
    s = alice.session(sid)
    sim.transport.partition(ALICE, BOB)
    run_until(sim, lambda: s.state == "degraded", limit_s=10)
    alice.transport_lost(BOB, "quic", sim.clock.wall_us())
    alice.transport_found(BOB, "utcp", sim.clock.wall_us())
    sim.perform(ALICE, alice.transport_proven(BOB, "quic", sim.clock.wall_us()))
    assert (s.state, s.transport) == ("degraded", "quic")
    sim.transport.heal(ALICE, BOB)
    run_until(sim, lambda: s.state == "established", limit_s=30)
    assert alice.ledger.repository.get(sid).transport == "quic"
