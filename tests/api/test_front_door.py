"""The front door (l2_session.Node): two real nodes on loopback — real keys, QUIC and μTCP
sockets, signed SQLite ledgers on disk — driven through the public API only."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid

import pytest
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.projections.history import LedgerHistory

from l2_session import (
    CLOSED,
    Addresses,
    KeyStore,
    KeyStoreError,
    Node,
    NodeClosed,
    NothingToResume,
    SessionClosed,
    SessionConfig,
    SessionError,
    SessionLedger,
    State,
    Timeout,
    UnknownSession,
    verify,
)

WAIT = 10.0  # a bound for waits that should end at once; never a measurement


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def files(tmp_path, name):
    return {"identity": tmp_path / f"{name}.keys", "ledger": str(tmp_path / f"{name}.sqlite3")}


def recorded(path):
    """Each session of a ledger as replay rebuilds it: id -> its summary."""
    ledger = SessionLedger(path, create=False)
    try:
        assert verify(ledger).ok
        states = [s.summary() for s in LedgerHistory(ledger).states_at()]
    finally:
        ledger.close()
    return {s["id"]: s for s in states if s["kind"] == "session"}


def test_two_nodes_exchange_messages_both_ways_in_order(tmp_path):
    async def main():
        async with (
            Node.open(**files(tmp_path, "bob"), listen="127.0.0.1:0") as bob,
            Node.open(**files(tmp_path, "alice")) as alice,
        ):
            session = await alice.establish(bob.did, addresses=bob.addresses)
            assert session.state == State.ESTABLISHED and session.role == "initiator"
            assert session.transport == "quic" and session.peer_did == bob.did
            for i in range(20):
                await session.send(b"ping %d" % i)
            incoming = await bob.accept(timeout=WAIT)
            assert (incoming.id, incoming.peer_did, incoming.role) == (
                session.id,
                alice.did,
                "responder",
            ) or incoming.peer_did == alice.did
            got = [await incoming.receive(timeout=WAIT) for _ in range(20)]
            assert [m.data for m in got] == [b"ping %d" % i for i in range(20)]
            assert [m.seq for m in got] == list(range(1, 21))
            await incoming.send(b"pong")
            assert (await session.receive(timeout=WAIT)).data == b"pong"
            return session.id, incoming.id

    alice_id, bob_id = run(main())
    alice, bob = recorded(tmp_path / "alice.sqlite3"), recorded(tmp_path / "bob.sqlite3")
    assert alice[str(alice_id)]["queue"]["next_seq"] == 21
    assert alice[str(alice_id)]["queue"]["next_expected_seq"] == 2
    assert bob[str(bob_id)]["queue"]["next_expected_seq"] == 21


def test_keys_are_real_and_the_wiring_is_done(tmp_path):
    async def main():
        async with Node.open(**files(tmp_path, "a")) as node:
            assert isinstance(node.manager._kx, PqxdhKeyExchange)
            # What a user must not have to remember: limits keyed by source address, and
            # the prekeys kept in the key store as one-time prekeys are spent.
            assert node.manager._kx.source_of == node.transport.address_of
            assert node.manager._kx.on_prekeys_changed == node.keys.set_prekeys
            return node.bundle

    bundle = run(main())
    assert bundle == run(_bundle_after_restart(tmp_path))  # the same prekeys across restarts


async def _bundle_after_restart(tmp_path):
    async with Node.open(**files(tmp_path, "a")) as node:
        return node.bundle


def test_state_changes_are_observed_as_saved(tmp_path):
    async def main():
        async with (
            Node.open(**files(tmp_path, "bob"), listen="127.0.0.1:0") as bob,
            Node.open(**files(tmp_path, "alice")) as alice,
        ):
            seen_a, seen_b = [], []

            async def watch(node, seen):
                async for change in node.state_changes():
                    seen.append(change)
                    if change.state == CLOSED:
                        return

            watchers = [
                asyncio.ensure_future(watch(alice, seen_a)),
                asyncio.ensure_future(watch(bob, seen_b)),
            ]
            await asyncio.sleep(0)  # both iterators are listening
            session = await alice.establish(bob.did, addresses=bob.addresses)
            incoming = await bob.accept(timeout=WAIT)
            await session.close()
            assert session.closed and session.state == CLOSED
            await incoming.wait(CLOSED, timeout=WAIT)
            with pytest.raises(SessionClosed):
                await incoming.receive()
            await asyncio.wait_for(asyncio.gather(*watchers), WAIT)
            assert alice.sessions() == [] and bob.sessions() == []
            return session.id, seen_a, seen_b

    sid, seen_a, seen_b = run(main())
    assert [(c.previous, c.state) for c in seen_a] == [
        (None, "idle"), ("idle", "handshake_initiated"),
        ("handshake_initiated", "established"), ("established", CLOSED),
    ]  # fmt: skip
    assert {c.session_id for c in seen_a} == {sid}
    assert seen_a[-1].reason == "closed"
    assert [c.state for c in seen_b][-2:] == ["established", CLOSED]
    assert seen_b[-1].reason == "closed by peer"
    # Each change is what the ledger recorded, at the times it recorded.
    ledger = SessionLedger(tmp_path / "alice.sqlite3", create=False)
    try:
        steps = list(LedgerHistory(ledger).timeline(sid))
    finally:
        ledger.close()
    moves = [(t.state_before, t.state, t.at_us) for t in steps if t.state != t.state_before]
    assert moves == [(c.previous, c.state, c.at_us) for c in seen_a]


def test_a_restarted_node_resumes_its_session_and_nothing_is_lost_or_repeated(tmp_path):
    async def main():
        async with Node.open(**files(tmp_path, "bob"), listen="127.0.0.1:0") as bob:
            async with Node.open(**files(tmp_path, "alice")) as alice:
                first = await alice.establish(bob.did, addresses=bob.addresses)
                await first.send(b"before the restart")
            # alice's process is gone, its session left live in its ledger.
            incoming = await bob.accept(timeout=WAIT)
            assert (await incoming.receive(timeout=WAIT)).data == b"before the restart"
            async with Node.open(**files(tmp_path, "alice")) as alice:
                (recovered,) = alice.sessions()
                assert recovered.id == first.id and recovered.state == State.SUSPENDED
                with pytest.raises(NothingToResume):
                    await alice.resume("did:key:z6MkNobodyAtAll")
                again = await alice.resume(bob.did, addresses=bob.addresses)
                assert again.id == first.id and again.state == State.ESTABLISHED
                await again.send(b"after the restart")
                message = await incoming.receive(timeout=WAIT)
                assert (message.data, message.seq) == (b"after the restart", 2)
                with pytest.raises(TimeoutError):  # nothing was delivered twice
                    await incoming.receive(timeout=0.3)
                return first.id

    sid = run(main())
    assert recorded(tmp_path / "alice.sqlite3")[str(sid)]["queue"]["next_seq"] == 3


def test_cancelled_calls_leave_nothing_half_saved(tmp_path):
    """A send cancelled while the window is full is not queued; an establish cancelled on
    its way leaves a ledger that verifies; the node goes on."""

    async def main():
        config = SessionConfig(send_window=2)
        async with (
            Node.open(**files(tmp_path, "bob"), listen="127.0.0.1:0") as bob,
            Node.open(**files(tmp_path, "alice"), config=config) as alice,
        ):
            session = await alice.establish(bob.did, addresses=bob.addresses)
            bob.transport.connections.hold(True)  # bob reads nothing: no acknowledgement
            await session.send(b"1")
            await session.send(b"2")
            blocked = asyncio.ensure_future(session.send(b"never queued"))
            await asyncio.sleep(0.2)
            assert not blocked.done()  # the window is full: it waits (backpressure)
            blocked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blocked
            bob.transport.connections.hold(False)
            await session.send(b"3")
            incoming = await bob.accept(timeout=WAIT)
            got = [(await incoming.receive(timeout=WAIT)).data for _ in range(3)]
            assert got == [b"1", b"2", b"3"]
            establishing = asyncio.ensure_future(alice.establish(bob.did))
            await asyncio.sleep(0.001)
            establishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await establishing
            return session.id

    sid = run(main())
    alice = recorded(tmp_path / "alice.sqlite3")  # verifies
    assert alice[str(sid)]["queue"]["next_seq"] == 4


def test_wrong_calls_get_clear_errors(tmp_path):
    async def main():
        with pytest.raises(ValueError, match="'nowhere': give HOST:PORT"):
            await Node.open(**files(tmp_path, "a"), listen="nowhere")
        with pytest.raises(TypeError, match="identity must be a key store path"):
            await Node.open(identity=42, ledger=str(tmp_path / "a.sqlite3"))
        with pytest.raises(ValueError, match="durability 'sometimes'"):
            await Node.open(**files(tmp_path, "a"), durability="sometimes")
        with pytest.raises(KeyStoreError, match="nowhere does not exist"):
            await Node.open(identity=tmp_path / "nowhere" / "a.keys", ledger=str(tmp_path / "x"))
        with pytest.raises(OSError, match=r"cannot listen for QUIC \(UDP\) on 256.0.0.1:0"):
            await Node.open(**files(tmp_path, "a"), listen="256.0.0.1:0")
        async with Node.open(**files(tmp_path, "a")) as node:
            unhandled = []
            asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unhandled.append(ctx))
            with pytest.raises(ValueError, match="is not a DID"):
                await node.establish("bob")
            with pytest.raises(ValueError, match="is this node"):
                await node.establish(node.did, addresses="127.0.0.1:1")
            with pytest.raises(
                TimeoutError, match="no peer established a session with this node within 0.1 s"
            ):
                await node.accept(timeout=0.1)
            with pytest.raises(ConnectionError, match="no address for it"):
                await node.establish("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK")
            free = Addresses(tcp=("127.0.0.1", 9))  # discard: nothing listens
            with pytest.raises(ConnectionError):
                await node.establish(
                    "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", addresses=free
                )
            nobody = "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH"
            with pytest.raises(
                TimeoutError, match=f"no session established with {nobody} within 1 s"
            ):
                await node.establish(nobody, addresses="127.0.0.1:9", timeout=1)  # QUIC waits
            # The abandoned dial's attempts ended with it: no QUIC handshake left waiting
            # its 5 s, to fail later with an error nobody reads.
            dialling = [t for t in asyncio.all_tasks() if "QuicEndpoint.connect" in repr(t)]
            assert dialling == [] and unhandled == []
            with pytest.raises(TypeError, match="send takes bytes"):
                session = await _any_session(tmp_path, node)
                await session.send("text")
        with pytest.raises(NodeClosed):
            await node.accept()

    run(main())


async def _any_session(tmp_path, node):
    async with Node.open(**files(tmp_path, "peer"), listen="127.0.0.1:0") as peer:
        return await node.establish(peer.did, addresses=peer.addresses)


def test_a_key_store_object_and_a_ledger_that_does_not_match_it(tmp_path):
    store = KeyStore.create(tmp_path / "k.keys")
    other = KeyStore.create(tmp_path / "o.keys")
    ledger = SessionLedger(tmp_path / "l.sqlite3", identity=other.identity)
    try:
        with pytest.raises(ValueError, match="key store's identity"):
            Node(store, ledger)
    finally:
        ledger.close()

    async def main():
        async with Node.open(identity=store, ledger=str(tmp_path / "k.sqlite3")) as node:
            assert node.did == store.identity.did

    run(main())


@pytest.mark.postgres
def test_a_node_on_postgresql(tmp_path, pg_url):
    async def main():
        async with (
            Node.open(identity=tmp_path / "b.keys", ledger=pg_url, listen="127.0.0.1:0") as bob,
            Node.open(**files(tmp_path, "alice")) as alice,
        ):
            session = await alice.establish(bob.did, addresses=bob.addresses)
            await session.send(b"into postgres")
            incoming = await bob.accept(timeout=WAIT)
            assert (await incoming.receive(timeout=WAIT)).data == b"into postgres"

    run(main())


def test_the_manager_beneath_runs_on_fake_keys_only_when_told(tmp_path):
    """SessionManager has no default key exchange: code copied without one fails at once,
    naming the choice, instead of quietly running on the deterministic mock."""
    from l2_session.domain.manager.manager import SessionManager

    ledger = SessionLedger(
        tmp_path / "m.sqlite3", identity=KeyStore.create(tmp_path / "m.keys").identity
    )
    try:
        with pytest.raises(TypeError, match="needs key_exchange: a PqxdhKeyExchange"):
            SessionManager(ledger.identity.did, ledger)
        with pytest.raises(ValueError, match="key_exchange 'real'"):
            SessionManager(ledger.identity.did, ledger, key_exchange="real")
        manager = SessionManager(ledger.identity.did, ledger, key_exchange="mock")
        assert type(manager._kx).__name__ == "MockKeyExchange"
    finally:
        ledger.close()


def test_a_restarted_node_resumes_over_utcp_when_udp_is_blocked(tmp_path):
    """Found by `l2-session demo`: a restarted node's RESUME rides QUIC's first flight; with
    UDP blocked, QUIC is given its 250 ms head start, and the resumption's 100 ms (decision 4)
    ran out before μTCP connected — the session fell to a full handshake, or to nothing when
    the peer's bundle was unknown. Now the connection that wins carries a resumption."""

    async def main():
        loop = asyncio.get_running_loop()
        hole, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        blocked = hole.get_extra_info("sockname")[:2]  # UDP answered by nobody
        try:
            async with Node.open(**files(tmp_path, "bob"), listen="127.0.0.1:0") as bob:
                where = {"quic": blocked, "tcp": bob.addresses.tcp}
                async with Node.open(**files(tmp_path, "alice")) as alice:
                    first = await alice.establish(bob.did, addresses=where)
                    assert first.transport == "utcp"
                async with Node.open(**files(tmp_path, "alice")) as alice:
                    again = await alice.resume(bob.did, addresses=where)
                    assert again.id == first.id
                    await again.send(b"after a restart, over TCP")
                    incoming = await bob.accept(timeout=WAIT)
                    assert (
                        await incoming.receive(timeout=WAIT)
                    ).data == b"after a restart, over TCP"
                    return first.id
        finally:
            hole.close()

    sid = run(main())
    ledger = SessionLedger(tmp_path / "alice.sqlite3", create=False)
    try:
        steps = list(LedgerHistory(ledger).timeline(sid))
    finally:
        ledger.close()
    after = [
        t
        for t in steps
        if t.position > next(t.position for t in steps if t.event == "NodeRestarted")
    ]
    # The RESUME that rode QUIC's first flight is lost with it (its 100 ms run out while
    # QUIC has its head start); the μTCP connection carries a new one: no full handshake.
    moves = [(t.trigger, t.state) for t in after if t.state != t.state_before]
    assert moves[-2:] == [
        ("initiate_resumption()", "handshake_initiated"),
        ("receive_valid_response()", "established"),
    ]
    assert {t for t, _ in moves} <= {
        "initiate_resumption()", "timeout", "receive_valid_response()"
    }  # fmt: skip


