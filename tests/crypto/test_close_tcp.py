"""Decision 17 with real parts: two nodes with real PQxdh keys and signed SQLite ledgers, over
loopback TCP through an on-path relay. One side closes; the close travels sealed under the
session keys, the other side ends too, both ledgers say why and verify. A close in clear —
what anyone who knows the conversation id could send — is refused and ends nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from l2_session.domain.session.commands import Close
from l2_session.infrastructure.ledger.verify import verify
from l2_session.transports.frames import encode
from tcp_support import WAIT_S, Pair, established_pair, is_sealed, until


def _closed(side: object, session_id: object) -> list[object]:
    events = side.manager.ledger.events.get(session_id)  # type: ignore[attr-defined]
    return [e for e in events if type(e).__name__ == "Closed"]


def _verified(pair: Pair) -> None:
    for side in (pair.alice, pair.bob):
        report = verify(side.ledger)
        assert report.ok, report.summary()


def test_one_side_closes_both_ledgers_show_the_session_ended(tmp_path: Path) -> None:
    async def run() -> None:
        pair = await established_pair(tmp_path)
        try:
            alice = pair.alice.session(pair.conversation)
            bob = pair.bob.session(pair.conversation)
            keys = alice.key_id
            # Anyone who saw the conversation id can send a close in clear: it is refused.
            pair.relay.inject(encode(Close(pair.conversation)))
            await until(lambda: pair.bob.node.sealed.refused["unsealed"] == 1)
            assert not bob.closed

            sent = len(pair.relay.to_server)
            await pair.alice.node.command(
                lambda: pair.alice.manager.close(alice.id, pair.clock.now_us())
            )
            await pair.bob.node.until(lambda: bob.closed, WAIT_S)
            await pair.alice.node.until(
                lambda: not pair.alice.manager.awaiting_close_acks(), WAIT_S
            )
            # The close went sealed, under the session's keys.
            assert pair.relay.to_server[sent:] and all(map(is_sealed, pair.relay.to_server[sent:]))
            assert pair.relay.to_server[sent][21:29].hex() == keys
            assert [e.reason for e in _closed(pair.alice, alice.id)] == ["closed"]  # type: ignore[attr-defined]
            assert [e.reason for e in _closed(pair.bob, bob.id)] == ["closed by peer"]  # type: ignore[attr-defined]
        finally:
            await pair.close()
        _verified(pair)

    asyncio.run(run())


def test_closing_a_node_ends_its_sessions_only_when_asked(tmp_path: Path) -> None:
    async def by_default(pair: Pair) -> None:
        bob = pair.bob.session(pair.conversation)
        await pair.alice.node.close()  # stop: the sessions stay resumable (decision 16)
        await asyncio.sleep(0.05)
        assert not bob.closed and pair.alice.session(pair.conversation).state == "established"
        assert not _closed(pair.alice, pair.conversation)

    async def ending_them(pair: Pair) -> None:
        bob = pair.bob.session(pair.conversation)
        await pair.alice.node.close(end_sessions=True)
        assert bob.closed and not pair.alice.manager.awaiting_close_acks()
        assert [e.reason for e in _closed(pair.alice, pair.conversation)] == ["closed"]  # type: ignore[attr-defined]
        assert [e.reason for e in _closed(pair.bob, bob.id)] == ["closed by peer"]  # type: ignore[attr-defined]

    for name, test in (("default", by_default), ("end", ending_them)):
        folder = tmp_path / name
        folder.mkdir()

        async def run(folder: Path = folder, test: object = test) -> Pair:
            pair = await established_pair(folder)
            try:
                await test(pair)  # type: ignore[operator]
            finally:
                await pair.close()
            return pair

        _verified(asyncio.run(run()))
