"""The PostgreSQL server the postgres tests run against, and a throw-away database on it.

The server is ``L2S_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
an administrator's connection). When it does not answer, the tests skip with the reason — unless
``L2S_REQUIRE_POSTGRES=1`` (CI sets it), which turns the skip into a failure.
Each test run gets its own database, named uniquely and dropped at the end, so runs never collide.
The ledger schema's node role (``l2s_node``, cluster-wide like every role) is left in place: other
ledgers on the server may use it, and it holds no privileges once the test database is gone.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from unittest import TestCase

import psycopg
import pytest
from l2_session.infrastructure.ledger.pg_url import PostgresLocation, is_postgres_url, redact

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_location() -> PostgresLocation:
    return PostgresLocation.parse(os.environ.get("L2S_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL))


def require_server() -> PostgresLocation:
    """The admin location if the server answers; otherwise skip (or fail when required)."""
    location = admin_location()
    try:
        with psycopg.connect(connect_timeout=3, **location.connect_kwargs()) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        message = (
            f"PostgreSQL is not reachable at {redact(location.url())}: {str(e).strip()} — "
            "start it or point L2S_TEST_POSTGRES_URL at one"
        )
        if os.environ.get("L2S_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{message} (L2S_REQUIRE_POSTGRES=1: these tests must run)", pytrace=False)
        pytest.skip(message)
    return location


def create_database(admin: PostgresLocation) -> PostgresLocation:
    name = f"l2s_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return PostgresLocation(
        admin.host, admin.port, name, admin.user, admin.password, "public", admin.options
    )


def drop_database(admin: PostgresLocation, database: PostgresLocation) -> None:
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database.dbname} WITH (FORCE)")


def create_login_role(admin: PostgresLocation, member_of: str) -> str:
    """A login role in ``member_of`` (trust or PGPASSWORD authentication, as the server has it)."""
    name = f"l2s_test_login_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE {member_of}")
    return name


def drop_role(admin: PostgresLocation, name: str) -> None:
    with psycopg.connect(autocommit=True, **admin.connect_kwargs()) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {name}")


# -- fixtures: imported by the conftests of tests/postgres and tests/ledger -----------------
_schemas = itertools.count(1)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PostgresLocation]:
    admin = require_server()
    database = create_database(admin)
    yield database
    drop_database(admin, database)


@pytest.fixture
def pg_location(pg_database: PostgresLocation) -> PostgresLocation:
    """A fresh, empty schema for this test's ledger (owner's credentials)."""
    return pg_database.with_schema(f"ledger_{next(_schemas)}")


@pytest.fixture
def pg_url(pg_location: PostgresLocation) -> str:
    return pg_location.url()


class ThrowAwayDatabase(TestCase):
    """For unittest cases: one throw-away database for the class (``cls.database``), made when
    the class starts and dropped when it ends; skipped (or failed, when required) as above."""

    database: ClassVar[PostgresLocation]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        admin = require_server()
        cls.database = create_database(admin)
        cls.addClassCleanup(drop_database, admin, cls.database)


class _PostgresRaw:
    """A psycopg connection that takes sqlite3-style ``?`` placeholders, inside the ledger's
    schema: lets a test read or alter the stored rows the same way on both backends."""

    def __init__(self, location: PostgresLocation) -> None:
        self._conn = psycopg.connect(**location.connect_kwargs())
        self._conn.execute(f"SET search_path TO {location.schema}")

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), params)

    def commit(self) -> None:
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()


def open_raw(location: str | Path) -> Any:
    """A raw DB-API connection to the ledger at ``location`` (SQLite file or PostgreSQL URL)."""
    if is_postgres_url(location):
        return _PostgresRaw(PostgresLocation.parse(location))
    return sqlite3.connect(location)