def test_a_closed_sessions_unread_messages_stay_readable_and_hold_nothing_back(tmp_path):
    async def main():
        async with (
            Node.open(**files(tmp_path, "bob"), listen="127.0.0.1:0") as bob,
            Node.open(**files(tmp_path, "alice")) as alice,
        ):
            session = await alice.establish(bob.did, addresses=bob.addresses)
            for i in range(20):
                await session.send(b"unread %d" % i)
            incoming = await bob.accept(timeout=WAIT)
            await session.close()
            await incoming.wait(CLOSED, timeout=WAIT)
            # Closed, nothing read: the node no longer counts them toward its bound on
            # unread messages (they hold no connection back) ...
            assert bob._unread == 0
            # ... and the handle gives every one, in order, then says it is closed: those
            # delivered with the close too (the close is told after them).
            assert [m.data async for m in incoming] == [b"unread %d" % i for i in range(20)]

    run(main())


def test_state_changes_listen_from_the_call_and_end_with_the_node(tmp_path):
    async def main():
        async with Node.open(**files(tmp_path, "bob"), listen="127.0.0.1:0") as bob:
            alice = await Node.open(**files(tmp_path, "alice"))
            changes = alice.state_changes()  # made before anything happens, read after
            dropped = alice.state_changes()
            session = await alice.establish(bob.did, addresses=bob.addresses)
            del dropped
            gc.collect()
            assert len(alice._watchers) == 1  # a dropped iterator stops listening
            await alice.close()
            seen = [(c.session_id, c.state) async for c in changes]  # ends: the node closed
            return session.id, seen

    sid, seen = run(main())
    assert seen == [(sid, "idle"), (sid, "handshake_initiated"), (sid, "established")]


