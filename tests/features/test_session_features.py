"""Step definitions for the three features of SPEC-018 §2, copied verbatim into
tests/features/*.feature (test_feature_files_match_spec.py keeps them verbatim).

Where a step's words need reading, the docstring says how and cites the decision in
docs/spec-decisions.md.
"""

from __future__ import annotations

import logging

import pytest
from l2_session.domain.handshake.wire import MessageType
from l2_session.domain.session.commands import Data, HandshakeRequest, Heartbeat, RotationRequest
from l2_session.domain.session.errors import PeerQuarantined
from l2_session.domain.session.timers import Timer, deadlines
from l2_session.infrastructure.identity import public_bytes_from_did_key
from pytest_bdd import given, parsers, scenarios, then, when
from session_world import SECOND, World

scenarios("session_establishment.feature")
scenarios("session_maintenance.feature")
scenarios("degradation_and_recovery.feature")

HOUR = 3600 * SECOND


def events_named(world: World, name: str) -> list:
    return [e for e in world.history() if type(e).__name__ == name]


# ----------------------------------------------------------------------- shared
@then(parsers.parse('state transitions to "{state}"'))
@then(parsers.parse('state becomes "{state}"'))
def state_is(world: World, state: str) -> None:
    assert world.session.state == state
    moves = [e for e in world.history() if getattr(e, "state", None) is not None]
    assert moves[-1].state == state, "the transition is recorded in the ledger"


# ----------------------------------------------------------------------- §2.1
@given("a discovered peer with valid DID")
def discovered_peer(world: World) -> None:
    assert len(public_bytes_from_did_key(world.remote)) == 32  # a well-formed did:key


@when("session establishment is initiated")
def initiate(world: World) -> None:
    world.establish()


@then("PQxdh handshake request is sent")
def request_sent(world: World) -> None:
    (request,) = world.sent(HandshakeRequest)
    assert request.conversation == world.session.conversation and not request.resuming


@when("valid handshake response received")
def response_received(world: World) -> None:
    world.run_until(lambda: world.session.state != "handshake_initiated", limit_s=1)


@then("shared session keys are derived")
def keys_derived(world: World) -> None:
    (established,) = events_named(world, "Established")
    assert established.new_keys and world.session.key_id == world.peer_session.key_id


@then("TTL is set to 24 hours")
def ttl_24h(world: World) -> None:
    assert world.session.lease_expires_us - world.session.keys_derived_us == 24 * HOUR


@given("previous session exists with unchanged prekeys")
def previous_session(world: World) -> None:
    """A session that was established, lost its peer until suspended, and whose process
    restarted; the peer's prekeys are what they were (decision 4)."""
    world.connect()
    world.memo["key_id"] = world.session.key_id
    world.memo["generation"] = world.ticket(world.session).generation
    world.sim.transport.partition(world.local, world.remote)
    world.run_until(lambda: world.session.state == "suspended", step_s=1)
    world.sim.transport.heal(world.local, world.remote)
    world.restart_local()
    assert world.session.state == "suspended"
    assert world.prekeys[world.remote] == world.session.prekeys


@when("resumption is initiated")
def resume(world: World) -> None:
    world.memo["resumed_at"] = world.now
    world.sim.perform(world.local, world.node.resume(world.session_id, world.now))  # type: ignore[arg-type]


@then("existing key material is reused")
def keys_reused(world: World) -> None:
    """Decision 4: the key material sealed in the ledger is reused — its resumption secret
    proves possession and keys the new traffic keys — with no new KEM exchange."""
    world.run_until(lambda: world.session.state == "established", limit_s=0.1, step_s=0.01)
    request = world.sent(HandshakeRequest)[-1]
    assert request.resuming and request.key_share[1] == MessageType.RESUME  # no KEM ciphertext
    assert events_named(world, "Established")[-1].new_keys is False
    # Fresh traffic keys, one generation on from the stored ones, the same at both ends.
    assert world.session.key_id != world.memo["key_id"]
    world.run_until(lambda: world.peer_session.state == "established", limit_s=1, step_s=0.01)
    assert world.session.key_id == world.peer_session.key_id
    assert world.ticket(world.session).generation == world.memo["generation"] + 1


@then(parsers.parse('state becomes "{state}" within {ms:d}ms'))
def state_within(world: World, state: str, ms: int) -> None:
    """Decision 4: 100 ms is the resumption's deadline; the reply came before it."""
    initiated, established = [
        e for e in world.history() if type(e).__name__ in ("HandshakeInitiated", "Established")
    ][-2:]
    assert initiated.trigger == "initiate_resumption()" and established.state == state
    assert established.at_us - initiated.at_us <= ms * 1000
    assert world.session.state == state


