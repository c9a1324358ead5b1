"""The CLI takes a PostgreSQL URL for --ledger, and L2S_LEDGER when --ledger is not given."""

from __future__ import annotations

import pytest
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from l2_session.tools.cli import main

pytestmark = pytest.mark.postgres


def test_pg_migrate_takes_the_ledger_from_l2s_ledger(
    pg_location: PostgresLocation,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("L2S_LEDGER", pg_location.url())
    assert main(["pg-migrate"]) == 0
    ledger = SessionLedger(pg_location.url(), create=False)  # exists now, read-only
    assert ledger.ledger_id in capsys.readouterr().out
    ledger.close()


def test_pg_migrate_names_an_unreachable_server_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("L2S_LEDGER", raising=False)
    assert main(["pg-migrate", "--ledger", "postgresql://ops:s3cret@127.0.0.1:1/ledger"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to the ledger at postgresql://ops@127.0.0.1:1/ledger" in err
    assert "s3cret" not in err


def test_demo_and_verify_run_on_a_postgresql_ledger(
    pg_location: PostgresLocation,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--ledger", pg_location.url(), "--sessions", "2"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("L2S_LEDGER", pg_location.url())
    assert main(["verify"]) == 0
    assert "ledger verification: OK" in capsys.readouterr().out
