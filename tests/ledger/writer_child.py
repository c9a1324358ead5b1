"""A node process for the crash and multi-writer tests: appends sessions in a loop, and prints
each acknowledged append as "<session hex> <version>" once save() has returned."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from ledger_aggregates import Conversation


def main() -> None:
    path, seed_hex, sessions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ledger = SessionLedger(path, identity=NodeIdentity.from_seed(bytes.fromhex(seed_hex)),
                           storage_key=b"s" * 32)  # fmt: skip
    print("ready", flush=True)
    for i in range(sessions):
        conversation = Conversation(peer=f"peer-{i}")
        conversation.store_key(i.to_bytes(4, "big") * 8)
        for j in range(3):
            conversation.note(text=f"note {j} " + "y" * 150)
        ledger.save(conversation)
        print(conversation.id.hex, conversation.version, flush=True)
        conversation.note(text="one more")
        ledger.save(conversation)
        print(conversation.id.hex, conversation.version, flush=True)
    ledger.close()


if __name__ == "__main__":
    main()
