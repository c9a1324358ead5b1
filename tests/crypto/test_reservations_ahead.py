"""Send counters are reserved ahead of need, so that sealing a frame does not save
(domain/manager/reservations.py): the first block with the keys, in the save that records
them; the next one, once half of the current block is used, with the session's next save.
Real keys, real SQLite ledgers; the kill tests (test_nonce_reservation_kill.py,
test_sealed_kill.py) hold the other half: no (key, nonce) pair ever repeats."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from l2_session.domain.manager.channel import SessionChannel
from l2_session.domain.session.session import Session
from ledger_sessions import recorded_session
from tcp_support import Pair, acknowledged, until
from tcp_support import established_pair as established_tcp_pair


def _counting(saves: list[Any], save: Any) -> Any:
    def counted(s: Session) -> Any:
        saves.append(s)
        return save(s)

    return counted


def test_the_first_frames_under_new_keys_seal_without_a_save(tmp_path: Path) -> None:
    async def main() -> None:
        pair: Pair = await established_tcp_pair(tmp_path)
        try:
            sealing_saves: list[Any] = []
            for side in (pair.alice, pair.bob):
                side.node.sealed._save = _counting(sealing_saves, side.node.sealed._save)
            await pair.alice.node.send(pair.conversation, b"first")
            await until(lambda: [d.payload for d in pair.bob.node.delivered] == [b"first"])
            await acknowledged(pair)
            assert pair.alice.node.sealed.opened == pair.bob.node.sealed.opened == 1
            assert sealing_saves == []  # neither end saved to seal its first frame
            for side in (pair.alice, pair.bob):
                session = side.session(pair.conversation)
                names = [type(e).__name__ for e in side.ledger.events.get(session.id)]
                at = names.index("Established")
                assert names[at + 1] == "CountersReserved"  # recorded with the keys
                assert session.counters_reserved() > 0
        finally:
            await pair.close()

    asyncio.run(main())


def test_the_next_block_rides_with_a_save_that_happens_anyway(tmp_path: Path) -> None:
    recorded = recorded_session(tmp_path)
    ledger, now = recorded.ledger, recorded.now_us
    try:
        session: Session = ledger.repository.get(recorded.session_id)
        saves: list[Any] = []
        channel = SessionChannel(
            session, recorded.alice.identity.public_bytes, recorded.bob.identity.public_bytes,
            _counting(saves, ledger.save), block=4,
        )  # fmt: skip
        counters = [channel.seal(b"x", now)[4:12] for _ in range(3)]
        # A session replayed from the ledger has no fresh block: its first frame saved one.
        assert len(saves) == 1 and session.counters_reserved() == 8  # the next, recorded
        assert [type(e).__name__ for e in session.pending_events] == ["CountersReserved"]

        ledger.save(session)  # the session's next save (a batch's), which carries it
        counters += [channel.seal(b"x", now)[4:12] for _ in range(5)]  # into the next block
        assert len(saves) == 1  # sealing saved nothing more

        used = [int.from_bytes(c, "big") for c in counters]
        assert used == list(range(8))
        # Every counter used was saved first: a restart starts after all of them.
        assert recorded.reopen().counters_reserved() > max(used)
    finally:
        ledger.close()
