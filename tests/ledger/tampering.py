"""What an attacker with write access to the ledger file can do to it (for the tamper tests)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger.format import event_hash, lp
from l2_session.infrastructure.ledger.merkle import Frontier
from l2_session.infrastructure.ledger.recorder import SIGNER_DOMAIN
from l2_session.infrastructure.ledger.tree import (
    TILE,
    TILE_LEVEL,
    TILE_OFFSET,
    build_rows,
    grow_inline,
)

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
    db.execute("DROP TRIGGER IF EXISTS ledger_tree_no_update")
    db.execute("DROP TRIGGER IF EXISTS ledger_tree_no_delete")
    return db


def format_of(db: sqlite3.Connection) -> bytes:
    (version,) = db.execute("SELECT value FROM ledger_meta WHERE key='format_version'").fetchone()
    return bytes(version)


def _tree_column(db: sqlite3.Connection, position: int) -> bytes:
    (column,) = db.execute(
        "SELECT tree FROM ledger_events WHERE position=?", (position,)
    ).fetchone()
    return b"" if column is None else bytes(column)


def change_node(
    db: sqlite3.Connection, position: int, level: int, value: bytes = bytes(32)
) -> None:
    """Overwrite the stored hash of the tree node of ``level`` ending at ``position`` where the
    file's format keeps it: in the event's tree column (format 4), in its tile (format 3,
    levels 1 to 3) or in its own ledger_tree row."""
    version = format_of(db)
    if version == b"4":
        column = bytearray(_tree_column(db, position))
        assert len(column) >= 32 * level, "no such node"
        column[32 * level - 32 : 32 * level] = value
        db.execute("UPDATE ledger_events SET tree=? WHERE position=?", (bytes(column), position))
    elif version == b"3" and level <= TILE_LEVEL:
        tile = -(-position // TILE) * TILE
        at = TILE_OFFSET[position - tile + TILE, level]
        (row,) = db.execute(
            "SELECT hash FROM ledger_tree WHERE node=?", (64 * tile + 3,)
        ).fetchone()
        new = bytes(row[:at]) + value + bytes(row[at + 32 :])
        db.execute("UPDATE ledger_tree SET hash=? WHERE node=?", (new, 64 * tile + 3))
    else:
        changed = db.execute(
            "UPDATE ledger_tree SET hash=? WHERE node=?", (value, 64 * position + level)
        )
        assert changed.rowcount == 1, "no such node"
    db.commit()


def drop_top_node(db: sqlite3.Connection, position: int, level: int) -> None:
    """Remove the stored node of ``level`` ending at ``position``, the highest that position
    completes (level 4 or more in format 3)."""
    if format_of(db) == b"4":
        column = _tree_column(db, position)
        assert len(column) == 32 * level, "not the position's highest node"
        db.execute(
            "UPDATE ledger_events SET tree=? WHERE position=?", (column[:-32] or None, position)
        )
    else:
        db.execute("DELETE FROM ledger_tree WHERE node=?", (64 * position + level,))
    db.commit()


def add_level_1_node(db: sqlite3.Connection, position: int) -> None:
    """Store a node of level 1 ending at the odd ``position``, where the tree has none."""
    assert position % 2
    if format_of(db) == b"4":
        db.execute("UPDATE ledger_events SET tree=zeroblob(32) WHERE position=?", (position,))
    else:
        db.execute("INSERT INTO ledger_tree VALUES (?, zeroblob(32))", (64 * position + 1,))
    db.commit()


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
    hashes = [
        bytes(h) for (h,) in db.execute("SELECT event_hash FROM ledger_events ORDER BY position")
    ]
    version = format_of(db)
    if version == b"4":  # the tree in the events' rows
        column = grow_inline(Frontier(), hashes)
        db.executemany(
            "UPDATE ledger_events SET tree=? WHERE position=?",
            [(c, p) for p, c in enumerate(column, start=1)],
        )
    else:
        for rows in build_rows(list(enumerate(hashes, start=1)), tiled=version == b"3"):
            db.executemany("INSERT INTO ledger_tree (node, hash) VALUES (?,?)", rows)
    db.commit()