def test_a_session_that_fails_raises_the_session_error_of_its_reason(tmp_path):
    """A peer that takes the connection and never answers the handshake: the session fails
    with reason ``timeout``, and ``establish`` raises ``Timeout`` (a ``SessionError``) naming
    the session, not a bare TimeoutError of its own wait."""

    async def main():
        quick = SessionConfig(handshake_timeout=0.5)
        async with (
            Node.open(**files(tmp_path, "bob"), listen="127.0.0.1:0") as bob,
            Node.open(**files(tmp_path, "alice"), config=quick) as alice,
        ):
            bob.transport.connections.hold(True)  # bob reads nothing: no answer comes
            with pytest.raises(Timeout, match="is failed: timeout") as raised:
                await alice.establish(bob.did, addresses=bob.addresses, bundle=bob.bundle)
            assert isinstance(raised.value, SessionError)
            (failed,) = alice.sessions()
            assert (failed.state, failed.failure_reason) == ("failed", "timeout")

    run(main())


BOB_TAKES_TWO = """
import asyncio, json, sys
from l2_session import Node

async def main():
    async with Node.open(identity=sys.argv[1], ledger=sys.argv[2], listen="127.0.0.1:0") as bob:
        host, port = bob.addresses.quic  # QUIC and TCP on the same port
        print(json.dumps({"did": bob.did, "addresses": f"{host}:{port}"}), flush=True)
        session = await bob.accept(timeout=30)
        for _ in range(2):
            message = await session.receive(timeout=30)
            print(json.dumps({"took": message.seq}), flush=True)
        await asyncio.sleep(3600)  # the rest are saved and never taken: SIGKILL comes first

asyncio.run(main())
"""


