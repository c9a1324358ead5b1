"""Where verify() reads a ledger from: a SQLite file or a PostgreSQL schema, by position range.

Both give the same rows (EVENT_COLUMNS, in position order) and the same metadata: the ledger
id, the registered signers whose registration verifies, and the position ranges to hand to the
workers — bounded by positions actually stored, so a row moved far past the head, or before
position 1, is still read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from l2_session.infrastructure.ledger.chain import registration_valid
from l2_session.infrastructure.ledger.pg_url import is_postgres_url
from l2_session.infrastructure.ledger.schema import (
    CHECKPOINTS_TABLE,
    COSIGNATURES_TABLE,
    EVENT_COLUMNS,
    EVENTS_TABLE,
    META_TABLE,
    SIGNERS_TABLE,
    check_sqlite_ledger_file,
)
from l2_session.infrastructure.ledger.tree import LEVELS, TREE_TABLE, tree_layout
from l2_session.infrastructure.ledger.verify_report import Problem, ProblemKind
from l2_session.infrastructure.ledger.verify_tree import tile_bound

# A stored row is at least this many bytes (three hashes and a signature alone are 160).
MIN_ROW_BYTES = 100


def connect_ro(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.text_factory = bytes  # tampered text must not crash the reader
    return conn


@contextmanager
def _sqlite_rows(path: str, statement: str, params: Any) -> Iterator[Iterable[Any]]:
    conn = connect_ro(path)
    try:
        yield conn.execute(statement, params)
    finally:
        conn.close()


@contextmanager
def range_rows(source: str, lo: int, hi: int, tree_column: bool = False) -> Iterator[Iterable[Any]]:
    """The rows (EVENT_COLUMNS, and the column ``tree`` after them if ``tree_column``: format
    4) with ``lo <= position <= hi`` of either backend's ledger."""
    if is_postgres_url(source):
        from l2_session.infrastructure.ledger.pg_verify import range_rows as pg_range_rows

        with pg_range_rows(source, lo, hi, tree_column) as rows:
            yield rows
        return
    columns = ", ".join(EVENT_COLUMNS) + (", tree" if tree_column else "")
    statement = (
        f"SELECT {columns} FROM {EVENTS_TABLE} WHERE position BETWEEN ? AND ? ORDER BY position"
    )
    with _sqlite_rows(source, statement, (lo, hi)) as rows:
        yield rows


@contextmanager
def range_nodes(
    source: str, lo: int, hi: int, layout: str | None
) -> Iterator[Iterable[Any] | None]:
    """The ledger_tree rows (node, hash) of positions ``lo`` to ``hi`` — in format 3 up to the
    tile holding ``hi`` (``tile_bound``) —, in node order, that is (position, level) order;
    None for a ledger without a stored tree, and in format 4, whose tree comes with the
    events (``range_rows``)."""
    if layout is None or layout == "inline":
        yield None
        return
    bounds = (LEVELS * lo, tile_bound(hi) if layout == "tiles" else LEVELS * hi + LEVELS - 1)
    if is_postgres_url(source):
        from l2_session.infrastructure.ledger.pg_verify import range_nodes as pg_range_nodes

        with pg_range_nodes(source, *bounds) as rows:
            yield rows
        return
    statement = f"SELECT node, hash FROM {TREE_TABLE} WHERE node BETWEEN ? AND ? ORDER BY node"
    with _sqlite_rows(source, statement, bounds) as rows:
        yield rows


def stored_tree_and_checkpoints(
    source: str,
) -> tuple[str | None, list[tuple[int, str]], list[tuple[int, int, str, str]]]:
    """(how the ledger stores its tree — ``tree.tree_layout``, None without one: format 1 —, the
    checkpoints stored in it as (id, text), the witnesses' cosignatures of them as (id,
    checkpoint id, witness, line))."""
    if is_postgres_url(source):
        from l2_session.infrastructure.ledger.pg_verify import tree_and_checkpoints

        return tree_and_checkpoints(source)
    conn = connect_ro(source)
    try:
        (version,) = conn.execute(
            f"SELECT value FROM {META_TABLE} WHERE key='format_version'"
        ).fetchone() or (b"1",)
        rows = conn.execute(f"SELECT id, text FROM {CHECKPOINTS_TABLE} ORDER BY id").fetchall()
        cosignatures = (
            conn.execute(
                f"SELECT id, checkpoint_id, witness, cosignature FROM {COSIGNATURES_TABLE} "
                "ORDER BY id"
            ).fetchall()
            if version != b"1"
            else []
        )
    finally:
        conn.close()
    text = [(i, t.decode(errors="replace")) for i, t in rows]
    return (
        tree_layout(bytes(version).decode(errors="replace")),
        text,
        [
            (i, c, w.decode(errors="replace"), x.decode(errors="replace"))
            for i, c, w, x in cosignatures
        ],
    )


