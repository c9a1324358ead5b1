"""A TcpNode made with ``answer`` (decision 23) answers requests on its worker, in the save
that records each delivery: the answer and the delivery share one transaction of the ledger,
the answer leaves with the batch, and the application's ``receive`` gets only what the answer
left to it. Real keys, signed SQLite ledgers, loopback TCP."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

from l2_session.domain.session.commands import Deliver
from l2_session.infrastructure.ledger.schema import EVENTS_TABLE
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports import tcp
from tcp_support import WAIT_S, Relay, VirtualTime, established, make_side, until


def transactions(path: Path, session_id: UUID) -> list[list[str]]:
    """The kinds of ``session_id``'s events in the ledger, grouped by the commit that wrote
    them (a commit stamps every row it writes with one timestamp)."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            f"SELECT topic, timestamp FROM {EVENTS_TABLE} WHERE session_id = ? ORDER BY position",
            (session_id.hex,),
        ).fetchall()
    groups: list[list[str]] = []
    last = None
    for topic, stamp in rows:
        if stamp != last:
            groups.append([])
            last = stamp
        groups[-1].append(topic.rsplit(".", 1)[-1])
    return groups


def test_a_node_answers_on_its_worker_in_the_deliverys_save(tmp_path: Path) -> None:
    asyncio.run(_answers(tmp_path))


async def _answers(tmp_path: Path) -> None:
    clock, directory = VirtualTime(), DidKeyResolver()
    threads: set[str] = set()

    def answer(session_id: UUID, payload: bytes) -> bytes | None:
        threads.add(threading.current_thread().name)
        return b"re:" + payload if payload.startswith(b"q") else None

    alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
    bob = make_side(
        tmp_path, "bob", directory, clock, durability="normal", node_options={"answer": answer}
    )
    server = await bob.node.serve()
    relay = Relay(server.sockets[0].getsockname()[1])
    try:
        await alice.node.connect(bob.did, "127.0.0.1", await relay.start())
        sid = await alice.node.establish(bob.did)
        await established(alice, sid)
        conversation = alice.session(sid).conversation
        await established(bob, conversation)
        requests = [b"q%d" % n for n in range(20)]
        for payload in requests[:10]:  # one at a time
            await alice.node.send(sid, payload)
            got = await asyncio.wait_for(alice.node.receive(), WAIT_S)
            assert got.payload == b"re:" + payload
        await asyncio.gather(*(alice.node.send(sid, p) for p in requests[10:]))  # together
        await alice.node.send(sid, b"a note")
        answers = [await asyncio.wait_for(alice.node.receive(), WAIT_S) for _ in range(10)]
        assert [a.payload for a in answers] == [b"re:" + p for p in requests[10:]]
        # Bob's application gets only what the answer left to it.
        note = await asyncio.wait_for(bob.node.receive(), WAIT_S)
        bob_sid = bob.session(conversation).id
        assert note == Deliver(bob_sid, 21, b"a note", answered=False)
        assert bob.node._received.empty()
        assert [d.payload for d in bob.node.delivered] == [b"a note"]
        assert threads == {"l2-session-node"}
        # Every answer is in the transaction of the delivery it answers.
        groups = transactions(tmp_path / "bob.sqlite3", bob_sid)
        with_messages = [g for g in groups if {"MessageDelivered", "MessageQueued"} & set(g)]
        answered = [g for g in with_messages if "MessageQueued" in g]
        assert sum(g.count("MessageQueued") for g in answered) == len(requests)
        for group in answered:
            # each answer follows its request in the same commit: as many of each
            deliveries = [k for k in group if k == "MessageDelivered"]
            assert len(deliveries) >= group.count("MessageQueued") > 0
        assert sum(g.count("MessageDelivered") for g in with_messages) == len(requests) + 1
    finally:
        await alice.node.close()
        await relay.close()
        server.close()
        await bob.node.close()
        alice.ledger.close()
        bob.ledger.close()


def test_delivered_keeps_only_the_latest_messages(tmp_path: Path, monkeypatch: Any) -> None:
    """``TcpNode.delivered`` is a look at the latest messages, bounded; ``receive`` has all."""
    monkeypatch.setattr(tcp, "DELIVERED_KEPT", 4)
    asyncio.run(_kept(tmp_path))


async def _kept(tmp_path: Path) -> None:
    clock, directory = VirtualTime(), DidKeyResolver()
    alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
    bob = make_side(tmp_path, "bob", directory, clock, durability="normal")
    server = await bob.node.serve()
    try:
        await alice.node.connect(bob.did, "127.0.0.1", server.sockets[0].getsockname()[1])
        sid = await alice.node.establish(bob.did)
        await established(alice, sid)
        sent = [b"m%d" % n for n in range(10)]
        for payload in sent:
            await alice.node.send(sid, payload)
        got = [(await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload for _ in sent]
        assert got == sent
        assert [d.payload for d in bob.node.delivered] == sent[-4:]
    finally:
        await alice.node.close()
        server.close()
        await bob.node.close()
        alice.ledger.close()
        bob.ledger.close()


def test_an_application_that_does_not_read_holds_the_node_back(tmp_path: Path) -> None:
    """Bob's application reads nothing while Alice sends 200 messages: once ``max_unread``
    (16) wait, Bob's node reads no connection, so what waits stays bounded (the 16, and what
    its worker had already taken); Alice's sends wait on her window. Once Bob reads, every
    message arrives, once and in order."""
    asyncio.run(_unread(tmp_path))


async def _unread(tmp_path: Path) -> None:
    clock, directory = VirtualTime(), DidKeyResolver()
    alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
    bob = make_side(tmp_path, "bob", directory, clock, durability="normal",
                    node_options={"max_unread": 16, "max_batch": 8})  # fmt: skip
    server = await bob.node.serve()
    try:
        await alice.node.connect(bob.did, "127.0.0.1", server.sockets[0].getsockname()[1])
        sid = await alice.node.establish(bob.did)
        await established(alice, sid)
        sent = [b"m%d" % n for n in range(200)]
        sending = asyncio.ensure_future(asyncio.gather(*(alice.node.send(sid, p) for p in sent)))
        await until(lambda: bob.node.connections.held)
        await asyncio.sleep(0.5)  # Bob's node stays held: nothing more is read
        waiting = bob.node._received.qsize()
        assert 16 <= waiting <= 16 + 2 * 8, waiting
        assert not sending.done()  # Alice's window is full of what Bob has not acknowledged
        got = [(await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload for _ in sent]
        assert got == sent
        await asyncio.wait_for(sending, WAIT_S)
        assert not bob.node.connections.held
    finally:
        await alice.node.close()
        server.close()
        await bob.node.close()
        alice.ledger.close()
        bob.ledger.close()
