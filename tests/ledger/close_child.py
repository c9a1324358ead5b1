"""A node process for the close tests. Each cycle: open the ledger, save and read from several
threads, close it while they do, then reopen it and check that every save that returned is
there. Prints one JSON line per cycle; a crash shows as the exit status."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent))

from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import verify
from ledger_aggregates import Conversation

THREADS = 4


def cycle(location: str, identity: NodeIdentity, run_s: float) -> dict[str, object]:
    storage_key = b"s" * 32
    ledger = SessionLedger(location, identity=identity, storage_key=storage_key,
                           durability="normal", snapshot_interval=5)  # fmt: skip
    acknowledged: dict[str, int] = {}
    errors: list[str] = []

    def saver() -> None:
        conversation = Conversation(peer="did:key:peer")
        while True:
            try:
                ledger.save(conversation)
                acknowledged[conversation.id.hex] = conversation.version
                ledger.repository.get(conversation.id)  # reads in flight at the close too
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
                return
            conversation.note(text="x" * 100)

    threads = [threading.Thread(target=saver) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    time.sleep(run_s)
    ledger.close()
    for thread in threads:
        thread.join()
    reopened = SessionLedger(location, identity=identity, storage_key=storage_key)
    missing = {
        sid: version
        for sid, version in acknowledged.items()
        if len(reopened.recorder.select_events(UUID(sid))) < version
    }
    reopened.close()
    return {
        "errors": errors,
        "acknowledged": sum(acknowledged.values()),
        "missing": missing,
        "verified": verify(location).ok,
    }


def main() -> None:
    location, seed_hex, cycles, run_s = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    identity = NodeIdentity.from_seed(bytes.fromhex(seed_hex))
    for _ in range(cycles):
        print(json.dumps(cycle(location, identity, run_s)), flush=True)


if __name__ == "__main__":
    main()
