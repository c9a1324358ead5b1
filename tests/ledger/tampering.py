"""What an attacker with write access to the ledger file can do to it (for the tamper tests)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger.format import event_hash, lp
from l2_session.infrastructure.ledger.recorder import SIGNER_DOMAIN
from l2_session.infrastructure.ledger.tree import build_rows

COLUMNS = (
    "position", "session_id", "version", "topic", "timestamp", "payload", "sealed",
    "prev_session_hash", "prev_global_hash", "event_hash", "signer", "signature",
)  # fmt: skip


def open_as_attacker(path: Path) -> sqlite3.Connection:
    """A raw connection with the append-only triggers dropped (the attacker owns the file)."""
    db = sqlite3.connect(path)
    db.text_factory = bytes
    db.execute("DROP TRIGGER IF EXISTS ledger_events_no_update")
    db.execute("DROP TRIGGER IF EXISTS ledger_events_no_delete")
    db.execute("DROP TRIGGER IF EXISTS ledger_signers_no_update")
    return db


def row(db: sqlite3.Connection, position: int) -> dict[str, Any]:
    values = db.execute(
        f"SELECT {', '.join(COLUMNS)} FROM ledger_events WHERE position=?", (position,)
    ).fetchone()
    return dict(zip(COLUMNS, values, strict=True))


def flip_byte(db: sqlite3.Connection, position: int, column: str, offset: int) -> int:
    """Flip one byte (or, for integers, one bit) of one column; returns the row's position after."""
    value = row(db, position)[column]
    if isinstance(value, int):
        bit = offset % 40
        if column == "version":
            bit = 8 + offset % 30  # a version no event of the session has (UNIQUE would refuse)
        new_int = value ^ (1 << bit)
        if column == "position":
            new_int = value + (1 << (bit % 20 + 20))  # a free position, far past the head
        db.execute(f"UPDATE ledger_events SET {column}=? WHERE position=?", (new_int, position))
        db.commit()
        return new_int if column == "position" else position
    data = bytearray(value)
    data[offset % len(data)] ^= 0x01 << (offset % 7)
    if column in ("session_id", "topic", "signer"):
        db.execute(
            f"UPDATE ledger_events SET {column}=CAST(? AS TEXT) WHERE position=?",
            (bytes(data), position),
        )
    else:
        db.execute(f"UPDATE ledger_events SET {column}=? WHERE position=?", (bytes(data), position))
    db.commit()
    return position


def swap_rows(db: sqlite3.Connection, a: int, b: int) -> None:
    ra, rb = row(db, a), row(db, b)
    db.execute("DELETE FROM ledger_events WHERE position IN (?, ?)", (a, b))
    for position, r in ((a, rb), (b, ra)):
        r = dict(r, position=position)
        db.execute(
            f"INSERT INTO ledger_events ({', '.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})",
            [r[c] for c in COLUMNS],
        )
    db.commit()


def append_forged(
    db: sqlite3.Connection, forger: NodeIdentity, *, register: bool = False, payload: bytes = b"{}"
) -> int:
    """Append a well-formed, correctly chained event signed by ``forger``; returns its position."""
    head = db.execute(
        "SELECT position, event_hash, timestamp FROM ledger_events ORDER BY position DESC LIMIT 1"
    ).fetchone()
    position = head[0] + 1
    sid, topic, signer = b"f" * 32, b"forged:Event", forger.did.encode()
    h = event_hash(position, sid, 1, topic, head[2], payload, bytes(32), head[1], lp(signer))
    db.execute(
        f"INSERT INTO ledger_events ({', '.join(COLUMNS)}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (position, sid.decode(), 1, topic.decode(), head[2], payload, None, bytes(32), head[1],
         h, signer.decode(), forger.sign(h)),
    )  # fmt: skip
    if register:
        ledger_id = db.execute("SELECT value FROM ledger_meta WHERE key='ledger_id'").fetchone()[0]
        statement = SIGNER_DOMAIN + lp(ledger_id) + lp(signer)
        db.execute(
            "INSERT INTO ledger_signers (did, registered_at, signature) VALUES (?,?,?)",
            (signer.decode(), 0, forger.sign(statement)),
        )
    db.commit()
    return position


def rechain_from(
    db: sqlite3.Connection,
    position: int,
    signer: NodeIdentity,
    new_payload: bytes | None,
    *,
    later_by_us: int = 0,
) -> None:
    """Rewrite history with the node's own key (a stolen key): change one payload (None: keep
    it) and make every event from ``position`` on ``later_by_us`` later, re-hash and re-sign
    every later event so that the chains verify again."""
    rows = db.execute(
        f"SELECT {', '.join(COLUMNS)} FROM ledger_events WHERE position >= ? ORDER BY position",
        (position,),
    ).fetchall()
    prev_g = row(db, position)["prev_global_hash"]
    heads: dict[bytes, bytes] = {}
    for values in rows:
        r = dict(zip(COLUMNS, values, strict=True))
        if r["position"] == position and new_payload is not None:
            r["payload"] = new_payload
        r["timestamp"] += later_by_us
        if r["session_id"] in heads:
            r["prev_session_hash"] = heads[r["session_id"]]
        r["prev_global_hash"] = prev_g
        h = event_hash(
            r["position"], r["session_id"], r["version"], r["topic"], r["timestamp"], r["payload"],
            r["prev_session_hash"], prev_g, lp(r["signer"]),
        )  # fmt: skip
        db.execute(
            "UPDATE ledger_events SET payload=?, timestamp=?, prev_session_hash=?, "
            "prev_global_hash=?, event_hash=?, signature=? WHERE position=?",
            (
                r["payload"],
                r["timestamp"],
                r["prev_session_hash"],
                prev_g,
                h,
                signer.sign(h),
                r["position"],
            ),
        )
        heads[r["session_id"]] = h
        prev_g = h
    db.commit()


def cover_tracks(db: sqlite3.Connection) -> None:
    """What a thorough attacker does after changing the events: rebuild the stored Merkle tree
    from them and remove the checkpoints (and their cosignatures) stored in the file, so that
    the file alone is
    consistent again. Only a checkpoint (or witness) kept elsewhere still tells."""
    for table in ("ledger_tree", "ledger_checkpoints", "ledger_cosignatures"):
        db.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
        db.execute(f"DELETE FROM {table}")
    hashes = db.execute("SELECT event_hash FROM ledger_events ORDER BY position")
    for rows in build_rows(list(enumerate((bytes(h) for (h,) in hashes), start=1))):
        db.executemany("INSERT INTO ledger_tree (node, hash) VALUES (?,?)", rows)
    db.commit()
