"""Move a SQLite ledger to PostgreSQL row for row: same ledger id, signers, events, checkpoints
(the Merkle tree is rebuilt from the events, in the format of a new ledger: the same tree,
checked as it is built), and the witnesses' cosignatures of those checkpoints.

The rows are copied byte for byte — nothing is re-hashed or re-signed — so the PostgreSQL ledger
verifies exactly as the file did, and checkpoints taken on the file still pin its history
(docs/deployment.md, "From one node to several"). Snapshots are not copied: they are a cache,
rebuilt by replay. The target schema must not hold a ledger yet.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from l2_session.infrastructure.ledger.chain import ROW_COLUMNS
from l2_session.infrastructure.ledger.errors import LedgerError, NotALedger
from l2_session.infrastructure.ledger.pg_schema import migrate, read_meta
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from l2_session.infrastructure.ledger.schema import (
    CHECKPOINTS_TABLE,
    COSIGNATURES_TABLE,
    EVENTS_TABLE,
    META_TABLE,
    SIGNERS_TABLE,
    check_sqlite_ledger_file,
)
from l2_session.infrastructure.ledger.tree import with_tree_column


def import_sqlite_ledger(path: str | Path, url: str) -> int:
    """Copy the ledger file at ``path`` into the (new) PostgreSQL ledger at ``url``; rows copied."""
    path = Path(path)
    check_sqlite_ledger_file(path, create=False)
    location = PostgresLocation.parse(url)
    with location.connect() as conn, conn.cursor() as cur:
        if read_meta(cur, location.schema) is not None:
            raise LedgerError(
                f"{location.redacted()} already holds a ledger; import only into an empty schema"
            )
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(src.execute(f"SELECT key, value FROM {META_TABLE}").fetchall())
        migrate(location, created_at_us=int(meta["created_at"]), ledger_id=meta["ledger_id"])
        schema = location.schema
        copied = 0
        with location.connect(autocommit=False) as conn, conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {schema}.{SIGNERS_TABLE} (did, registered_at, signature) "
                "VALUES (%s, %s, %s)",
                src.execute(f"SELECT did, registered_at, signature FROM {SIGNERS_TABLE}"),
            )
            rows = src.execute(f"SELECT {ROW_COLUMNS} FROM {EVENTS_TABLE} ORDER BY position")
            # In the format of a new ledger (4): each row with its tree column, rebuilt from
            # the events — the file's tree, if it has one, is not copied.
            columns = f"{ROW_COLUMNS}, tree"
            with cur.copy(f"COPY {schema}.{EVENTS_TABLE} ({columns}) FROM STDIN") as copy:
                for row in with_tree_column(rows, damaged=NotALedger):
                    copy.write_row(row)
                    copied += 1
            # Checkpoint ids are the server's own: cosignatures follow theirs by the map.
            ids: dict[int, int] = {}
            for old_id, position, text in src.execute(
                f"SELECT id, position, text FROM {CHECKPOINTS_TABLE} ORDER BY id"
            ).fetchall():
                cur.execute(
                    f"INSERT INTO {schema}.{CHECKPOINTS_TABLE} (position, text) VALUES (%s, %s) "
                    "RETURNING id",
                    (position, text),
                )
                ids[old_id] = cur.fetchone()[0]
            tables = {
                r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if COSIGNATURES_TABLE in tables:  # format 2 or 3
                cur.executemany(
                    f"INSERT INTO {schema}.{COSIGNATURES_TABLE} "
                    "(checkpoint_id, witness, cosignature, received_at) VALUES (%s, %s, %s, %s)",
                    [
                        (ids.get(cid, -cid), witness, line, at)
                        for cid, witness, line, at in src.execute(
                            "SELECT checkpoint_id, witness, cosignature, received_at "
                            f"FROM {COSIGNATURES_TABLE} ORDER BY id"
                        )
                    ],
                )
            conn.commit()
    finally:
        src.close()
    return copied
