"""Sessions over QUIC: a node serves and dials QUIC links (``serve_quic``, ``connect_quic``)
and carries sessions over them exactly as over TCP — the same worker, routing, sealing and
saves (transports/pipes.py is all that differs). Real PQxdh keys, signed SQLite ledgers,
aioquic on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

from l2_session.domain.session.config import DEFAULT_CONFIG, SessionConfig
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.quic import QuicEndpoint
from tcp_support import WAIT_S, Side, VirtualTime, established, make_side, until


def kinds(ledger: Any, session_id: UUID) -> list[str]:
    return [type(e).__name__ for e in ledger.events.get(session_id)]


async def _close(*sides: Side) -> None:
    for side in sides:
        await side.node.close()
        side.ledger.close()


def test_a_session_over_quic_carries_messages_both_ways_and_records_quic(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(
            tmp_path, "bob", directory, clock, durability="normal",
            node_options={"answer": lambda sid, payload: b"re:" + payload},
        )  # fmt: skip
        try:
            host, port = await bob.node.serve_quic()
            await alice.node.connect_quic(bob.did, host, port)
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            conversation = alice.session(sid).conversation
            await established(bob, conversation)
            assert alice.session(sid).transport == "quic"
            assert bob.session(conversation).transport == "quic"
            # Both ends' connections are QUIC links.
            assert {link.kind for link in alice.node.connections.open} == {"quic"}
            assert {link.kind for link in bob.node.connections.open} == {"quic"}
            for n in range(50):
                await alice.node.send(sid, b"q%d" % n)
            answers = [
                (await asyncio.wait_for(alice.node.receive(), WAIT_S)).payload for _ in range(50)
            ]
            assert answers == [b"re:q%d" % n for n in range(50)]
            # The ledgers say what happened: 50 delivered and 50 queued at Bob.
            replayed = bob.ledger.repository.get(bob.session(conversation).id)
            assert replayed.next_expected_seq == 51 and replayed.next_seq == 51
        finally:
            await _close(alice, bob)

    asyncio.run(run())


def test_a_node_serves_tcp_and_quic_at_once(tmp_path: Path) -> None:
    """Carol over TCP and Alice over QUIC, to one Bob, at the same time: each session on its
    own transport, messages delivered on both."""

    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        carol = make_side(tmp_path, "carol", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        try:
            host, port = await bob.node.serve_quic()
            server = await bob.node.serve()
            await alice.node.connect_quic(bob.did, host, port)
            await carol.node.connect(bob.did, "127.0.0.1", server.sockets[0].getsockname()[1])
            a_sid = await alice.node.establish(bob.did)
            c_sid = await carol.node.establish(bob.did)
            await established(alice, a_sid)
            await established(carol, c_sid)
            assert alice.session(a_sid).transport == "quic"
            assert carol.session(c_sid).transport == "utcp"
            await asyncio.gather(
                *(alice.node.send(a_sid, b"a%d" % n) for n in range(20)),
                *(carol.node.send(c_sid, b"c%d" % n) for n in range(20)),
            )
            got = [(await asyncio.wait_for(bob.node.receive(), WAIT_S)) for _ in range(40)]
            by_session: dict[UUID, list[bytes]] = {}
            for message in got:
                by_session.setdefault(message.session_id, []).append(message.payload)
            assert sorted(by_session.values()) == sorted(
                [[b"a%d" % n for n in range(20)], [b"c%d" % n for n in range(20)]]
            )
            assert {link.kind for link in bob.node.connections.open} == {"quic", "utcp"}
            server.close()
        finally:
            await _close(alice, carol, bob)

    asyncio.run(run())


def test_a_quic_hello_with_a_did_the_node_cannot_use_is_cut(tmp_path: Path) -> None:
    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        stranger = QuicEndpoint()
        try:
            host, port = await bob.node.serve_quic()
            link = await stranger.connect(host, port, hello=b"did:example:not-a-key")
            await asyncio.wait_for(link.wait_closed(), WAIT_S)
            assert "bad hello" in link.close_reason
            await until(lambda: any("bad hello" in why for why in bob.node.dropped_connections))
            assert not bob.node.connections.open
        finally:
            await stranger.close()
            await _close(bob)

    asyncio.run(run())


def test_a_session_resumes_over_quic_after_the_dialler_restarts(tmp_path: Path) -> None:
    """Alice's node stops with the session live; a new node over her ledger dials Bob over
    QUIC again, and the session resumes (decision 16) and carries messages, none twice."""

    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        try:
            host, port = await bob.node.serve_quic()
            await alice.node.connect_quic(bob.did, host, port)
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            await alice.node.send(sid, b"before")
            first = await asyncio.wait_for(bob.node.receive(), WAIT_S)
            assert first.payload == b"before"
            await alice.node.close()  # the session stays live in the ledger
            alice.ledger.close()
            again = make_side(tmp_path, "alice", directory, clock, DEFAULT_CONFIG,
                              durability="normal")  # fmt: skip
            assert again.session(alice.session(sid).conversation).state == "suspended"
            await again.node.connect_quic(bob.did, host, port)
            await established(again, alice.session(sid).conversation)
            await again.node.send(sid, b"after")
            second = await asyncio.wait_for(bob.node.receive(), WAIT_S)
            assert second.payload == b"after" and bob.node._received.empty()
            await _close(again)
        finally:
            await _close(bob)

    asyncio.run(run())


def test_a_session_over_quic_heartbeats_rotates_its_keys_and_closes(tmp_path: Path) -> None:
    """The session's life over QUIC, its timers moved on by hand: a heartbeat 30 s after the
    last message, answered; keys rotated 40 s after the handshake (ttl - rotation_window),
    messages before and after; a close that ends both ends."""
    config = SessionConfig(ttl=120.0, rotation_window=80.0)

    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, config, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, config, durability="normal")
        try:
            await alice.node.connect_quic(bob.did, *await bob.node.serve_quic())
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            conversation = alice.session(sid).conversation
            await established(bob, conversation)
            old_key = alice.session(sid).key_id
            await alice.node.send(sid, b"before")
            assert (await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload == b"before"

            async def tick(seconds: float) -> None:
                now = clock.skip(seconds)
                await alice.node.command(lambda: alice.manager.tick(now))

            await tick(31)  # a heartbeat is due
            await alice.node.until(lambda: "HeartbeatAnswered" in kinds(alice.ledger, sid),
                                   WAIT_S)  # fmt: skip
            await tick(10)  # 41 s after the handshake: the rotation
            await alice.node.until(
                lambda: alice.session(sid).key_id != old_key
                and alice.session(sid).state == "established", WAIT_S,
            )  # fmt: skip
            await bob.node.until(
                lambda: bob.session(conversation).key_id == alice.session(sid).key_id, WAIT_S
            )
            await alice.node.send(sid, b"after")
            assert (await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload == b"after"
            history = kinds(alice.ledger, sid)
            assert history.index("HeartbeatAnswered") < history.index("RotationStarted")
            assert history.count("Established") == 2  # the handshake, and the rotation
            await alice.node.command(lambda: alice.manager.close(sid, clock.now_us()))
            await bob.node.until(lambda: bob.session(conversation).closed, WAIT_S)
            await alice.node.until(lambda: alice.manager.session(sid).closed, WAIT_S)
            assert alice.manager.session(sid).transport == "quic"
        finally:
            await _close(alice, bob)

    asyncio.run(run())


def test_a_restarted_node_resumes_in_quic_0rtt_with_its_resume_in_the_first_flight(
    tmp_path: Path,
) -> None:
    """Alice's node keeps its QUIC tickets in a file (``quic_tickets``). Restarted from its
    files, it dials Bob again: TLS resumes in 0-RTT, and the L2 RESUME of the session the
    restart left waiting rides the first flight — Bob has it before the QUIC handshake is
    done — and the session resumes and carries messages, none twice."""

    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        tickets = tmp_path / "alice.quic-tickets"
        options = {"quic_tickets": tickets}
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal",
                          node_options=options)  # fmt: skip
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        try:
            host, port = await bob.node.serve_quic()
            await alice.node.connect_quic(bob.did, host, port)
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            conversation = alice.session(sid).conversation
            await alice.node.send(sid, b"before")
            assert (await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload == b"before"
            await until(tickets.exists)  # the server's ticket came after the handshake
            assert oct(tickets.stat().st_mode & 0o777) == "0o600"
            await alice.node.close()
            alice.ledger.close()

            again = make_side(tmp_path, "alice", directory, clock, durability="normal",
                              node_options=options)  # fmt: skip
            assert again.session(conversation).state == "suspended"
            assert bob.node.quic is not None
            before = set(bob.node.quic.links)
            await again.node.connect_quic(bob.did, host, port)
            (dialled,) = [link.pipe.link for link in again.node.connections.open]  # type: ignore[attr-defined]
            assert dialled.early_data_accepted  # 0-RTT, from the ticket kept in the file
            (accepted,) = set(bob.node.quic.links) - before
            assert accepted.frames_before_handshake >= 1  # the RESUME, in the first flight
            await established(again, conversation)
            await again.node.send(sid, b"after")
            second = await asyncio.wait_for(bob.node.receive(), WAIT_S)
            assert second.payload == b"after" and bob.node._received.empty()
            history = kinds(again.ledger, sid)
            assert history.count("Established") == 2 and "NodeRestarted" in history
            await _close(again)
        finally:
            await _close(bob)

    asyncio.run(run())