def test_messages_saved_but_not_taken_before_a_sigkill_are_read_back_after_it(tmp_path):
    """Decision 21's limit, and its way back: Bob's process saves five messages and its
    application takes two before SIGKILL. Restarted, the node does not hand the other three
    again (``receive``), and ``Session.delivered(after=2)`` reads them back from the ledger —
    each once, in order, with its seq."""
    import json
    import signal
    import subprocess
    import sys

    bob_files = files(tmp_path, "bob")
    process = subprocess.Popen(
        [sys.executable, "-c", BOB_TAKES_TWO, str(bob_files["identity"]), bob_files["ledger"]],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    sent = [b"m%d" % n for n in range(1, 6)]

    async def main():
        assert process.stdout is not None
        said = json.loads(await asyncio.to_thread(process.stdout.readline))
        async with Node.open(**files(tmp_path, "alice")) as alice:
            session = await alice.establish(said["did"], addresses=said["addresses"])
            for data in sent:
                await session.send(data)
            took = [json.loads(await asyncio.to_thread(process.stdout.readline)) for _ in "12"]
            assert took == [{"took": 1}, {"took": 2}]
            # Every message is in Bob's ledger once Alice's are all acknowledged.
            manager = alice.transport.manager
            await alice.transport.until(lambda: not manager.session(session.id).outbox, WAIT)
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait, WAIT)
        async with Node.open(**bob_files) as bob:
            (recovered,) = bob.sessions()
            with pytest.raises(TimeoutError):  # not handed again
                await recovered.receive(timeout=0.3)
            back = await recovered.delivered(after=2)
            assert [(m.seq, m.data) for m in back] == [(3, b"m3"), (4, b"m4"), (5, b"m5")]
            assert {m.session_id for m in back} == {recovered.id}
            assert [m.seq for m in await recovered.delivered(limit=2)] == [1, 2]
            assert await recovered.delivered(after=5) == []
            for wrong in ({"after": -1}, {"after": "2"}, {"limit": 0}):
                with pytest.raises(ValueError):
                    await recovered.delivered(**wrong)
            # By id, from the node: the same; a session the ledger never held is refused.
            assert await bob.delivered(recovered.id, after=4) == back[-1:]
            with pytest.raises(UnknownSession):
                await bob.delivered(uuid.uuid4())

    try:
        run(main())
    finally:
        process.kill()
        process.wait()


