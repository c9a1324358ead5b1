"""``export --sqlite OUT.db``: what a bundle holds, as tables for people who would rather query
than read — written through sqlite-utils, with primary keys, foreign keys and indexes, ready
for Datasette (``datasette OUT.db``).

    peers        did                     the peers of the exported sessions
    sessions     id → peers.did          each exported session as of the bundle's checkpoint
    events       position → sessions.id  every exported event: its columns, its transition
    transitions  position → events, sessions.id
                                         the events that changed a session's state

The ledger's own records stay the proof: these tables are a reading aid built from the same
selection, and hold no signature or proof.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlite_utils
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.projections.history import LedgerHistory, iso


def write_tables(ledger: SessionLedger, bundle: Path, out: Path) -> dict[str, int]:
    """Write the tables of ``bundle`` (events exported from ``ledger``) to the new SQLite file
    ``out``, whole or not at all; the number of rows of each table."""
    if out.exists():
        raise FileExistsError(f"{out} already exists; --sqlite writes a new file")
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    size = int(manifest["tree_size"])
    history = LedgerHistory(ledger)
    exported: dict[str, dict[int, dict[str, Any]]] = {}  # session -> position -> event line
    with (bundle / "events.jsonl").open(encoding="utf-8") as f:
        for line in f:
            event = json.loads(line)
            exported.setdefault(event["session_id"], {})[event["position"]] = event
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        counts = _write(history, size, exported, sqlite_utils.Database(temporary))
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return counts


def _write(
    history: LedgerHistory,
    size: int,
    exported: dict[str, dict[int, dict[str, Any]]],
    db: sqlite_utils.Database,
) -> dict[str, int]:
    sessions, events, transitions = [], [], []
    peers: dict[str, dict[str, Any]] = {}
    for sid, lines in exported.items():
        state = history.state_at(sid, size)
        summary = state.summary()
        peer = summary.get("peer")
        if peer:
            peers.setdefault(peer, {"did": peer, "sessions": 0})["sessions"] += 1
        sessions.append({
            "id": sid, "kind": state.kind, "peer": peer, "role": summary.get("role"),
            "state": summary.get("state"), "since": summary.get("since"),
            "transport": summary.get("transport"), "failure_reason": summary.get("failure_reason"),
            "events_exported": len(lines),
        })  # fmt: skip
        for step in history.timeline(sid):
            line = lines.get(step.position)
            if line is None:
                continue
            events.append({
                "position": step.position, "session_id": sid, "version": step.version,
                "event": step.event, "topic": line["topic"], "time": iso(step.at_us),
                "recorded": iso(step.timestamp_us), "trigger": step.trigger,
                "from_state": step.state_before, "to_state": step.state, "reason": step.reason,
                "role": line["role"], "event_hash": line["event_hash"], "signer": line["signer"],
            })  # fmt: skip
            if step.state is not None and step.state != step.state_before:
                transitions.append({
                    "position": step.position, "session_id": sid, "time": iso(step.at_us),
                    "from_state": step.state_before, "to_state": step.state,
                    "trigger": step.trigger, "reason": step.reason,
                })  # fmt: skip
    text, number = str, int
    db.table("peers").create({"did": text, "sessions": number}, pk="did")
    db.table("sessions").create(
        {"id": text, "kind": text, "peer": text, "role": text, "state": text, "since": text,
         "transport": text, "failure_reason": text, "events_exported": number},
        pk="id", foreign_keys=[("peer", "peers", "did")],
    )  # fmt: skip
    db.table("events").create(
        {"position": number, "session_id": text, "version": number, "event": text,
         "topic": text, "time": text, "recorded": text, "trigger": text, "from_state": text,
         "to_state": text, "reason": text, "role": text, "event_hash": text, "signer": text},
        pk="position", foreign_keys=[("session_id", "sessions", "id")],
    )  # fmt: skip
    db.table("transitions").create(
        {"position": number, "session_id": text, "time": text, "from_state": text,
         "to_state": text, "trigger": text, "reason": text},
        pk="position",
        foreign_keys=[("position", "events", "position"), ("session_id", "sessions", "id")],
    )  # fmt: skip
    for name, rows in (("peers", list(peers.values())), ("sessions", sessions),
                       ("events", events), ("transitions", transitions)):  # fmt: skip
        db.table(name).insert_all(rows)
    db.table("events").create_index(["session_id", "version"], if_not_exists=True)
    db.table("events").create_index(["time"], if_not_exists=True)
    db.table("transitions").create_index(["session_id", "time"], if_not_exists=True)
    db.table("transitions").create_index(["to_state"], if_not_exists=True)
    db.table("sessions").create_index(["state"], if_not_exists=True)
    db.conn.commit()
    db.close()
    return {"peers": len(peers), "sessions": len(sessions), "events": len(events),
            "transitions": len(transitions)}  # fmt: skip
