"""verify()'s row source for a PostgreSQL ledger: the same rows, by position range.

Each verify worker opens its own read-only connection and streams its range with a server-side
cursor, so memory stays flat however large the range. Rows come back as the SQLite reader's do
(integers, text, bytes), and verify.py checks them with the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from l2_session.infrastructure.ledger.chain import ROW_COLUMNS, registration_valid
from l2_session.infrastructure.ledger.pg_schema import check_meta, read_meta
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from l2_session.infrastructure.ledger.schema import (
    CHECKPOINTS_TABLE,
    COSIGNATURES_TABLE,
    EVENTS_TABLE,
    SIGNERS_TABLE,
)
from l2_session.infrastructure.ledger.tree import TREE_TABLE, tree_layout


@contextmanager
def _streamed(url: str, name: str, statement: str, params: Any) -> Iterator[Any]:
    """The rows of ``statement`` (``{schema}`` filled in) through a server-side cursor, on a
    read-only connection of its own: memory stays flat however many rows."""
    location = PostgresLocation.parse(url)
    with location.connect(autocommit=False) as conn:
        conn.read_only = True
        with conn.cursor(name=name) as cur:
            cur.itersize = 5000
            cur.execute(statement.format(schema=location.schema), params)
            yield cur


@contextmanager
def range_rows(url: str, lo: int, hi: int, tree_column: bool = False) -> Iterator[Any]:
    """Rows of ``ROW_COLUMNS`` (and ``tree`` after them if ``tree_column``) with ``lo <=
    position <= hi``, in position order."""
    columns = ROW_COLUMNS + (", tree" if tree_column else "")
    statement = (
        f"SELECT {columns} FROM {{schema}}.{EVENTS_TABLE} "
        "WHERE position BETWEEN %s AND %s ORDER BY position"
    )
    with _streamed(url, "l2s_verify", statement, (lo, hi)) as rows:
        yield rows


@contextmanager
def range_nodes(url: str, first: int, last: int) -> Iterator[Any]:
    """Stored tree rows (node, hash) with keys ``first`` to ``last``, in node order."""
    statement = (
        f"SELECT node, hash FROM {{schema}}.{TREE_TABLE} WHERE node BETWEEN %s AND %s ORDER BY node"
    )
    with _streamed(url, "l2s_verify_tree", statement, (first, last)) as rows:
        yield ((node, bytes(value)) for node, value in rows)


def select_rows(url: str, statement: str, params: Any) -> list[tuple[int, str, bytes]]:
    """Rows of ``statement`` (``{schema}`` filled in) on the ledger at ``url``."""
    location = PostgresLocation.parse(url)
    with location.connect() as conn, conn.cursor() as cur:
        check_meta(location, read_meta(cur, location.schema), reading=True)
        cur.execute(statement.format(schema=location.schema), params)
        return [(int(p), str(t), bytes(v)) for p, t, v in cur.fetchall()]


def tree_and_checkpoints(
    url: str,
) -> tuple[str | None, list[tuple[int, str]], list[tuple[int, int, str, str]]]:
    """(how the ledger stores its tree — ``tree.tree_layout``, None without one —, its stored
    checkpoints as (id, text), the cosignatures of them as (id, checkpoint id, witness,
    line)), oldest first."""
    location = PostgresLocation.parse(url)
    schema = location.schema
    with location.connect() as conn, conn.cursor() as cur:
        meta = read_meta(cur, schema) or {}
        cur.execute(f"SELECT id, text FROM {schema}.{CHECKPOINTS_TABLE} ORDER BY id")
        rows = [(int(i), str(t)) for i, t in cur.fetchall()]
        layout = tree_layout(meta.get("format_version", "1"))
        cosignatures: list[tuple[int, int, str, str]] = []
        if layout is not None:
            cur.execute(
                f"SELECT id, checkpoint_id, witness, cosignature FROM {schema}."
                f"{COSIGNATURES_TABLE} ORDER BY id"
            )
            cosignatures = [(int(i), int(c), str(w), str(x)) for i, c, w, x in cur.fetchall()]
    return layout, rows, cosignatures


def ledger_meta(url: str, step: int) -> tuple[str, frozenset[str], list[int], int | None]:
    """(ledger id, registered signers whose registration verifies, every ``step``-th stored
    position, the last stored position).

    Bounds come from the positions actually stored, as on SQLite: a row moved to a huge or
    negative position must still be read, and arithmetic ranges up to a huge one would never end.
    """
    location = PostgresLocation.parse(url)
    table = f"{location.schema}.{EVENTS_TABLE}"
    with location.connect() as conn, conn.cursor() as cur:
        meta = read_meta(cur, location.schema)
        check_meta(location, meta, reading=True)
        assert meta is not None
        ledger_id = meta["ledger_id"]
        cur.execute(f"SELECT did, registered_at, signature FROM {location.schema}.{SIGNERS_TABLE}")
        registered = frozenset(
            did
            for did, registered_at, signature in cur.fetchall()
            if registration_valid(ledger_id, did, registered_at, bytes(signature))
        )
        cur.execute(
            f"SELECT position FROM (SELECT position, row_number() OVER (ORDER BY position) - 1 "
            f"AS i FROM {table}) numbered WHERE i %% %s = 0 ORDER BY position",
            (step,),
        )
        bounds = [row[0] for row in cur.fetchall()]
        cur.execute(f"SELECT MAX(position) FROM {table}")
        row = cur.fetchone()
    return ledger_id, registered, bounds, None if row is None else row[0]