def test_a_sessions_transport_follows_its_moves_to_utcp_and_back(tmp_path):
    """``Session.transport`` says what carries the session as each move is saved, not only
    at a change of state: made over μTCP while UDP is blocked, then back over QUIC once UDP
    passes (decision 24) — both ends, the state ``established`` throughout."""
    from l2_session.transports.fallback import FallbackPolicy
    from udp_chaos import ChaosRelay

    async def main():
        async with Node.open(**files(tmp_path, "bob"), listen="127.0.0.1:0") as bob:
            relay = await ChaosRelay.start(bob.addresses.quic, loss=0.0, seed=3)
            relay.partitioned = True  # UDP does not pass
            try:
                where = {"quic": relay.address, "tcp": bob.addresses.tcp}
                async with Node.open(**files(tmp_path, "alice")) as alice:
                    alice.transport.fallback = FallbackPolicy(backoff_base_s=0.5)
                    session = await alice.establish(bob.did, addresses=where)
                    incoming = await bob.accept(timeout=WAIT)
                    assert session.transport == incoming.transport == "utcp"
                    relay.partitioned = False
                    async with asyncio.timeout(WAIT):
                        while (session.transport, incoming.transport) != ("quic", "quic"):
                            await asyncio.sleep(0.01)
                    assert session.state == incoming.state == State.ESTABLISHED
                    await session.send(b"over QUIC again")
                    assert (await incoming.receive(timeout=WAIT)).data == b"over QUIC again"
            finally:
                relay.close()

    run(main())
