"""No (key, nonce) pair repeats on the wire, even when the sending process is SIGKILLed at
random moments and restarted from its ledger: the session's frames travel sealed over
loopback TCP (transports/sealed.py), each record's counter reserved in the ledger before use,
and each restart resumes the session with fresh keys (decision 16).

Alice's process finds the session in her ledger file, connects to Bob (running all along,
behind an on-path relay that logs every frame), resumes it and sends messages until it is
killed; then again, many times. Every sealed record the relay saw is checked: no (key id,
counter) twice, no key of an earlier process used by a later one, and Bob's replay window never
had to refuse one.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from tcp_support import Pair, established_pair, is_sealed, until

SENDER = textwrap.dedent(
    """
    import asyncio, os, sys, time, uuid
    from l2_session.domain.handshake.engine import HandshakeEngine
    from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
    from l2_session.domain.manager.manager import SessionManager
    from l2_session.infrastructure.keystore import KeyStore
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.infrastructure.resolver import DidKeyResolver
    from l2_session.transports.tcp import TcpNode

    keys, ledger_path, session_id, peer_did, port = sys.argv[1:6]

    async def main():
        store = KeyStore.load(keys)
        ledger = SessionLedger(ledger_path, identity=store.identity, storage_key=store.storage_key)
        directory = DidKeyResolver()  # did:key resolves offline; resumption needs no bundle
        exchange = PqxdhKeyExchange(
            HandshakeEngine(store.identity.private_key),
            fetch_bundle=directory.fetch_bundle,
            identity_key_of=lambda did: bytes(directory.resolve(did).identity_key),
        )
        manager = SessionManager(store.identity.did, ledger, key_exchange=exchange)
        now = lambda: time.time_ns() // 1000
        node = TcpNode(manager, now, reservation_block=16)  # records the restart
        exchange.source_of = node.address_of
        sid = uuid.UUID(session_id)
        session = manager.session(sid)
        await node.connect(peer_did, "127.0.0.1", int(port))  # and resumes, fresh keys
        await node.until(lambda: session.state == "established", timeout_s=10)
        parent = os.getppid()
        for i in range(10**9):
            if os.getppid() != parent:  # the test is gone: so is this sender
                return
            await node.send(sid, b"message %d" % i)  # waits while the window is full

    asyncio.run(main())
    """
)


def _records(frame: bytes) -> list[tuple[str, int]]:
    """(key id, counter) of each record in a sealed frame (length prefix included)."""
    key_id, count, at, out = frame[21:29].hex(), frame[29], 30, []
    for _ in range(count):
        length = int.from_bytes(frame[at + 2 : at + 4], "big")
        out.append((key_id, int.from_bytes(frame[at + 4 : at + 12], "big")))
        at += 4 + length
    return out


@pytest.mark.slow
def test_no_key_nonce_pair_repeats_on_the_wire_across_sigkills(tmp_path: Path) -> None:
    rng, kills = random.Random(18), 12
    starts: list[int] = []  # where each process's frames begin in the relay's log

    async def run() -> Pair:
        pair = await established_pair(tmp_path)
        pair.bob.node.start_timers()  # Bob acknowledges a lone message after max_ack_delay
        await pair.alice.node.close()  # Alice's first process is gone; her ledger stays
        pair.alice.ledger.close()
        port = pair.relay.port
        for _ in range(kills):
            seen = len(pair.relay.to_server)
            starts.append(seen)
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SENDER, str(pair.alice.store.path),
                str(tmp_path / "alice.sqlite3"), str(pair.conversation), pair.bob.did, str(port),
            )  # fmt: skip
            try:
                await until(lambda seen=seen: any(map(is_sealed, pair.relay.to_server[seen:])))
                await asyncio.sleep(rng.random() * 0.2)  # a random moment: mid-append, mid-seal
            finally:
                child.send_signal(signal.SIGKILL)
                await child.wait()
        return pair

    async def main() -> None:
        pair = await run()
        try:
            sent = [r for f in pair.relay.to_server if is_sealed(f) for r in _records(f)]
            assert len(sent) > kills  # the senders did send
            assert len(sent) == len(set(sent)), "a (key, nonce) pair was used twice"
            log = pair.relay.to_server
            keys_of = [
                {key for f in log[start:end] if is_sealed(f) for key, _ in _records(f)}
                for start, end in zip(starts, [*starts[1:], len(log)], strict=True)
            ]
            for i, keys in enumerate(keys_of):  # each process sealed under keys of its own
                assert len(keys) == 1 and keys.isdisjoint(set().union(*keys_of[:i]))
            assert keys_of[-1] == {pair.bob.session(pair.conversation).key_id}
            assert pair.bob.node.sealed.refused["replayed"] == 0
            assert pair.bob.node.delivered  # and the messages got through
        finally:
            await pair.close()

    asyncio.run(main())
