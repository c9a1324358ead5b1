"""The ledger's SQLite schema, and the checks made before a file is trusted as a ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils
from l2_session.infrastructure.ledger.errors import LedgerNotFound, NotALedger
from l2_session.infrastructure.ledger.format import FORMAT_NAME, READABLE_VERSIONS
from l2_session.infrastructure.ledger.tree import TREE_TABLE

EVENTS_TABLE = "ledger_events"
META_TABLE = "ledger_meta"
SIGNERS_TABLE = "ledger_signers"
CHECKPOINTS_TABLE = "ledger_checkpoints"
SNAPSHOTS_TABLE = "ledger_snapshots"
COSIGNATURES_TABLE = "ledger_cosignatures"

EVENT_COLUMNS = (
    "position",
    "session_id",
    "version",
    "topic",
    "timestamp",
    "payload",
    "sealed",
    "prev_session_hash",
    "prev_global_hash",
    "event_hash",
    "signer",
    "signature",
)


def _append_only(table: str) -> list[str]:
    # SPEC: append-only is enforced by the store itself, not just by this program.
    return [
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: UPDATE refused'); END",
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: DELETE refused'); END",
    ]


# Format 2: the Merkle tree of the events (tree.py) and the witnesses' cosignatures of this
# ledger's checkpoints (witness.py); docs/ledger-format.md §13, §14.
TREE_STATEMENTS: list[str] = [
    f"""CREATE TABLE IF NOT EXISTS {TREE_TABLE} (
        node INTEGER PRIMARY KEY,
        hash BLOB NOT NULL
    )""",
    *_append_only(TREE_TABLE),
    f"""CREATE TABLE IF NOT EXISTS {COSIGNATURES_TABLE} (
        id INTEGER PRIMARY KEY,
        checkpoint_id INTEGER NOT NULL,
        witness TEXT NOT NULL,
        cosignature TEXT NOT NULL,
        received_at INTEGER NOT NULL
    )""",
    *_append_only(COSIGNATURES_TABLE),
]

CREATE_STATEMENTS: list[str] = [
    f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
        position INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        topic TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        payload BLOB NOT NULL,
        sealed BLOB,
        prev_session_hash BLOB NOT NULL,
        prev_global_hash BLOB NOT NULL,
        event_hash BLOB NOT NULL,
        signer TEXT NOT NULL,
        signature BLOB NOT NULL,
        tree BLOB,
        UNIQUE (session_id, version)
    )""",
    *_append_only(EVENTS_TABLE),
    f"""CREATE TABLE IF NOT EXISTS {SIGNERS_TABLE} (
        did TEXT PRIMARY KEY,
        registered_at INTEGER NOT NULL,
        signature BLOB NOT NULL
    )""",
    *_append_only(SIGNERS_TABLE),
    f"""CREATE TABLE IF NOT EXISTS {CHECKPOINTS_TABLE} (
        id INTEGER PRIMARY KEY,
        position INTEGER NOT NULL,
        text TEXT NOT NULL
    )""",
    *_append_only(CHECKPOINTS_TABLE),
    # Snapshots are a cache, not history: they may be replaced, and each is checked against
    # the chain before it is used.
    f"""CREATE TABLE IF NOT EXISTS {SNAPSHOTS_TABLE} (
        session_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        topic TEXT NOT NULL,
        state BLOB NOT NULL,
        head_hash BLOB NOT NULL,
        signer TEXT NOT NULL,
        signature BLOB NOT NULL,
        PRIMARY KEY (session_id, version)
    )""",
    *TREE_STATEMENTS,
]


def check_sqlite_ledger_file(path: Path, *, create: bool) -> bool:
    """Check that ``path`` is a ledger (or may become one). Returns True if it must be created.

    Raises LedgerNotFound or NotALedger with what was found, before anything is written.
    """
    if not path.exists():
        if not create:
            raise LedgerNotFound(f"no ledger at {path}: the file does not exist")
        if not path.parent.exists():
            raise LedgerNotFound(f"cannot create a ledger at {path}: {path.parent} does not exist")
        return True
    if path.is_dir():
        raise NotALedger(f"{path} is a directory, not a ledger database file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = set(sqlite_utils.Database(conn).table_names())
            meta = (
                dict(conn.execute(f"SELECT key, value FROM {META_TABLE}").fetchall())
                if META_TABLE in tables
                else None
            )
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise NotALedger(f"{path} is not a readable SQLite database ({e})") from e
    if meta is None:
        if not tables and create:
            return True  # an empty SQLite file: make it a ledger
        listed = ", ".join(sorted(tables)) or "none"
        raise NotALedger(
            f"{path} is a SQLite database but not an l2-session ledger (tables: {listed})"
        )
    if meta.get("format") != FORMAT_NAME:
        raise NotALedger(
            f"{path}: ledger_meta names format {meta.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise NotALedger(
            f"{path}: ledger format version {meta.get('format_version')!r} is not supported "
            f"(this program reads versions {', '.join(READABLE_VERSIONS)})"
        )
    if EVENTS_TABLE not in tables:
        raise NotALedger(f"{path}: ledger_meta is present but the {EVENTS_TABLE} table is missing")
    return False
