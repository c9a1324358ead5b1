"""Fixtures for the ledger suite. `ledger_factory` is the one place that says which backend."""

from __future__ import annotations

import inspect
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the pgserver helper
from pgserver import pg_database, pg_location, pg_url

__all__ = ["pg_database", "pg_location", "pg_url"]

LedgerFactory = Callable[..., SessionLedger]
_schemas = itertools.count(1)


@pytest.fixture
def identity() -> NodeIdentity:
    return NodeIdentity.generate()


@pytest.fixture
def storage_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Tests that use the ledger only through its API run on both backends; tests that open the
    # SQLite file themselves (they take `ledger_path`) run on SQLite only. Tests that hand the
    # ledger to child processes take `ledger_location` (a path or a URL) directly.
    if not {"ledger_location", "new_ledger_location"} & set(metafunc.fixturenames):
        return
    own = inspect.signature(metafunc.function).parameters
    backends: list[Any] = ["sqlite"]
    if "ledger_path" not in own:
        backends.append(pytest.param("postgres", marks=pytest.mark.postgres))
    metafunc.parametrize("ledger_backend", backends)


@pytest.fixture
def ledger_location(ledger_backend: str, request: pytest.FixtureRequest) -> str | Path:
    """Where the test's ledger lives: the SQLite file, or a fresh PostgreSQL schema."""
    if ledger_backend == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return Path(request.getfixturevalue("ledger_path"))


@pytest.fixture
def new_ledger_location(
    ledger_backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], str | Path]:
    """Makes a fresh location per call (for property tests that build many ledgers)."""
    made = itertools.count(1)  # files: tmp_path is the test's own
    if ledger_backend == "postgres":
        database = request.getfixturevalue("pg_database")
        # One database for the whole run: schema names must not repeat across tests.
        return lambda: str(database.with_schema(f"prop_{os.getpid()}_{next(_schemas)}").url())
    return lambda: tmp_path / f"ledger-{next(made)}.sqlite3"


@pytest.fixture
def ledger_factory(
    ledger_location: str | Path, identity: NodeIdentity, storage_key: bytes, clock: ManualClock
) -> Iterator[LedgerFactory]:
    """Open (creating on first use) the test's ledger; keyword arguments override defaults."""
    opened: list[SessionLedger] = []

    def open_ledger(**overrides: Any) -> SessionLedger:
        location = overrides.pop("location", ledger_location)
        kwargs: dict[str, Any] = {
            "identity": identity,
            "storage_key": storage_key,
            "clock": clock,
        }
        kwargs.update(overrides)
        ledger = SessionLedger(location, **kwargs)
        opened.append(ledger)
        return ledger

    yield open_ledger
    for ledger in opened:
        ledger.close()
