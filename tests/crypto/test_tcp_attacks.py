"""A server node under attack over loopback TCP, with real keys and a real signed SQLite ledger
(docs/security.md, "Denial of service"): each attack is bounded, and under each a legitimate
peer still gets its session while the node's memory and its ledger stay bounded. The tests
count and bound; none measures a time."""

from __future__ import annotations

import asyncio
import logging
import struct
import tracemalloc
from typing import Any
from uuid import UUID

import pytest
from l2_session.domain.handshake.admission import FloodLimits, HandshakeAdmission
from l2_session.domain.session.commands import Send
from l2_session.domain.session.peer import peer_id
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.transports import sealed, tcp_worker
from l2_session.transports.frames import MAX_FRAME
from l2_session.transports.tcp_bounds import source_of
from tcp_support import (
    Attacked,
    fresh_did,
    held_connections,
    hello,
    run_attacked,
    unread_bytes,
    until,
    until_steady,
)

# The admission gate wide open, where the gate is not what a test is about.
OPEN_GATE = {
    "admission": HandshakeAdmission(
        FloodLimits(**{f: 1e9 for f in FloodLimits.__dataclass_fields__ if f != "max_tracked"})
    )
}


def _events_by_originator(attacked: Attacked) -> dict[UUID, tuple[str, int]]:
    """Bob's ledger: per aggregate, its type and how many events it has."""
    found: dict[UUID, tuple[str, int]] = {}
    recorder = attacked.bob.ledger.recorder
    for n in recorder.select_notifications(start=1, limit=1_000_000):
        kind = n.topic.rsplit(":", 1)[1].split(".")[0]
        found[n.originator_id] = (kind, found.get(n.originator_id, (kind, 0))[1] + 1)
    return found


# ------------------------------------------------------------------ 1. the connection cap
def test_connections_still_in_their_hello_count_toward_the_cap(tmp_path) -> None:
    # A burst of connections that say nothing: before their hello they are connections too.
    async def test(a: Attacked) -> None:
        for _ in range(60):
            await a.watched.open(a.port)
        await until_steady(lambda: held_connections(a.port) + a.watched.closed == 60)
        assert held_connections(a.port) <= 16
        await a.newcomer("alice")  # the newest connection gets in (the oldest idle one goes)
        assert held_connections(a.port) <= 16

    run_attacked(tmp_path, test, node_options={"max_connections": 16, "hello_timeout_s": 60})


def test_silent_connections_over_the_cap_cannot_lock_a_peer_out(tmp_path) -> None:
    # 1,100 connections that sent a well-formed hello and went silent, against the default
    # cap of 1,024: the oldest idle unproven one makes room for a peer that talks.
    async def test(a: Attacked) -> None:
        for _ in range(1100):
            await a.watched.open(a.port, hello(fresh_did()))
        await until_steady(lambda: held_connections(a.port) + a.watched.closed == 1100)
        assert held_connections(a.port) <= 1024
        alice, _ = await a.newcomer("alice")
        assert a.bob.node.is_proven(alice.did)

    run_attacked(tmp_path, test)


def test_proven_connections_are_never_cut_for_newcomers(tmp_path) -> None:
    async def test(a: Attacked) -> None:
        alice, sid = await a.newcomer("alice")
        for _ in range(30):
            await a.watched.open(a.port, hello(fresh_did()))
        await until_steady(lambda: held_connections(a.port) + a.watched.closed == 31)
        assert held_connections(a.port) == 4 and a.bob.node.is_proven(alice.did)
        await alice.node.send(sid, b"still here")
        await until(lambda: [d.payload for d in a.bob.node.delivered] == [b"still here"])

    run_attacked(tmp_path, test, node_options={"max_connections": 4})


