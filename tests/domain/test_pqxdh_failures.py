"""SPEC-018 §2.1 failures and resumption on real PQxdh keys, through the session manager, on
signed SQLite ledgers: timeout and backoff, authentication failure and quarantine (with no KEM
work for a quarantined peer), resumption after a restart without a KEM exchange, and the full
handshake it falls back to when the peer's prekeys changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from l2_session.domain.handshake.wire import MessageType
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.domain.session.commands import (
    HandshakeAck,
    HandshakeRequest,
    HandshakeResponse,
    Send,
)
from l2_session.domain.session.config import SessionConfig
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.resolver import ResolutionError
from pqxdh_nodes import Nodes

SECOND = 1_000_000


def _connected(open_ledger: Callable[..., Any], clock: ManualClock) -> tuple[Nodes, Any]:
    nodes = Nodes(open_ledger, clock)
    sid, outputs = nodes.manager(nodes.alice).establish(nodes.bob, clock.wall_us())
    nodes.sim.perform(nodes.alice, outputs)
    nodes.sim.run_for(1)
    assert nodes.manager(nodes.alice).session(sid).state == "established"
    return nodes, sid


def _only(outputs: list[Any], frame_type: type) -> Any:
    [frame] = [o.frame for o in outputs if isinstance(o, Send) and isinstance(o.frame, frame_type)]
    return frame


def test_handshake_timeout_fails_and_retries_with_growing_backoff(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    nodes = Nodes(session_ledger_factory, manual_clock)
    alice = nodes.manager(nodes.alice)
    nodes.sim.transport.isolate(nodes.bob)
    sid, outputs = alice.establish(nodes.bob, manual_clock.wall_us())
    nodes.sim.perform(nodes.alice, outputs)
    nodes.sim.run_for(5.001)  # SPEC-018 §2.1 "no response within 5 seconds"
    session = alice.session(sid)
    assert (session.state, session.failure_reason) == ("failed", "timeout")
    first = alice.peer(nodes.bob).retry_at_us - manual_clock.wall_us()
    nodes.run_until(lambda: session.state == "handshake_initiated", limit_s=10)
    nodes.run_until(lambda: session.state == "failed", limit_s=10)
    second = alice.peer(nodes.bob).retry_at_us - manual_clock.wall_us()
    assert 0 < first < second and alice.peer(nodes.bob).failed_attempts == 2

    nodes.sim.transport.rejoin(nodes.bob)
    nodes.run_until(lambda: session.state == "established", limit_s=60)
    assert alice.peer(nodes.bob).failed_attempts == 0  # success resets the backoff
    theirs = nodes.manager(nodes.bob).session_for(session.conversation)
    nodes.run_until(lambda: theirs is not None and theirs.state == "established", limit_s=1)
    assert theirs is not None and theirs.key_id == session.key_id


def test_authentication_failure_quarantines_and_a_quarantined_peer_costs_no_kem_work(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    nodes = Nodes(session_ledger_factory, manual_clock)
    alice, bob = nodes.manager(nodes.alice), nodes.manager(nodes.bob)
    now = manual_clock.wall_us()
    sid, outputs = alice.establish(nodes.bob, now)
    reply = _only(
        bob.receive(nodes.alice, _only(outputs, HandshakeRequest), now), HandshakeResponse
    )
    forged = bytearray(reply.key_share)
    forged[-1] ^= 1  # the responder's key confirmation no longer matches
    assert alice.receive(nodes.bob, replace(reply, key_share=bytes(forged)), now) == []
    session = alice.session(sid)
    assert (session.state, session.failure_reason) == ("failed", "authentication_failed")
    assert alice.peer(nodes.bob).quarantined_until_us == now + 60 * SECOND

    # Bob, quarantined at Alice, opens a handshake of his own: dropped before any KEM work.
    decapsulations = nodes.nodes[nodes.alice].kem.decapsulations
    _, outputs = bob.establish(nodes.alice, now + SECOND)
    request = _only(outputs, HandshakeRequest)
    assert alice.receive(nodes.bob, request, now + SECOND) == []
    assert nodes.nodes[nodes.alice].kem.decapsulations == decapsulations
    # After the 60 s the same kind of request is answered (and costs a decapsulation).
    later = now + 60 * SECOND
    _, outputs = bob.establish(nodes.alice, later)
    answered = alice.receive(nodes.bob, _only(outputs, HandshakeRequest), later)
    assert _only(answered, HandshakeResponse).key_share
    assert nodes.nodes[nodes.alice].kem.decapsulations == decapsulations + 1


def test_a_forged_init_claiming_a_peer_does_not_lock_that_peer_out(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    """Decision 11: the identity in an INIT is unproven until its signature verifies, so a
    forged one quarantines that identity at the sender's address only, never the DID."""
    nodes = Nodes(session_ledger_factory, manual_clock)
    alice, bob = nodes.manager(nodes.alice), nodes.manager(nodes.bob)
    address = {"now": "192.0.2.66:4000"}  # Mallory's
    exchange = nodes.manager(nodes.alice)._kx
    assert isinstance(exchange, PqxdhKeyExchange)
    exchange.source_of = lambda did: address["now"]
    now = manual_clock.wall_us()
    _, outputs = bob.establish(nodes.alice, now)
    genuine = _only(outputs, HandshakeRequest)
    forged = bytearray(genuine.key_share)
    forged[-1] ^= 1  # the INIT's signature no longer verifies
    assert alice.receive(nodes.bob, replace(genuine, key_share=bytes(forged)), now) == []
    assert not alice.peer(nodes.bob).is_quarantined(now)
    decapsulations = nodes.nodes[nodes.alice].kem.decapsulations
    assert alice.receive(nodes.bob, genuine, now) == []  # from Mallory's address: refused ...
    assert exchange.engine.admission.refused == {"quarantined": 1}  # ... by the gate, cheaply
    assert nodes.nodes[nodes.alice].kem.decapsulations == decapsulations
    address["now"] = "192.0.2.2:4000"  # Bob's own address
    assert _only(alice.receive(nodes.bob, genuine, now), HandshakeResponse).key_share


