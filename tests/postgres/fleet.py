"""Processes of the multi-node test: a node appending sessions, and a projection following them.

python fleet.py node <ledger url> <seed hex> <sessions> <threads>
    appends <sessions> sessions of 5 events (each saved in two appends, so session chains
    cross transactions), from <threads> threads sharing group commit; after each save
    returns it prints "ACK <session hex> <version>" — an acknowledged append.
python fleet.py project <ledger url> <view url>
    runs the SessionEventCounts projection until killed, printing "LAG <events> <seconds>".
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from eventsourcing.domain import Aggregate, event

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so event topics read "fleet:..."


class Tick(Aggregate):
    @event("Opened")
    def __init__(self, node: str) -> None:
        self.node = node
        self.ticks = 0

    @event("Ticked")
    def tick(self, note: str) -> None:
        self.ticks += 1


def run_node(url: str, seed_hex: str, sessions: int, threads: int) -> None:
    from fleet import Tick  # the importable module, not __main__
    from l2_session.infrastructure.identity import NodeIdentity
    from l2_session.infrastructure.ledger import SessionLedger

    ledger = SessionLedger(url, identity=NodeIdentity.from_seed(bytes.fromhex(seed_hex)))
    out = threading.Lock()

    def ack(tick: Any) -> None:
        with out:
            sys.stdout.write(f"ACK {tick.id.hex} {tick.version}\n")
            sys.stdout.flush()

    def work(count: int) -> None:
        for _ in range(count):
            tick = Tick(seed_hex[:8])
            tick.tick("a")
            ledger.save(tick)
            ack(tick)
            for note in "bcd":
                tick.tick(note)
            ledger.save(tick)
            ack(tick)

    per_thread = [sessions // threads + (i < sessions % threads) for i in range(threads)]
    workers = [threading.Thread(target=work, args=(n,)) for n in per_thread]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    sys.stdout.write("DONE\n")
    sys.stdout.flush()


def run_projection(ledger_url: str, view_url: str) -> None:
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.projections.runner import Lag, ProjectionRunner
    from l2_session.projections.session_counts import SessionEventCounts

    def report(lag: Lag) -> None:
        sys.stdout.write(f"LAG {lag.events} {lag.seconds:.4f}\n")
        sys.stdout.flush()

    ledger = SessionLedger(ledger_url, create=False)  # read-only: no identity
    runner = ProjectionRunner(
        ledger, view_url, SessionEventCounts(), batch_size=200, poll_interval=0.5, on_batch=report
    )
    runner.run_forever()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "node":
        run_node(args[0], args[1], int(args[2]), int(args[3]))
    elif command == "project":
        run_projection(args[0], args[1])
    else:
        raise SystemExit(f"unknown command {command!r}: expected 'node' or 'project'")
