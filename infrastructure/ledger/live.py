"""Which sessions a node left live: the one question a restarted node asks of its ledger
before anything else (decision 16 in docs/spec-decisions.md), answered without replaying it.

A session's newest event says whether it is closed (``CleanedUp``, ``Closed``); its first,
that it is a session and which node opened it (``signer``: several nodes may share a
PostgreSQL ledger). The statement walks the distinct session ids on the (session_id, version)
index, one seek each (a loose index scan, as a recursive query), and reads each session's
first and newest event by the same index: its cost grows with the number of sessions the
ledger holds, not with their length, and no event is decoded. The domain names the topics
(domain/manager/recovery.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID


def live_sessions_statement(
    table: str, mark: str, final_topics: Sequence[str], *, by_signer: bool
) -> str:
    """The SELECT of ``session_id`` for the live sessions; its parameters are
    ``live_sessions_parameters``'. ``mark`` is the backend's placeholder (``?`` or ``%s``)."""
    finals = ",".join([mark] * len(final_topics))
    signer = f" AND first.signer = {mark}" if by_signer else ""
    return (
        "WITH RECURSIVE ids(session_id) AS ("
        f"SELECT MIN(session_id) FROM {table} "
        "UNION ALL "
        f"SELECT (SELECT MIN(e.session_id) FROM {table} AS e WHERE e.session_id > ids.session_id) "
        "FROM ids WHERE ids.session_id IS NOT NULL) "
        "SELECT ids.session_id FROM ids "
        f"JOIN {table} AS first ON first.session_id = ids.session_id AND first.version = 1 "
        f"WHERE first.topic = {mark}{signer} AND ("
        f"SELECT newest.topic FROM {table} AS newest WHERE newest.session_id = ids.session_id "
        f"ORDER BY newest.version DESC LIMIT 1) NOT IN ({finals})"
    )


def live_sessions_parameters(
    opened_topic: str, final_topics: Sequence[str], signer: str | None
) -> list[Any]:
    return [opened_topic, *([] if signer is None else [signer]), *final_topics]


def session_ids(rows: Sequence[Sequence[Any]]) -> list[UUID]:
    return [UUID(hex=row[0]) for row in rows]
