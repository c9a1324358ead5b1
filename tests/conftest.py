"""Shared fixtures. ``session_ledger_factory`` is the one place that says which ledger the
session tests run on (the signed ``SessionLedger``, over a SQLite file in tmp_path)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def session_ledger_factory(
    tmp_path: Path, manual_clock: ManualClock
) -> Iterator[Callable[..., Any]]:
    """``open_ledger(name)`` opens (creating on first use) the ledger file ``name``; opening
    the same name again is what a restarted process does."""
    identity = NodeIdentity.generate()
    storage_key = os.urandom(32)
    opened: list[SessionLedger] = []

    def open_ledger(name: str = "node") -> SessionLedger:
        ledger = SessionLedger(
            tmp_path / f"{name}.sqlite3",
            identity=identity,
            storage_key=storage_key,
            clock=manual_clock,
            # A process crash loses nothing at "normal" (WAL); only power loss could, and
            # the tests do not simulate that. "full" fsyncs each save and is ~10x slower.
            durability="normal",
        )
        opened.append(ledger)
        return ledger

    yield open_ledger
    for ledger in opened:
        ledger.close()
