"""A small projection: how many events each session has, and its last version.

Applied twice, an event would make a session's count exceed its last version — which is what
the exactly-once tests and the lag benchmark check.
"""

from __future__ import annotations

from typing import Any


class SessionEventCounts:
    name = "session_event_counts"

    def create_statements(self, schema: str) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {schema}.session_event_counts "
            "(session_id text PRIMARY KEY, events bigint NOT NULL, last_version bigint NOT NULL)"
        ]

    def apply(self, cur: Any, schema: str, event: Any, position: int) -> None:
        cur.execute(
            f"INSERT INTO {schema}.session_event_counts (session_id, events, last_version) "
            "VALUES (%s, 1, %s) ON CONFLICT (session_id) DO UPDATE SET "
            "events = session_event_counts.events + 1, last_version = EXCLUDED.last_version",
            (event.originator_id.hex, event.originator_version),
        )