def test_a_request_naming_a_did_that_does_not_resolve_is_dropped_before_any_kem_work(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    """Cheap identity checks come first: the DID a request names must resolve before the
    responder does any DH or KEM work — and a resolver's failure is that frame's alone."""
    nodes = Nodes(session_ledger_factory, manual_clock)
    alice, bob = nodes.manager(nodes.alice), nodes.manager(nodes.bob)
    now = manual_clock.wall_us()
    _, outputs = bob.establish(nodes.alice, now)
    request = _only(outputs, HandshakeRequest)
    resolve = nodes.directory.resolve

    def offline(did: str) -> Any:
        if did == nodes.bob:
            raise ResolutionError(f"no DID document for {did}")
        return resolve(did)

    nodes.directory.resolve = offline  # type: ignore[method-assign]
    decapsulations = nodes.nodes[nodes.alice].kem.decapsulations
    assert alice.receive(nodes.bob, request, now) == []
    assert alice.dropped_frames == 1 and alice.session_for(request.conversation) is None
    assert nodes.nodes[nodes.alice].kem.decapsulations == decapsulations
    nodes.directory.resolve = resolve  # type: ignore[method-assign]
    assert _only(alice.receive(nodes.bob, request, now), HandshakeResponse).key_share
    assert nodes.nodes[nodes.alice].kem.decapsulations == decapsulations + 1


def test_a_reply_from_another_address_or_a_stale_one_leaves_the_handshake_waiting(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    """Decision 13 through the manager: a RESPONSE that the engine drops (another address, an
    old handshake) neither fails the session nor quarantines the peer."""
    nodes = Nodes(session_ledger_factory, manual_clock)
    alice, bob = nodes.manager(nodes.alice), nodes.manager(nodes.bob)
    exchange = alice._kx
    assert isinstance(exchange, PqxdhKeyExchange)
    address = {"now": "192.0.2.2:4000"}  # Bob's
    exchange.source_of = lambda did: address["now"]
    now = manual_clock.wall_us()
    sid, outputs = alice.establish(nodes.bob, now)
    reply = _only(
        bob.receive(nodes.alice, _only(outputs, HandshakeRequest), now), HandshakeResponse
    )
    address["now"] = "192.0.2.66:4000"  # the same bytes, replayed by Mallory
    assert alice.receive(nodes.bob, reply, now) == []
    session = alice.session(sid)
    assert session.state == "handshake_initiated" and not alice.peer(nodes.bob).is_quarantined(now)
    address["now"] = "192.0.2.2:4000"
    assert alice.receive(nodes.bob, reply, now)  # the real one: established, ack sent
    assert session.state == "established"
    # A duplicate is answered with the ack again (Bob may have lost it), not a failure.
    assert _only(alice.receive(nodes.bob, reply, now), HandshakeAck).confirmation
    assert session.state == "established" and not alice.peer(nodes.bob).is_quarantined(now)


def _suspend_and_restart(nodes: Nodes, sid: Any, *, renew_bob_prekeys: bool) -> None:
    """Both ends lose each other until suspended; both processes restart from their ledgers."""
    nodes.sim.transport.partition(nodes.alice, nodes.bob)
    session = nodes.manager(nodes.alice).session(sid)
    nodes.run_until(lambda: session.state == "suspended", limit_s=600, step_s=1)
    nodes.sim.transport.heal(nodes.alice, nodes.bob)
    nodes.start(nodes.bob, renew_prekeys=renew_bob_prekeys)
    nodes.start(nodes.alice).restore(sid)


def test_resumption_after_restart_makes_fresh_keys_without_a_kem_exchange(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    nodes, sid = _connected(session_ledger_factory, manual_clock)
    before = nodes.manager(nodes.alice).session(sid).key_id
    _suspend_and_restart(nodes, sid, renew_bob_prekeys=False)
    alice = nodes.manager(nodes.alice)
    kem = [(n.kem.encapsulations, n.kem.decapsulations) for n in nodes.nodes.values()]

    outputs = alice.resume(sid, manual_clock.wall_us())
    assert _only(outputs, HandshakeRequest).key_share[1] == MessageType.RESUME
    nodes.sim.perform(nodes.alice, outputs)
    session = alice.session(sid)
    bob = nodes.manager(nodes.bob)  # finds the session in its ledger when the RESUME comes
    nodes.run_until(
        lambda: getattr(bob.session_for(session.conversation), "state", "") == "established",
        limit_s=1,
    )
    theirs = bob.session_for(session.conversation)
    assert session.state == "established" and not alice.ledger.repository.get(sid).resuming
    assert [(n.kem.encapsulations, n.kem.decapsulations) for n in nodes.nodes.values()] == kem
    assert theirs is not None and session.key_id == theirs.key_id != before
    # The resumed keys carry traffic.
    nodes.sim.perform(nodes.alice, alice.submit(sid, b"after restart", manual_clock.wall_us()))
    nodes.sim.run_for(1)
    assert [d.payload for d in nodes.sim.delivered[nodes.bob]] == [b"after restart"]


def test_resumption_with_renewed_peer_prekeys_falls_back_to_a_full_handshake(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    nodes, sid = _connected(session_ledger_factory, manual_clock)
    _suspend_and_restart(nodes, sid, renew_bob_prekeys=True)
    alice = nodes.manager(nodes.alice)
    encapsulations = nodes.nodes[nodes.alice].kem.encapsulations
    nodes.sim.perform(nodes.alice, alice.resume(sid, manual_clock.wall_us()))
    session = alice.session(sid)
    # Bob refuses the RESUME (his prekeys changed); Alice's resumption times out at 100 ms
    # (decision 4) and her retry is a full handshake.
    nodes.run_until(lambda: session.state == "failed", limit_s=1, step_s=0.01)
    assert session.failure_reason == "timeout"
    nodes.run_until(lambda: session.state == "established", limit_s=30)
    established = [e for e in alice.ledger.events.get(sid) if type(e).__name__ == "Established"]
    assert established[-1].new_keys is True
    assert nodes.nodes[nodes.alice].kem.encapsulations == encapsulations + 1
    nodes.sim.perform(nodes.alice, alice.submit(sid, b"new keys", manual_clock.wall_us()))
    nodes.sim.run_for(1)
    assert [d.payload for d in nodes.sim.delivered[nodes.bob]] == [b"new keys"]


def _exchange(nodes: Nodes, did: str, timeout_us: int | None = None) -> PqxdhKeyExchange:
    node = nodes.nodes[did]
    assert node.responder is not None
    options = {} if timeout_us is None else {"timeout_us": timeout_us}
    return PqxdhKeyExchange.with_prekeys(
        node.identity.private_key, node.responder, nodes.directory, **options
    )


def test_a_config_waiting_longer_than_the_key_exchange_keeps_a_handshake_is_refused(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    nodes = Nodes(session_ledger_factory, manual_clock)
    slow = SessionConfig(handshake_timeout=8.0)
    with pytest.raises(ValueError, match=r"keeps a handshake 5 s, but the config waits 8 s"):
        SessionManager(nodes.alice, session_ledger_factory("a2"), slow,
                       key_exchange=_exchange(nodes, nodes.alice))  # fmt: skip
    with pytest.raises(ValueError, match=r"waits 9 s"):
        SessionManager(nodes.alice, session_ledger_factory("a3"),
                       SessionConfig(rotation_timeout=9.0),
                       key_exchange=_exchange(nodes, nodes.alice))  # fmt: skip


def test_a_reply_within_a_longer_configured_timeout_completes_the_handshake(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    """The key exchange forgets handshakes on every tick; with an engine timeout as long as
    the config's, a reply 7 s late (past the default 5 s) still completes it."""
    nodes = Nodes(session_ledger_factory, manual_clock)
    slow = SessionConfig(handshake_timeout=8.0)
    alice = SessionManager(nodes.alice, session_ledger_factory("a2"), slow,
                           key_exchange=_exchange(nodes, nodes.alice, 8 * SECOND))  # fmt: skip
    bob = SessionManager(nodes.bob, session_ledger_factory("b2"), slow,
                         key_exchange=_exchange(nodes, nodes.bob, 8 * SECOND))  # fmt: skip
    sid, outputs = alice.establish(nodes.bob, manual_clock.wall_us())
    request = _only(outputs, HandshakeRequest)
    manual_clock.advance(7)
    alice.tick(manual_clock.wall_us())  # expires what outlived the key exchange's timeout
    response = _only(bob.receive(nodes.alice, request, manual_clock.wall_us()), HandshakeResponse)
    alice.receive(nodes.bob, response, manual_clock.wall_us())
    assert alice.session(sid).state == "established"


def test_an_initiator_killed_before_its_resumption_was_confirmed_resumes_again(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    """Alice resumes, saves the new keys Bob's answer gave, and dies before her confirmation
    reaches Bob (he still holds the old keys, waiting). Her next process resumes from the new
    keys, which Bob cannot answer from: he must refuse that request — not answer it with his
    answer to the last one, which Alice would take for a forgery and quarantine him for — so
    that her resumption times out and a full handshake carries the same session on."""
    nodes, sid = _connected(session_ledger_factory, manual_clock)
    alice = nodes.manager(nodes.alice)
    # Alice's process restarts while Bob's session is still established.
    alice = nodes.start(nodes.alice)
    now = manual_clock.wall_us()
    request = alice.reconnected(nodes.bob, now)
    answer = nodes.manager(nodes.bob).receive(nodes.alice, _only(request, HandshakeRequest), now)
    confirmation = alice.receive(nodes.bob, _only(answer, HandshakeResponse), now)
    assert alice.session(sid).state == "established"  # saved with the new keys
    assert _only(confirmation, HandshakeAck)  # ... and its confirmation is lost: she dies
    alice = nodes.start(nodes.alice)
    bob = nodes.manager(nodes.bob)
    again = alice.reconnected(nodes.bob, manual_clock.wall_us())
    dropped = bob.dropped_frames
    assert bob.receive(nodes.alice, _only(again, HandshakeRequest), manual_clock.wall_us()) == []
    assert bob.dropped_frames == dropped + 1  # refused, not answered with the last answer
    session = alice.session(sid)

    def theirs() -> Any:
        return bob.session_for(session.conversation)

    nodes.run_until(
        lambda: session.state == theirs().state == "established", limit_s=60, step_s=0.05
    )
    assert bob.peer(nodes.alice).quarantined_until_us is None
    assert alice.peer(nodes.bob).quarantined_until_us is None
    assert theirs().key_id == session.key_id
    nodes.sim.perform(nodes.alice, alice.submit(sid, b"carried on", manual_clock.wall_us()))
    nodes.sim.run_for(1)
    assert [d.payload for d in nodes.sim.delivered[nodes.bob]] == [b"carried on"]


def test_an_initiator_killed_before_its_confirmation_arrived_gets_its_retry_answered(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    """Alice saves the keys of Bob's answer and dies before her confirmation reaches him:
    Bob's session still waits in handshake_received, without keys. Her next process cannot
    resume (Bob has nothing to resume from); its full handshake — a new request on the same
    conversation — must be answered anew, not with Bob's answer to the first request, which
    her new process has no handshake for and drops (found with `l2_session.Node`, closing a
    node right after `establish`)."""
    nodes = Nodes(session_ledger_factory, manual_clock)
    alice = nodes.manager(nodes.alice)
    bob = nodes.manager(nodes.bob)
    now = manual_clock.wall_us()
    sid, request = alice.establish(nodes.bob, now)
    answer = bob.receive(nodes.alice, _only(request, HandshakeRequest), now)
    confirmation = alice.receive(nodes.bob, _only(answer, HandshakeResponse), now)
    assert alice.session(sid).state == "established" and _only(confirmation, HandshakeAck)
    theirs = bob.session_for(alice.session(sid).conversation)
    assert theirs is not None and theirs.state == "handshake_received"  # never confirmed
    alice = nodes.start(nodes.alice)  # she died; her confirmation with her
    nodes.sim.perform(nodes.alice, alice.reconnected(nodes.bob, manual_clock.wall_us()))
    session = alice.session(sid)
    nodes.run_until(
        lambda: session.state == "established" and theirs.state == "established",
        limit_s=60, step_s=0.05,
    )  # fmt: skip
    assert theirs.key_id == session.key_id
    assert bob.peer(nodes.alice).quarantined_until_us is None
    nodes.sim.perform(nodes.alice, alice.submit(sid, b"at last", manual_clock.wall_us()))
    nodes.sim.run_for(1)
    assert [d.payload for d in nodes.sim.delivered[nodes.bob]] == [b"at last"]
