"""SPEC-018 §2.3 with real sockets (decision 24): a node dials QUIC first and μTCP beside it
when QUIC does not connect in time, remembers per peer that QUIC failed, moves a live
session from a dead QUIC link to μTCP, and back to QUIC once QUIC works again — the same
session and keys, each move in both ledgers, every message once and in order. Real PQxdh keys, signed SQLite
ledgers, aioquic and TCP on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.fallback import FallbackPolicy
from l2_session.transports.link_check import LinkCheck
from tcp_support import WAIT_S, Side, VirtualTime, established, make_side, until
from udp_chaos import ChaosRelay


class BlackHole(asyncio.DatagramProtocol):
    """A UDP port where QUIC's packets go unanswered (a firewall that drops UDP)."""

    def __init__(self) -> None:
        self.datagrams = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.datagrams += 1


async def black_hole() -> tuple[BlackHole, asyncio.DatagramTransport, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, hole = await loop.create_datagram_endpoint(
        BlackHole, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    return hole, transport, transport.get_extra_info("sockname")[:2]


def kinds(side: Side, session_id: object) -> list[str]:
    return [type(e).__name__ for e in side.ledger.events.get(session_id)]


async def _close(*sides: Side) -> None:
    for side in sides:
        await side.node.close()
        side.ledger.close()


async def over_quic(alice: Side, bob: Side) -> tuple[UUID, asyncio.Server]:
    """Bob listening on QUIC and μTCP, Alice dialling him (QUIC connects) and establishing a
    session, established at both ends: its id, and Bob's μTCP server."""
    quic = await bob.node.serve_quic()
    server = await bob.node.serve()
    tcp = server.sockets[0].getsockname()[:2]
    assert await alice.node.dial(bob.did, quic=quic, tcp=tcp) == "quic"
    sid = await alice.node.establish(bob.did)
    await established(alice, sid)
    await established(bob, sid)  # Alice initiated: the conversation is her session's id
    return sid, server


def test_dial_takes_quic_when_it_connects_and_never_starts_tcp(tmp_path: Path) -> None:
    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        try:
            sid, server = await over_quic(alice, bob)
            assert alice.session(sid).transport == "quic"
            await until(lambda: {link.kind for link in bob.node.connections.open} == {"quic"})
            assert alice.node.fallback.failures(bob.did) == 0
            server.close()
        finally:
            await _close(alice, bob)

    asyncio.run(run())


def test_dial_falls_back_to_utcp_and_then_skips_quic_while_it_is_broken(tmp_path: Path) -> None:
    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        hole, hole_transport, quic = await black_hole()
        try:
            server = await bob.node.serve()
            tcp = server.sockets[0].getsockname()[:2]
            assert await alice.node.dial(bob.did, quic=quic, tcp=tcp) == "utcp"
            assert hole.datagrams > 0  # QUIC was tried first
            assert alice.node.fallback.failures(bob.did) == 1
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            assert alice.session(sid).transport == "utcp"
            # QUIC to Bob is broken for its back-off: the next dial does not try it.
            tried = hole.datagrams
            assert await alice.node.dial(bob.did, quic=quic, tcp=tcp) == "utcp"
            assert hole.datagrams == tried
            # The losing QUIC attempt left nothing open behind it.
            assert alice.node.quic is not None and not alice.node.quic.links
            server.close()
        finally:
            hole_transport.close()
            await _close(alice, bob)

    asyncio.run(run())


def test_dial_says_why_when_neither_transport_connects(tmp_path: Path) -> None:
    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        _hole, hole_transport, quic = await black_hole()
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        tcp = closed.getsockname()[:2]
        closed.close()  # nothing listens there: refused
        try:
            with pytest.raises(ConnectionError) as raised:
                await alice.node.dial("did:key:z6MkNobody", quic=quic, tcp=tcp)
            assert "quic:" in str(raised.value) and "utcp:" in str(raised.value)
            with pytest.raises(ValueError, match="QUIC address, a TCP address"):
                await alice.node.dial("did:key:z6MkNobody")
        finally:
            hole_transport.close()
            await _close(alice)

    asyncio.run(run())


def test_a_session_moves_from_a_dead_quic_link_to_utcp_losing_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        try:
            sid, server = await over_quic(alice, bob)
            conversation = alice.session(sid).conversation
            keys = alice.session(sid).key_id
            sent = [b"m%d" % n for n in range(40)]
            await asyncio.gather(*(alice.node.send(sid, p) for p in sent[:20]))
            # The QUIC path dies (Bob's end cuts it, as a middlebox that stops passing UDP
            # would end it by the idle timeout).
            (link,) = [link for link in bob.node.connections.open if link.kind == "quic"]
            bob.node.connections.cut(link, "the QUIC path died")
            await asyncio.gather(*(alice.node.send(sid, p) for p in sent[20:]))
            got = [(await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload for _ in sent]
            assert got == sent  # once each, in order
            assert bob.node._received.empty()
            await alice.node.until(lambda: not alice.session(sid).fallback_pending, WAIT_S)
            s = alice.session(sid)
            assert s.transport == "utcp" and s.key_id == keys and s.state == "established"
            assert {link.kind for link in alice.node.connections.open} == {"utcp"}
            for side, session_id in ((alice, sid), (bob, bob.session(conversation).id)):
                history = kinds(side, session_id)
                assert "FallbackAttempted" in history and "TransportSwitched" in history
                assert history.index("FallbackAttempted") < history.index("TransportSwitched")
            assert alice.node.fallback.failures(bob.did) == 1
            server.close()
        finally:
            await _close(alice, bob)

    asyncio.run(run())


def switches(side: Side, session_id: object) -> list[str | None]:
    """The transports its ``TransportSwitched`` events name, in order."""
    events = side.ledger.events.get(session_id)
    return [e.transport for e in events if type(e).__name__ == "TransportSwitched"]


async def moved_to_quic(side: Side, conversation: UUID) -> None:
    await side.node.until(lambda: side.session(conversation).transport == "quic", WAIT_S)


@pytest.mark.parametrize("loss", [0.0, 0.15])
def test_a_session_on_utcp_moves_back_to_quic_once_udp_passes_again(
    tmp_path: Path, loss: float
) -> None:
    """UDP blocked when Alice dials: the session is made over μTCP. Once UDP passes (cleanly,
    or losing 15 % of the datagrams each way) and QUIC's back-off is over, Alice dials QUIC
    again and checks the link; both ends record the move (``TransportSwitched`` to QUIC), the
    μTCP connection is retired, and the messages sent before, during and after the move
    arrive once each, in order — the same keys throughout."""

    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        relay = await ChaosRelay.start(await bob.node.serve_quic(), loss=loss, seed=1)
        relay.partitioned = True  # UDP does not pass
        alice.node.fallback = FallbackPolicy(backoff_base_s=0.5)
        try:
            server = await bob.node.serve()
            tcp = server.sockets[0].getsockname()[:2]
            assert await alice.node.dial(bob.did, quic=relay.address, tcp=tcp) == "utcp"
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            await established(bob, sid)
            keys = alice.session(sid).key_id
            assert alice.session(sid).transport == bob.session(sid).transport == "utcp"
            sent = [b"m%d" % n for n in range(60)]
            await asyncio.gather(*(alice.node.send(sid, p) for p in sent[:20]))
            relay.partitioned = False  # UDP passes again
            during = asyncio.gather(*(alice.node.send(sid, p) for p in sent[20:40]))
            await moved_to_quic(alice, sid)
            await moved_to_quic(bob, sid)
            await during
            forwarded = relay.forwarded
            await asyncio.gather(*(alice.node.send(sid, p) for p in sent[40:]))
            got = [(await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload for _ in sent]
            assert got == sent  # once each, in order
            assert bob.node._received.empty()
            assert relay.forwarded > forwarded  # the last messages went through QUIC
            for side in (alice, bob):
                s = side.session(sid)
                assert (s.key_id, s.state, s.fallback_pending) == (keys, "established", False)
                assert switches(side, s.id) == ["quic"]
                assert "HandshakeInitiated" not in kinds(side, s.id)[2:]  # no new handshake
            # Alice retired the μTCP connection; Bob sees it close.
            await until(lambda: {link.kind for link in alice.node.connections.open} == {"quic"})
            await until(lambda: {link.kind for link in bob.node.connections.open} == {"quic"})
            assert alice.node.connections.dropped_count == 0
            assert alice.node.fallback.failures(bob.did) == 0  # QUIC connected: cleared
            assert alice.node.worker.link_checks_refused == bob.node.worker.link_checks_refused == 0
            server.close()
        finally:
            relay.close()
            await _close(alice, bob)

    asyncio.run(run())


def test_a_session_falls_back_from_a_dead_quic_link_and_comes_back_to_quic(
    tmp_path: Path,
) -> None:
    """The whole cycle: over QUIC, the link dies, the session falls back to μTCP (decision
    24), and once QUIC's back-off is over it moves back — FallbackAttempted, TransportSwitched
    to μTCP and TransportSwitched to QUIC at both ends, every message once. A replayed link
    check and an answer nobody asked for change nothing."""

    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        alice.node.fallback = FallbackPolicy(backoff_base_s=0.5)
        checks: list[bytes] = []
        seal = alice.node.sealed.seal

        def recording(frame: Any, now_us: int) -> bytes:
            data = seal(frame, now_us)
            if isinstance(frame, LinkCheck):
                checks.append(data)
            return data

        alice.node.sealed.seal = recording  # type: ignore[method-assign]
        try:
            sid, server = await over_quic(alice, bob)
            keys = alice.session(sid).key_id
            sent = [b"m%d" % n for n in range(60)]
            await asyncio.gather(*(alice.node.send(sid, p) for p in sent[:20]))
            (link,) = [link for link in bob.node.connections.open if link.kind == "quic"]
            bob.node.connections.cut(link, "the QUIC path died")
            await alice.node.until(lambda: alice.session(sid).transport == "utcp", WAIT_S)
            await asyncio.gather(*(alice.node.send(sid, p) for p in sent[20:40]))
            await moved_to_quic(alice, sid)
            await moved_to_quic(bob, sid)
            await asyncio.gather(*(alice.node.send(sid, p) for p in sent[40:]))
            got = [(await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload for _ in sent]
            assert got == sent
            for side in (alice, bob):
                s = side.session(sid)
                assert (s.key_id, s.state, s.transport) == (keys, "established", "quic")
                assert switches(side, s.id) == ["utcp", "quic"]
                history = kinds(side, s.id)
                assert history.index("FallbackAttempted") < history.index("TransportSwitched")
            await until(lambda: {link.kind for link in alice.node.connections.open} == {"quic"})
            # The check Alice sent, replayed on the link: the channel refuses it.
            (check,) = checks
            (quic_link,) = alice.node.connections.open
            events = len(list(bob.ledger.events.get(bob.session(sid).id)))
            replayed = bob.node.sealed.refused["replayed"]
            alice.node.connections.write(quic_link, [check])
            await until(lambda: bob.node.sealed.refused["replayed"] == replayed + 1)
            # An answer Bob never asked for: refused, nothing recorded.
            unasked = LinkCheck(sid, True)
            sealed = await alice.node.query(lambda: seal(unasked, clock.now_us()))  # on its worker
            alice.node.connections.write(quic_link, [sealed])
            await until(lambda: bob.node.worker.link_checks_refused == 1)
            assert len(list(bob.ledger.events.get(bob.session(sid).id))) == events
            assert bob.session(sid).transport == "quic"
            server.close()
        finally:
            await _close(alice, bob)

    asyncio.run(run())


def test_an_unanswered_link_check_closes_its_link_and_the_next_try_moves_the_session(
    tmp_path: Path,
) -> None:
    """A peer that does not answer the check (here: its worker drops checks, as a node of an
    older version would): the QUIC link is closed after ``check_answer_s`` — not kept open,
    and not a reason to dial the peer again — QUIC counts as failed, the session stays on
    μTCP. Once the peer answers, the next try after the back-off moves it."""

    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        relay = await ChaosRelay.start(await bob.node.serve_quic(), loss=0.0, seed=2)
        relay.partitioned = True
        alice.node.fallback = FallbackPolicy(backoff_base_s=0.3)
        alice.node.check_answer_s = 0.3
        answer = bob.node.worker._link_checked
        bob.node.worker._link_checked = lambda *args: None  # type: ignore[method-assign]
        try:
            server = await bob.node.serve()
            tcp = server.sockets[0].getsockname()[:2]
            assert await alice.node.dial(bob.did, quic=relay.address, tcp=tcp) == "utcp"
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            relay.partitioned = False
            await until(lambda: alice.node.worker.outputs["LinkCheck"] >= 1)  # QUIC connected
            # Unanswered: the link is closed and QUIC failed again (its connect had cleared
            # the count); no second μTCP connection was dialled for it.
            await until(
                lambda: (
                    [k.kind for k in alice.node.connections.open] == ["utcp"]
                    and alice.node.fallback.failures(bob.did) == 1
                )
            )
            assert alice.session(sid).transport == "utcp"
            await alice.node.send(sid, b"still over utcp")
            assert (await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload == (
                b"still over utcp"
            )
            bob.node.worker._link_checked = answer  # type: ignore[method-assign]
            await moved_to_quic(alice, sid)
            await moved_to_quic(bob, sid)
            await alice.node.send(sid, b"over quic")
            assert (await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload == b"over quic"
            await until(lambda: [k.kind for k in alice.node.connections.open] == ["quic"])
            server.close()
        finally:
            relay.close()
            await _close(alice, bob)

    asyncio.run(run())


def test_a_connection_that_only_claims_the_peer_moves_no_session(tmp_path: Path) -> None:
    """Alice's session with Bob is over QUIC. Someone opens a μTCP connection to Bob whose
    hello names Alice's DID: Bob records no fallback — he learns that Alice fell back from
    Alice's own sealed frames on a μTCP connection, which this one never carries — and the
    session goes on over QUIC."""

    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
        try:
            sid, server = await over_quic(alice, bob)
            events = len(list(bob.ledger.events.get(bob.session(sid).id)))
            host, port = server.sockets[0].getsockname()[:2]
            _, impostor = await asyncio.open_connection(host, port)
            claim = alice.did.encode()
            impostor.write(struct.pack(">H", len(claim)) + claim)
            await until(
                lambda: any(
                    k.kind == "utcp" and k.did == alice.did for k in bob.node.connections.open
                )
            )
            await alice.node.send(sid, b"still over quic")
            assert (await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload == (
                b"still over quic"
            )
            s = bob.session(sid)
            assert (s.transport, s.fallback_pending) == ("quic", False)
            history = kinds(bob, s.id)[events:]
            assert "FallbackAttempted" not in history and "TransportSwitched" not in history
            impostor.close()
            server.close()
        finally:
            await _close(alice, bob)

    asyncio.run(run())