@when("no response within 5 seconds")
def no_response(world: World) -> None:
    world.sim.transport.isolate(world.remote)
    world.establish()
    world.sim.run_for(5)


@then(parsers.parse('failure reason is "{reason}"'))
def failure_reason(world: World, reason: str) -> None:
    assert world.session.failure_reason == reason
    assert events_named(world, "Failed")[-1].reason == reason


@then("retry is scheduled with exponential backoff")
def retry_backoff(world: World) -> None:
    first = world.node.peer(world.remote).retry_at_us - world.now
    assert world.session.retry_at_us == world.node.peer(world.remote).retry_at_us
    world.run_until(lambda: world.session.state == "handshake_initiated", step_s=0.05)
    world.run_until(lambda: world.session.state == "failed", step_s=0.05)
    second = world.node.peer(world.remote).retry_at_us - world.now
    assert world.node.peer(world.remote).failed_attempts == 2
    assert 0 < first < second  # base * factor^n, jitter at most 20 %


@when("invalid signature received")
def invalid_signature(world: World) -> None:
    world.sim.forge_from = world.remote
    world.establish()
    world.sim.run_for(1)


@then("peer is quarantined for 60 seconds")
def quarantined(world: World) -> None:
    failed_at = events_named(world, "Failed")[-1].at_us
    peer = world.node.peer(world.remote)
    assert peer.quarantined_until_us == failed_at + 60 * SECOND
    with pytest.raises(PeerQuarantined):
        world.node.establish(world.remote, failed_at + 60 * SECOND - 1)
    world.node.establish(world.remote, failed_at + 60 * SECOND)


# ----------------------------------------------------------------------- §2.2
@when("30 seconds pass without activity")
def quiet_30s(world: World) -> None:
    world.connect()
    world.memo["lease"] = world.session.lease_expires_us
    world.sim.run_until(world.session.last_activity_us + 30 * SECOND)


@then("heartbeat is sent")
def heartbeat_sent(world: World) -> None:
    assert world.sent(Heartbeat) and events_named(world, "HeartbeatSent")


@then("peer responds within 2 seconds")
def peer_responds(world: World) -> None:
    world.sim.run_for(2)
    sent, answered = (
        events_named(world, "HeartbeatSent")[-1],
        events_named(world, "HeartbeatAnswered"),
    )
    assert answered and 0 <= answered[-1].at_us - sent.at_us <= 2 * SECOND


@then("TTL is extended")
def ttl_extended(world: World) -> None:
    assert world.session.lease_expires_us > world.memo["lease"]


def miss_heartbeats(world: World, count: int) -> None:
    world.sim.transport.partition(world.local, world.remote)
    world.run_until(lambda: world.session.missed_heartbeats >= count, step_s=0.5)


@given(parsers.parse("peer misses {count:d} heartbeat"))
def misses_one(world: World, count: int) -> None:
    world.connect()
    miss_heartbeats(world, count)
    world.sim.transport.heal(world.local, world.remote)


@when("next heartbeat succeeds")
def next_heartbeat(world: World) -> None:
    answered = len(events_named(world, "HeartbeatAnswered"))
    world.run_until(lambda: len(events_named(world, "HeartbeatAnswered")) > answered, step_s=1)


@then(parsers.parse('session remains "{state}"'))
def remains(world: World, state: str) -> None:
    assert world.session.state == state
    assert {getattr(e, "state", state) for e in world.history()[2:]} == {state}


@then("warning is logged")
def warning_logged(world: World, caplog: pytest.LogCaptureFixture) -> None:
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("missed heartbeat 1 of 3" in r.getMessage() for r in warnings)


@given(parsers.parse("peer misses {count:d} heartbeats"))
def misses_three(world: World, count: int) -> None:
    """The peer stays silent; the step stops once the third heartbeat is out."""
    world.connect()
    miss_heartbeats(world, count - 1)
    world.run_until(lambda: world.session.heartbeat_sent_us is not None, step_s=1)


@when("third timeout occurs")
def third_timeout(world: World) -> None:
    """Decision 1: the third heartbeat's timeout degrades, and the timeout(60s) that follows
    in degraded suspends; the step checks the session passed through degraded."""
    world.run_until(lambda: world.session.state == "degraded", step_s=0.5)
    world.submit(b"queued while degraded")
    world.run_until(lambda: world.session.state != "degraded", step_s=1)
    visited = [getattr(e, "state", None) for e in world.history()]
    assert visited.index("degraded") < visited.index("suspended")


@then("queued messages are held")
def messages_held(world: World) -> None:
    world.submit(b"queued while suspended")
    assert [p for _, p in world.session.unacknowledged()] == [
        b"queued while degraded",
        b"queued while suspended",
    ]
    assert world.sent(Data) == [] and world.session.sendable() == []


