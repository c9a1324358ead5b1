"""Nonces are never reused, even across SIGKILL: the sender reserves counters in blocks, durably,
before using them, and restarts from the end of the last reservation (issue 4, "Nonces are never
reused, even after SIGKILL and resume").

The reservation record here is an fsync'd append-only file standing in for the ledger (which is
not wired to the channel yet); what is tested is the channel's contract: it never seals beyond
``reserved_until``, and a restart at the reserved limit cannot repeat a counter.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SENDER = textwrap.dedent(
    """
    import os, sys
    from l2_session.domain.handshake_channel import Channel
    from l2_session.domain.handshake_keys import SessionKeys

    BLOCK = 16
    reservations, sent = sys.argv[1], sys.argv[2]
    key = bytes(range(32))  # a fixed test key: the point is the (key, counter) pairs
    keys = SessionKeys(bytes(16), key, bytes(32), bytes(32), True, bytes(32))

    def durable_append(path, line):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    # Resume: start at the end of the last reservation that reached the disk.
    start = 0
    if os.path.exists(reservations):
        lines = [l for l in open(reservations).read().split("\\n") if l.strip()]
        start = int(lines[-1]) if lines else 0
    channel = Channel(keys, next_send_counter=start, reserved_until=start)
    out = os.open(sent, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    while True:
        if channel.next_send_counter >= channel.reserved_until:
            until = channel.reserved_until + BLOCK
            durable_append(reservations, f"{until}\\n")  # reserve first, durably ...
            channel.reserve(until)  # ... then allow the channel to use the block
        record = channel.seal(b"payload")
        os.write(out, record[4:12].hex().encode() + b"\\n")  # the counter, as sent
    """
)


@pytest.mark.slow
def test_no_counter_repeats_across_many_sigkills(tmp_path: Path) -> None:
    reservations, sent = tmp_path / "reservations", tmp_path / "sent"
    rng = random.Random(4)
    kills = 25
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", SENDER, str(reservations), str(sent)])
        time.sleep(0.15 + rng.random() * 0.25)  # long enough for imports, then a random moment
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    lines = [line for line in sent.read_text().split("\n") if len(line) == 16]
    counters = [int(line, 16) for line in lines]
    assert len(counters) > kills  # the senders did send
    assert len(counters) == len(set(counters)), "a (key, nonce) pair was used twice"
    # And every counter sent lies below a reservation made before it.
    limits = [int(x) for x in reservations.read_text().split()]
    assert max(counters) < max(limits)