def witnessed_events(source: str, topics: tuple[str, ...]) -> list[tuple[int, str, bytes]]:
    """(position, topic, payload) of the events of ``topics`` in the ledger at ``source``
    (another node's ledger, read for what it witnessed of this one)."""
    marks = ",".join(["%s" if is_postgres_url(source) else "?"] * len(topics))
    if is_postgres_url(source):
        from l2_session.infrastructure.ledger.pg_verify import select_rows

        return select_rows(
            source,
            f"SELECT position, topic, payload FROM {{schema}}.{EVENTS_TABLE} "
            f"WHERE topic IN ({marks}) ORDER BY position",
            topics,
        )
    check_sqlite_ledger_file(Path(source), create=False)
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            f"SELECT position, topic, payload FROM {EVENTS_TABLE} WHERE topic IN ({marks}) "
            "ORDER BY position",
            topics,
        ).fetchall()
    finally:
        conn.close()
    return [(int(p), str(t), bytes(v)) for p, t, v in rows]


def read_errors(source: str) -> tuple[type[BaseException], ...]:
    """What reading ``source`` raises when its database is damaged or unreachable."""
    if not is_postgres_url(source):
        return (sqlite3.DatabaseError,)
    import psycopg  # only for PostgreSQL ledgers: the SQLite path stays light

    return (psycopg.Error,)


def sqlite_integrity_problems(path: str) -> list[Problem]:
    """SQLite's own structural check of the file (``PRAGMA quick_check``). It reads every page,
    so verify() runs it beside the workers rather than before them."""
    conn = connect_ro(path)
    try:
        found = conn.execute("PRAGMA quick_check").fetchone()[0]
        # text_factory is bytes (connect_ro); SQLite's report is its own ASCII, one finding
        # per line.
        integrity = found.decode(errors="replace") if isinstance(found, bytes) else str(found)
    except sqlite3.DatabaseError as e:
        integrity = str(e)
    finally:
        conn.close()
    if integrity == "ok":
        return []
    findings = "; ".join(line for line in integrity.splitlines() if line.strip())
    return [Problem(ProblemKind.DATABASE_CORRUPT, None, None, f"SQLite quick_check: {findings}")]


def sqlite_ledger_meta(path: str, step: int) -> tuple[str, frozenset[str], list[int], int | None]:
    """(ledger id, registered signers whose registration verifies, every ``step``-th stored
    position, the last stored position)."""
    conn = connect_ro(path)
    try:
        row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key='ledger_id'").fetchone()
        ledger_id = row[0].decode() if row else ""
        signers = set()
        rows = conn.execute(f"SELECT did, registered_at, signature FROM {SIGNERS_TABLE}")
        for did, registered_at, signature in rows:
            did_s = did.decode(errors="replace")
            if isinstance(signature, bytes) and registration_valid(
                ledger_id, did_s, registered_at, signature
            ):
                signers.add(did_s)
        bounds, last = _sqlite_bounds(conn, step)
    finally:
        conn.close()
    return ledger_id, frozenset(signers), bounds, last


def _sqlite_bounds(conn: sqlite3.Connection, step: int) -> tuple[list[int], int | None]:
    """Every ``step``-th position, and the last. Positions are the table's rowid, so their
    minimum and maximum cost a lookup each. When the span between them is no more than the file
    could hold (an honest ledger has no gaps), bounds are arithmetic and nothing is scanned;
    otherwise (an attacker moved a row far past the head, say) the stored positions are
    scanned, so that the ranges stay few and still cover every row. If the positions cannot be
    read at all, one range covers every possible position: the worker reading it names the
    damage."""
    try:
        (first,) = conn.execute(f"SELECT MIN(position) FROM {EVENTS_TABLE}").fetchone()
        (last,) = conn.execute(f"SELECT MAX(position) FROM {EVENTS_TABLE}").fetchone()
        if first is None:
            return [], None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        if last - first < pages * page_size // MIN_ROW_BYTES:
            return list(range(first, last + 1, step)), last
        positions = conn.execute(f"SELECT position FROM {EVENTS_TABLE} ORDER BY position")
        return [p for i, (p,) in enumerate(positions) if i % step == 0], last
    except sqlite3.DatabaseError:
        return [-(2**63)], 2**63 - 1


def pg_ledger_meta(url: str, step: int) -> tuple[str, frozenset[str], list[int], int | None]:
    from l2_session.infrastructure.ledger.pg_verify import ledger_meta

    return ledger_meta(url, step)