@then("recovery is attempted after 60s")
def recovery_after_60s(world: World) -> None:
    suspended_at = world.session.state_since_us
    assert deadlines(world.session)[Timer.SUSPENDED_RECOVERY] == suspended_at + 60 * SECOND
    world.sim.run_until(suspended_at + 60 * SECOND)
    retry = events_named(world, "HandshakeInitiated")[-1]
    assert retry.trigger == "retry()" and retry.at_us == suspended_at + 60 * SECOND


@given("session age reaches 24 hours")
def age_24h(world: World) -> None:
    """Decision 3: the keys live 24 h (ttl) and the rotation window is the last hour of it.
    The clock jumps (both nodes idle, no ticks in between) to the instant before the window
    opens; the overdue heartbeats are then exchanged once."""
    world.connect()
    world.submit(b"before rotation")
    world.sim.run_for(1)
    world.memo["key_id"] = world.session.key_id
    opens = world.session.keys_derived_us + 24 * HOUR - HOUR
    world.clock.advance((opens - 1 - world.now) / SECOND)
    world.sim.run_for(0)
    assert world.session.state == "established" and world.session.key_id == world.memo["key_id"]


@when("rotation window triggers")
def rotation_window(world: World) -> None:
    world.submit(b"as the window opens")
    world.sim.run_for(0.000001)
    assert world.session.state == "rotating"
    world.submit(b"during rotation")
    world.sim.run_for(1)


@then("new ephemeral keys are generated")
def new_keys(world: World) -> None:
    assert world.session.key_id != world.memo["key_id"]
    world.run_until(lambda: world.peer_session.state == "established", limit_s=1, step_s=0.01)
    assert world.session.key_id == world.peer_session.key_id
    assert events_named(world, "Established")[-1].new_keys


@then("re-handshake is initiated")
def rehandshake(world: World) -> None:
    assert world.sent(RotationRequest) and events_named(world, "RotationStarted")


@then("no messages are lost")
def none_lost(world: World) -> None:
    world.sim.run_for(60)
    assert world.delivered_to_peer() == [
        b"before rotation",
        b"as the window opens",
        b"during rotation",
    ]
    assert world.session.unacknowledged() == []


# ----------------------------------------------------------------------- §2.3
def partition_for_more_than_30s(world: World) -> None:
    world.connect()
    world.sim.transport.partition(world.local, world.remote)
    world.link("connectivity_lost")
    world.sim.run_for(30.001)


@when("connectivity lost for >30s")
def connectivity_lost(world: World) -> None:
    partition_for_more_than_30s(world)


@then("messages are queued")
def queued(world: World) -> None:
    world.submit(b"while partitioned")
    assert world.session.unacknowledged() == [(1, b"while partitioned")]
    assert world.session.sendable() == [] and world.sent(Data) == []


@then("session is preserved")
def preserved(world: World) -> None:
    live = world.session
    assert not live.closed and live.key_id is not None
    assert world.node.ledger.repository.get(live.id) == live


@given(parsers.parse('session is "{state}"'))
def session_is(world: World, state: str) -> None:
    partition_for_more_than_30s(world)
    world.submit(b"queued 1")
    world.submit(b"queued 2")
    assert world.session.state == state


@when("connectivity restored")
def restored(world: World) -> None:
    world.sim.transport.heal(world.local, world.remote)
    world.link("connectivity_restored")


@then("re-establishment is attempted")
def reestablishment(world: World) -> None:
    attempt = events_named(world, "ReestablishmentAttempted")[-1]
    assert world.sent(Heartbeat)[-1].counter == attempt.counter


@then("queued messages are flushed")
def flushed(world: World) -> None:
    world.sim.run_for(1)
    assert world.session.state == "established"
    assert world.delivered_to_peer() == [b"queued 1", b"queued 2"]
    assert world.session.unacknowledged() == []


@given("session over QUIC")
def over_quic(world: World) -> None:
    world.connect()
    assert world.session.transport == "quic"


@when("QUIC fails")
def quic_fails(world: World) -> None:
    world.sim.transport.fail_transport(world.local, "quic")
    world.link("transport_failed")
    world.submit(b"sent during fallback")


@then("re-establishment over μTCP is attempted")
def over_utcp(world: World) -> None:
    attempt = events_named(world, "FallbackAttempted")[-1]
    assert attempt.transport == "utcp" and world.session.fallback_pending
    world.link("transport_switched")  # the μTCP adapter connected


@then("this is transparent to upper layers")
def transparent(world: World) -> None:
    world.sim.run_for(1)
    assert {getattr(e, "state", None) for e in world.history()[2:]} == {"established"}
    assert world.delivered_to_peer() == [b"sent during fallback"]
