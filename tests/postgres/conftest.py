"""Fixtures for the PostgreSQL tests: one database per test run, one schema (ledger) per test."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the pgserver helper
import pgserver
from l2_session.infrastructure.ledger.pg_url import PostgresLocation

_schemas = itertools.count(1)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PostgresLocation]:
    admin = pgserver.require_server()
    database = pgserver.create_database(admin)
    yield database
    pgserver.drop_database(admin, database)


@pytest.fixture
def pg_location(pg_database: PostgresLocation) -> PostgresLocation:
    """A fresh, empty schema for this test's ledger (owner's credentials)."""
    return pg_database.with_schema(f"ledger_{next(_schemas)}")


@pytest.fixture
def pg_url(pg_location: PostgresLocation) -> str:
    return pg_location.url()