def test_sources_are_addresses_and_ipv6_slash_64s() -> None:
    # Decision 19: a new connection's new port is not a new source, nor is another address
    # of the /64 one host usually holds.
    assert source_of(("192.0.2.7", 40001)) == source_of(("192.0.2.7", 40002)) == "192.0.2.7"
    assert source_of(("2001:db8:1:2::7", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("2001:db8:1:2:ffff::1", 2, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("2001:db8:1:3::7", 1, 0, 0)) == "2001:db8:1:3::/64"
    assert source_of(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"  # IPv4, mapped
    assert source_of(("fe80::1%eth0", 1, 0, 2)) == "fe80::/64"
    assert source_of(None) == ""


def test_a_connection_silent_after_its_hello_is_closed(tmp_path) -> None:
    async def test(a: Attacked) -> None:
        await a.watched.open(a.port, hello(fresh_did()))
        await until(lambda: a.watched.closed == 1)
        assert "idle" in a.bob.node.dropped_connections[-1]
        assert held_connections(a.port) == 0

    run_attacked(tmp_path, test, node_options={"idle_timeout_s": 0.2})


def test_a_frame_trickled_a_byte_at_a_time_is_cut_off(tmp_path) -> None:
    # Slowloris: every byte is activity, but the frame as a whole has a deadline.
    async def test(a: Attacked) -> None:
        length = 400
        await a.watched.open(a.port, hello(fresh_did()) + struct.pack(">I", length))
        writer, sent = a.watched.writers[0], 0
        while not a.watched.closed and sent < length:
            writer.write(b"\x01")
            sent += 1
            await asyncio.sleep(0.02)
        assert a.watched.closed == 1 and sent < length
        assert "inside a frame" in a.bob.node.dropped_connections[-1]

    run_attacked(tmp_path, test, node_options={"frame_timeout_s": 0.3})


def test_frames_held_one_byte_short_hold_bounded_memory(tmp_path) -> None:
    # Each connection sends a hello and all but the last byte of a largest frame, and waits.
    connections, budget = 150, 1 << 20

    async def test(a: Attacked) -> None:
        partial = struct.pack(">I", MAX_FRAME) + b"\x01" * (MAX_FRAME - 1)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(connections):
                await a.watched.open(a.port, hello(fresh_did()) + partial)
            await until_steady(
                lambda: (
                    held_connections(a.port) + a.watched.closed == connections
                    and unread_bytes(a.port) == 0
                    and not any(w.transport.get_write_buffer_size() for w in a.watched.writers)
                )
            )
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        # Before the budget: every connection held its 131,071 bytes (150 x 128 KiB).
        assert held < budget + connections * 16 * 1024, f"{held} bytes held"
        assert a.bob.node.occupancy.partial_bytes <= budget
        await a.newcomer("alice")

    run_attacked(tmp_path, test, node_options={"max_partial_bytes": budget})


# ------------------------------------------------------------------ 2. one bad hello
def test_a_hello_that_is_not_a_did_key_is_refused_and_poisons_no_batch(tmp_path, caplog) -> None:
    claims = ["mallory", "did:web:mallory.example", "did:key:z0OIl", "did:key:zQ3s" + "1" * 40]

    async def test(a: Attacked) -> None:
        for i in range(20):
            request = a.request(NodeIdentity.generate())
            await a.watched.open(a.port, hello(claims[i % len(claims)]) + request)
        await a.newcomer("alice")
        await until(lambda: a.watched.closed == 20)
        node = a.bob.node
        assert node.failed_frames == 0 and node.dropped_count == 20
        assert all(why.startswith("bad hello: ") for why in node.dropped_connections)
        assert a.kem.decapsulations == 1  # Alice's handshake; none for a refused claim
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    caplog.set_level(logging.INFO, logger="l2_session")
    run_attacked(tmp_path, test, engine_options=OPEN_GATE)


def test_an_init_signed_by_another_identity_than_claimed_costs_no_kem_work(tmp_path) -> None:
    async def test(a: Attacked) -> None:
        alice, _ = await a.newcomer("alice")
        decapsulations, dropped = a.kem.decapsulations, a.bob.manager.dropped_frames
        for _ in range(10):  # claims Alice's DID, signs with its own key
            await a.watched.open(a.port, hello(alice.did) + a.request(NodeIdentity.generate()))
        await until(lambda: a.bob.manager.dropped_frames == dropped + 10)
        assert a.kem.decapsulations == decapsulations
        assert a.bob.node.failed_frames == 0

    run_attacked(tmp_path, test, engine_options=OPEN_GATE)


# ------------------------------------------------------------------ 3. the ledger
def test_a_flood_of_unconfirmed_handshakes_does_not_grow_the_ledger(tmp_path) -> None:
    flood = 100

    async def test(a: Attacked) -> None:
        await a.flood(flood)
        engine = a.bob.manager._kx.engine  # type: ignore[attr-defined]
        await until(lambda: engine.pending() == flood)  # all answered, none confirmed
        alice, sid = await a.newcomer("alice")
        await a.tick(6)  # past the handshake timeout: every flooded handshake has failed
        await a.tick(60)  # the summary interval is over
        responder = a.bob.manager.session_for(sid)
        assert responder is not None
        history = [type(e).__name__ for e in a.bob.ledger.events.get(responder.id)]
        assert history[:3] == ["Opened", "HandshakeReceived", "Established"]
        # Nothing else in the ledger but Alice's standing and one summary of the flood.
        by_originator = _events_by_originator(a)
        summaries = [o for o, (kind, _) in by_originator.items() if kind == "UnconfirmedHandshakes"]
        assert len(summaries) == 1
        assert set(by_originator) == {responder.id, peer_id(alice.did), *summaries}
        assert a.bob.ledger.repository.get(summaries[0]).counts == {"timeout": flood}
        assert len(a.bob.manager) == 1  # only Alice's session is left in memory

    run_attacked(tmp_path, test, engine_options=OPEN_GATE)


# ------------------------------------------------------------------ 4. memory
def test_tables_of_peers_and_pending_handshakes_stay_bounded_and_expire(tmp_path) -> None:
    flood = 120

    async def test(a: Attacked) -> None:
        await a.flood(flood)
        manager = a.bob.manager
        exchange = manager._kx  # type: ignore[attr-defined]
        await until(lambda: exchange.engine.pending() == flood)
        assert len(manager._peers) <= 50  # bounded while the flood is in flight
        await a.newcomer("alice")
        await a.tick(6)  # the handshake timeout: on the node's own clock, not on its next handshake
        assert exchange.engine.pending() == 0 and len(exchange._peers) == 0
        await a.tick(600)  # peers idle for the peer cache's time are let go
        assert len(manager._peers) == 0
        assert len(manager) == 1  # Alice's session

    run_attacked(tmp_path, test, engine_options=OPEN_GATE, manager_options={"max_peers": 50})


def test_keys_agreed_and_channels_of_closed_sessions_leave_the_node(tmp_path, monkeypatch):
    # Anyone can make an identity and complete handshakes: what a node keeps per session it
    # agreed (which keys prove a connection, each session channel) must leave with the session.
    monkeypatch.setattr(tcp_worker, "PRUNE_FLOOR", 8)
    monkeypatch.setattr(sealed, "PRUNE_FLOOR", 8)

    async def test(a: Attacked) -> None:
        alice, first = await a.newcomer("alice")
        manager, node = alice.manager, alice.node
        wave = [first, *[await a.another_session(alice) for _ in range(29)]]
        for sid in wave:
            await node.send(sid, b"one")
        await until(lambda: len(a.bob.node.delivered) == 30)

        def silence() -> None:
            """Bob goes quiet (Alice's heartbeats are not sent): her sessions fail their
            heartbeats, are suspended, and she cleans them up; they leave her memory."""
            while any(manager.session(sid).state != "suspended" for sid in wave):
                wake = manager.next_wakeup_us()
                assert wake is not None
                manager.tick(a.clock.skip(max(0, wake - a.clock.now_us()) / 1e6))
            for sid in wave:
                manager.cleanup(sid, a.clock.now_us())

        await node.query(silence)
        assert len(manager) == 0
        for _ in range(10):
            sid = await a.another_session(alice)
            await node.send(sid, b"two")
        await until(lambda: len(a.bob.node.delivered) == 40)
        assert len(manager) == 10
        assert len(node.worker._agreed_here) <= 2 * len(manager)  # not the 40 ever agreed
        assert len(node.sealed._channels) <= 2 * len(manager)

    run_attacked(tmp_path, test, engine_options=OPEN_GATE)


# ------------------------------------------------------------------ 5. sources
def _gate(**limits: float) -> dict[str, Any]:
    slow = {f: 1e-9 for f in ("per_source_rate", "per_peer_rate", "known_rate", "unknown_rate")}
    return {"admission": HandshakeAdmission(FloodLimits(**{**slow, **limits}))}


def test_a_flood_from_one_address_leaves_the_new_peer_budget_to_others(tmp_path) -> None:
    # Every new connection from 127.0.0.66 once got a fresh per-source bucket.
    async def test(a: Attacked) -> None:
        engine = a.bob.manager._kx.engine  # type: ignore[attr-defined]
        await a.flood(40, local_ip=lambda i: "127.0.0.66")
        await until(lambda: sum(engine.admission.refused.values()) + engine.pending() == 40)
        assert engine.pending() == 5  # the address's burst
        assert engine.admission.refused == {"source rate": 35}
        await a.newcomer("alice")  # from 127.0.0.1: the new-peer budget is not spent

    run_attacked(tmp_path, test, engine_options=_gate(per_source_burst=5, unknown_burst=20))


def test_a_returning_peer_is_known_on_a_new_connection(tmp_path) -> None:
    async def test(a: Attacked) -> None:
        engine = a.bob.manager._kx.engine  # type: ignore[attr-defined]
        alice, _ = await a.newcomer("alice")
        await alice.node.close()  # Alice goes away ...
        # ... new peers spend the new-peer budget from 30 addresses ...
        await a.flood(30, local_ip=lambda i: f"127.0.0.{10 + i}")
        await until(lambda: sum(engine.admission.refused.values()) + engine.pending() == 30)
        assert engine.admission.refused == {"global rate": 10}
        # ... and Alice, back from another port, is still known.
        node = type(alice.node)(alice.manager, a.clock.now_us)
        alice.manager._kx.source_of = node.address_of  # type: ignore[attr-defined]
        alice.node = node
        await node.connect(a.bob.did, "127.0.0.1", a.port)
        sid = await node.establish(a.bob.did)
        await until(lambda: alice.manager.session(sid).state == "established")

    run_attacked(tmp_path, test, engine_options=_gate(per_source_burst=5, unknown_burst=21))


# ------------------------------------------------------------------ 6. closed peers
def test_sending_to_a_peer_that_closed_is_quiet_and_counted(tmp_path, caplog) -> None:
    async def test(a: Attacked) -> None:
        alice, sid = await a.newcomer("alice")
        node = a.bob.node
        link = node.worker._proven[alice.did]
        link.pipe.abort()  # the peer is gone; the reader has not noticed yet
        responder = a.bob.manager.session_for(sid)
        assert responder is not None
        outputs = await node.command(  # in one batch, before the reader notices
            lambda: [
                output
                for _ in range(20)
                for output in a.bob.manager.submit(responder.id, b"to nobody", a.clock.now_us())
            ]
        )
        sends = sum(isinstance(o, Send) for o in outputs)
        assert not [r for r in caplog.records if "socket.send() raised" in r.getMessage()]
        assert sends >= 20 and node.closed_sends == sends

    caplog.set_level(logging.WARNING)
    run_attacked(tmp_path, test)


# ------------------------------------------------------------------ 7. the transport named
def test_a_session_over_the_nodes_tcp_records_utcp(tmp_path) -> None:
    async def test(a: Attacked) -> None:
        alice, sid = await a.newcomer("alice")
        responder = a.bob.manager.session_for(sid)
        assert responder is not None
        assert alice.manager.session(sid).transport == responder.transport == "utcp"
        assert a.bob.ledger.repository.get(responder.id).transport == "utcp"

    run_attacked(tmp_path, test)


@pytest.mark.parametrize("value", [0, -1])
def test_node_limits_are_checked_on_construction(tmp_path, value) -> None:
    async def test(a: Attacked) -> None:
        node_type, manager = type(a.bob.node), a.bob.manager
        for name in ("idle_timeout_s", "frame_timeout_s"):
            with pytest.raises(ValueError, match=f"{name} must be > 0, got {value}"):
                node_type(manager, a.clock.now_us, **{name: value})
        for name, least in (("read_limit_bytes", 1), ("max_partial_bytes", MAX_FRAME)):
            with pytest.raises(ValueError, match=f"{name} must be >= {least}, got {value}"):
                node_type(manager, a.clock.now_us, **{name: value})

    run_attacked(tmp_path, test)
