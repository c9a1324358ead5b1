"""Nonces are never reused, even across SIGKILL: the sender reserves counters in blocks in the
ledger — a ``CountersReserved`` event of the session, saved durably — before using them, and a
restarted sender rebuilds its channel from the session replayed from the ledger, starting at the
end of the last reservation: a nonce reused under one ChaCha20-Poly1305 key would expose the
plaintexts it sealed.

The sending process is killed many times at random moments, with real keys from a real
handshake, on a real SQLite ledger file; every counter it put on the wire is logged, and no
(key, counter) pair may appear twice.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from uuid import UUID

import pytest
from l2_session.domain.handshake.channel import Channel
from l2_session.domain.manager.channel import SessionChannel
from l2_session.domain.manager.pqxdh import session_keys_of
from l2_session.domain.session.session import Session
from l2_session.infrastructure.keystore import KeyStore
from ledger_sessions import established_pair, open_ledger, record_established

SENDER = textwrap.dedent(
    """
    import os, sys, time, uuid
    from l2_session.domain.manager.channel import SessionChannel
    from l2_session.infrastructure.keystore import KeyStore
    from l2_session.infrastructure.ledger import SessionLedger

    keys, ledger_path, session_id, peer, sent = sys.argv[1:6]
    store = KeyStore.load(keys)
    ledger = SessionLedger(ledger_path, identity=store.identity, storage_key=store.storage_key)
    session = ledger.repository.get(uuid.UUID(session_id))
    channel = SessionChannel(
        session, store.identity.public_bytes, bytes.fromhex(peer), ledger.save, block=16
    )
    out = os.open(sent, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    while True:
        record = channel.seal(b"payload", time.time_ns() // 1000)
        # The key id and the counter, as sent (one write: a kill cannot split a line).
        os.write(out, f"{channel.key_id} {record[4:12].hex()}\\n".encode())
    """
)


LOGGED = re.compile(r"([0-9a-f]{16}) ([0-9a-f]{16})$", re.M)  # key id, counter (a line's end)


def _setup(tmp_path: Path) -> tuple[KeyStore, KeyStore, Path, str]:
    alice = KeyStore.create(tmp_path / "alice.keys")
    bob = KeyStore.create(tmp_path / "bob.keys")
    now = time.time_ns() // 1000
    material, _ = established_pair(alice, bob, now)
    ledger = open_ledger(alice, tmp_path / "alice.sqlite3")
    session_id = record_established(ledger, bob.identity.did, material, now)
    ledger.close()
    return alice, bob, tmp_path / "alice.sqlite3", str(session_id)


def _restored(alice: KeyStore, path: Path, session_id: str) -> Session:
    ledger = open_ledger(alice, path)
    try:
        return ledger.repository.get(UUID(session_id))  # type: ignore[no-any-return]
    finally:
        ledger.close()


def test_reservations_are_ledger_events_and_a_restart_continues_after_them(
    tmp_path: Path,
) -> None:
    alice, bob, path, session_id = _setup(tmp_path)
    ledger = open_ledger(alice, path)
    session = ledger.repository.get(UUID(session_id))
    channel = SessionChannel(session, alice.identity.public_bytes, bob.identity.public_bytes,
                             ledger.save, block=4)  # fmt: skip
    records = [channel.seal(b"m%d" % i, session.at_us) for i in range(6)]
    events = [e for e in ledger.events.get(session.id) if type(e).__name__ == "CountersReserved"]
    assert [(e.key_id, e.until) for e in events] == [(session.key_id, 4), (session.key_id, 8)]
    ledger.close()

    # A restart sends from the end of the last reservation: counters 6 and 7 are skipped.
    restored = _restored(alice, path, session_id)
    again = SessionChannel(restored, alice.identity.public_bytes, bob.identity.public_bytes,
                           lambda s: None, block=4)  # fmt: skip
    assert again.channel.next_send_counter == 8
    # The peer, with its own view of the same key material, opens every record.
    assert restored.key_material is not None
    peer_keys = session_keys_of(
        restored.key_material, bob.identity.public_bytes, alice.identity.public_bytes
    )
    receiving = Channel(peer_keys)
    opened = [receiving.open(r)[1] for r in [*records, again.seal(b"after", restored.at_us)]]
    assert opened == [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5", b"after"]


@pytest.mark.slow
def test_no_key_nonce_pair_repeats_across_many_sigkills(tmp_path: Path) -> None:
    alice, bob, path, session_id = _setup(tmp_path)
    sent = tmp_path / "sent"
    rng = random.Random(4)
    kills = 25
    for _ in range(kills):
        size = sent.stat().st_size if sent.exists() else 0
        child = subprocess.Popen(
            [sys.executable, "-c", SENDER, str(alice.path), str(path), session_id,
             bob.identity.public_bytes.hex(), str(sent)]
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while (sent.stat().st_size if sent.exists() else 0) == size:  # started sending
            assert child.poll() is None, "the sender died on its own"
            assert time.monotonic() < deadline, "the sender never sent"
            time.sleep(0.005)
        time.sleep(rng.random() * 0.2)  # then a random moment: mid-append, mid-seal, ...
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # One write() per line, yet a kill can still cut one short (Linux stops copying into the
    # file once a fatal signal is pending): the next sender's line then follows the torn piece.
    pairs = [m.groups() for m in LOGGED.finditer(sent.read_text())]
    assert len(pairs) > kills  # the senders did send
    assert len(pairs) == len(set(pairs)), "a (key, nonce) pair was used twice"
    # Every counter sent lies below a reservation that reached the ledger before it.
    restored = _restored(alice, path, session_id)
    assert {key for key, _ in pairs} == {restored.key_id}
    assert max(int(counter, 16) for _, counter in pairs) < restored.counters_reserved()
