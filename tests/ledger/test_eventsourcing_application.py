"""eventsourcing's own application test cases, on the ledger's recorders (both backends).

eventsourcing runs ``ApplicationTestCase`` and ``ExampleApplicationTestCase`` once per
persistence module; here the module is es_persistence.py, which gives a plain eventsourcing
``Application`` the ledger's signed recorders. The tests run unchanged: saving returns the
notification ids, concurrent saves of one aggregate conflict cleanly (100 threads), cached
aggregates fast-forward, snapshots are taken and used.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path
from unittest import TestCase, mock

import pytest
from eventsourcing.tests import application as contract
from pgserver import ThrowAwayDatabase

_names = itertools.count(1)


class SignedLedgerSQLite(TestCase):
    """eventsourcing's persistence settings for a ledger file per test (es_persistence.py)."""

    expected_factory_topic = "es_persistence:SignedLedgerSQLiteFactory"

    def setUp(self) -> None:
        super().setUp()
        self.directory = Path(tempfile.mkdtemp(prefix="l2s-es-app-"))
        self.environment = mock.patch.dict(os.environ, self.persistence_settings())
        self.environment.start()

    def persistence_settings(self) -> dict[str, str]:
        return {
            "PERSISTENCE_MODULE": self.expected_factory_topic,
            "SQLITE_DBNAME": str(self.directory / "ledger.sqlite3"),
        }

    def tearDown(self) -> None:
        self.environment.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        super().tearDown()


@pytest.mark.postgres
class SignedLedgerPostgres(ThrowAwayDatabase, SignedLedgerSQLite):
    """The same on a fresh schema of one throw-away database per class."""

    expected_factory_topic = "es_persistence:SignedLedgerPostgresFactory"

    def persistence_settings(self) -> dict[str, str]:
        database = self.database
        return {
            "PERSISTENCE_MODULE": self.expected_factory_topic,
            "POSTGRES_DBNAME": database.dbname,
            "POSTGRES_HOST": database.host,
            "POSTGRES_PORT": str(database.port),
            "POSTGRES_USER": database.user,
            "POSTGRES_PASSWORD": database.password,
            "POSTGRES_SCHEMA": f"es_app_{os.getpid()}_{next(_names)}",
        }


class TestApplicationOnSQLiteLedger(SignedLedgerSQLite, contract.ApplicationTestCase):
    pass


class TestExampleApplicationOnSQLiteLedger(SignedLedgerSQLite, contract.ExampleApplicationTestCase):
    pass


class TestApplicationOnPostgresLedger(SignedLedgerPostgres, contract.ApplicationTestCase):
    pass


class TestExampleApplicationOnPostgresLedger(
    SignedLedgerPostgres, contract.ExampleApplicationTestCase
):
    pass
