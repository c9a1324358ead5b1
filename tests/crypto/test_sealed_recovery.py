"""The sealed channel after something went wrong on the sending side: a reservation whose save
failed, and a session object the manager replaced by one replayed from its ledger. Neither may
stop the channel, and no (key, counter) pair may repeat. Real keys, real SQLite ledgers."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from l2_session.domain.manager.channel import SessionChannel
from l2_session.domain.session.commands import Output
from l2_session.domain.session.session import Session
from ledger_sessions import recorded_session
from tcp_support import WAIT_S, Pair, acknowledged, is_sealed, until
from tcp_support import established_pair as established_tcp_pair


def test_a_reservation_whose_save_failed_does_not_stop_the_channel(tmp_path: Path) -> None:
    recorded = recorded_session(tmp_path)
    ledger, now, alice, bob = recorded.ledger, recorded.now_us, recorded.alice, recorded.bob
    try:
        session: Session = ledger.repository.get(recorded.session_id)
        failing = [True]

        def save(s: Session) -> Any:
            if failing.pop() if failing else False:  # the disk fails once
                raise sqlite3.OperationalError("disk I/O error")
            return ledger.save(s)

        channel = SessionChannel(
            session, alice.identity.public_bytes, bob.identity.public_bytes, save, block=2
        )
        failing.clear()
        counters = [channel.seal(b"x", now)[4:12] for _ in range(2)]  # block [0, 2)
        failing.append(True)
        with pytest.raises(sqlite3.OperationalError):
            channel.seal(b"x", now)  # the next block's save fails: nothing is sealed
        counters += [channel.seal(b"x", now)[4:12] for _ in range(3)]  # and the channel goes on

        used = [int.from_bytes(c, "big") for c in counters]
        assert len(set(used)) == len(used) == 5
        # Every counter used was reserved durably first: a restart starts after all of them.
        assert recorded.reopen().counters_reserved() > max(used)
    finally:
        ledger.close()


def _run(tmp_path: Path, test, block: int) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        pair = await established_tcp_pair(tmp_path, reservation_block=block)
        try:
            await test(pair)
        finally:
            await pair.close()

    asyncio.run(main())


def test_sealing_continues_on_the_session_the_manager_replayed_from_its_ledger(
    tmp_path: Path,
) -> None:
    # ``restore`` replaces the manager's session object with one replayed from the ledger.
    # The sealing side must reserve counters on (and save) that one: saving the object the
    # manager let go of conflicts with the manager's own saves.
    async def test(pair: Pair) -> None:
        manager, node = pair.alice.manager, pair.alice.node
        await node.send(pair.conversation, b"one")
        await until(lambda: [d.payload for d in pair.bob.node.delivered] == [b"one"])
        await acknowledged(pair)

        replayed = await node.query(lambda: manager.restore(pair.conversation))
        await node.send(pair.conversation, b"two")
        await until(lambda: [d.payload for d in pair.bob.node.delivered] == [b"one", b"two"])
        assert not pair.bob.node.sealed.refused and not node.sealed.refused
        sealed_up = [f for f in pair.relay.to_server if is_sealed(f)]
        counters = [f[4 + 26 + 4 : 4 + 26 + 12] for f in sealed_up]
        assert len(set(counters)) == len(counters) >= 2
        # The reservations (one per record) went into the ledger through the manager's object.
        assert replayed is manager.session_for(pair.conversation)
        assert replayed.counters_reserved() >= len(counters)

    _run(tmp_path, test, block=1)


def _fail_next_save(monkeypatch: Any, ledger: Any) -> list[bool]:
    """Make ``ledger``'s next save fail as a disk error would; the list empties when it has."""
    failing, save = [True], ledger.save

    def failing_once(*objs: Any, **kwargs: Any) -> Any:
        if failing:
            failing.pop()
            raise sqlite3.OperationalError("disk I/O error")
        return save(*objs, **kwargs)

    monkeypatch.setattr(ledger, "save", failing_once)
    return failing


def test_the_timers_go_on_after_a_tick_failed_to_save(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The ledger fails once, at the tick that fires Alice's heartbeat. The tick sends nothing
    # and re-arms from the ledger; the node's timer task must live on to fire it again.
    async def test(pair: Pair) -> None:
        failing = _fail_next_save(monkeypatch, pair.alice.ledger)
        pair.alice.node.start_timers()
        pair.clock.skip(31)

        def answered() -> bool:
            alice = pair.alice.session(pair.conversation)
            return alice.heartbeat_counter >= 1 and alice.heartbeat_sent_us is None

        await pair.alice.node.until(answered, WAIT_S)
        assert not failing and pair.alice.node.failed_ticks == 1
        assert not pair.bob.node.sealed.refused

    _run(tmp_path, test, block=1)


def test_a_frame_that_cannot_be_handled_is_lost_and_the_connection_reads_on(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # Bob's ledger fails once, saving the delivery of Alice's message: that frame is lost (as
    # on a network). The stream is intact: Bob's node must go on reading it, and answer
    # Alice's next heartbeat.
    async def test(pair: Pair) -> None:
        failing = _fail_next_save(monkeypatch, pair.bob.ledger)
        alice = pair.alice
        await alice.node.send(pair.conversation, b"one")
        await pair.bob.node.until(lambda: not failing, WAIT_S)  # Bob tried to save the delivery

        session, now = alice.session(pair.conversation), pair.clock.skip(31)

        def tick() -> list[Output]:
            outputs = alice.manager.tick(now)
            assert session.heartbeat_sent_us is not None
            return outputs

        await alice.node.command(tick)
        await alice.node.until(lambda: session.heartbeat_sent_us is None, WAIT_S)  # answered
        assert pair.bob.node.failed_frames == 1 and pair.bob.node.is_proven(alice.did)

    _run(tmp_path, test, block=1)
