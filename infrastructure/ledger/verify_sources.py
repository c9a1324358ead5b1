"""Where verify() reads a ledger from: a SQLite file or a PostgreSQL schema, by position range.

Both give the same rows (EVENT_COLUMNS, in position order) and the same metadata: the ledger
id, the registered signers whose registration verifies, and the position ranges to hand to the
workers — bounded by positions actually stored, so a row moved far past the head, or before
position 1, is still read.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..identity import verify_did_signature
from .format import lp
from .pg_url import is_postgres_url
from .recorder import SIGNER_DOMAIN
from .schema import EVENT_COLUMNS, EVENTS_TABLE, META_TABLE, SIGNERS_TABLE
from .verify_report import Problem, ProblemKind


def connect_ro(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.text_factory = bytes  # tampered text must not crash the reader
    return conn


@contextmanager
def range_rows(source: str, lo: int, hi: int) -> Iterator[Iterable[Any]]:
    """The rows (EVENT_COLUMNS) with ``lo <= position <= hi`` of either backend's ledger."""
    if is_postgres_url(source):
        from .pg_verify import range_rows as pg_range_rows

        with pg_range_rows(source, lo, hi) as rows:
            yield rows
        return
    conn = connect_ro(source)
    try:
        yield conn.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM {EVENTS_TABLE} "
            "WHERE position BETWEEN ? AND ? ORDER BY position",
            (lo, hi),
        )
    finally:
        conn.close()


def read_errors(source: str) -> tuple[type[BaseException], ...]:
    """What reading ``source`` raises when its database is damaged or unreachable."""
    if not is_postgres_url(source):
        return (sqlite3.DatabaseError,)
    import psycopg  # only for PostgreSQL ledgers: the SQLite path stays light

    return (psycopg.Error,)


def sqlite_ledger_meta(
    path: str, chunk: int
) -> tuple[str, frozenset[str], list[tuple[int, int]], list[Problem]]:
    problems: list[Problem] = []
    conn = connect_ro(path)
    try:
        integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
        if integrity not in (b"ok", "ok"):
            problems.append(
                Problem(
                    ProblemKind.DATABASE_CORRUPT, None, None, f"SQLite quick_check: {integrity!r}"
                )
            )
        row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key='ledger_id'").fetchone()
        ledger_id = row[0].decode() if row else ""
        signers = set()
        for did, signature in conn.execute(f"SELECT did, signature FROM {SIGNERS_TABLE}"):
            did_s = did.decode(errors="replace")
            statement = SIGNER_DOMAIN + lp(ledger_id.encode()) + lp(did_s.encode())
            if verify_did_signature(did_s, bytes(signature), statement):
                signers.add(did_s)
        # Chunk boundaries from the positions actually stored: an attacker may have moved a row
        # to a huge position, and arithmetic ranges up to it would be endless.
        positions = conn.execute(f"SELECT position FROM {EVENTS_TABLE} ORDER BY position")
        bounds = [p for i, (p,) in enumerate(positions) if i % chunk == 0]
        last = conn.execute(f"SELECT MAX(position) FROM {EVENTS_TABLE}").fetchone()[0]
    finally:
        conn.close()
    ranges = [(a, b - 1) for a, b in itertools.pairwise(bounds)]
    if bounds:
        ranges.append((bounds[-1], last))
    return ledger_id, frozenset(signers), ranges, problems


def pg_ledger_meta(
    url: str, chunk: int
) -> tuple[str, frozenset[str], list[tuple[int, int]], list[Problem]]:
    from .pg_verify import ledger_meta

    return (*ledger_meta(url, chunk), [])
