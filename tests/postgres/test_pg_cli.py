"""The CLI takes a PostgreSQL URL for --ledger, and L2S_LEDGER when --ledger is not given."""

from __future__ import annotations

from pathlib import Path

import psycopg
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
    assert main(["pg-migrate", "--ledger", "postgresql://ops:s3cret@127.0.0.1:1/ledger"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the ledger at postgresql://ops@127.0.0.1:1/ledger" in err
    assert "s3cret" not in err


def test_demo_and_verify_run_on_a_postgresql_ledger(
    pg_location: PostgresLocation,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # where the demo saves the checkpoint of a PostgreSQL ledger
    assert main(["simulate", "--ledger", pg_location.url(), "--sessions", "2"]) == 0
    assert (tmp_path / f"l2-session-simulation-{pg_location.schema}.checkpoint").exists()
    capsys.readouterr()
    monkeypatch.setenv("L2S_LEDGER", pg_location.url())
    assert main(["verify"]) == 0
    assert "ledger verification: OK" in capsys.readouterr().out


def test_pg_import_moves_a_demo_ledger_and_project_catches_up_on_it(
    pg_location: PostgresLocation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sqlite_ledger = tmp_path / "node.sqlite3"
    assert main(["simulate", "--ledger", str(sqlite_ledger), "--sessions", "2"]) == 0
    capsys.readouterr()
    assert main(["pg-import", "--from", str(sqlite_ledger), "--ledger", pg_location.url()]) == 0
    copied = int(capsys.readouterr().out.split()[0])
    assert copied > 0
    assert main(["verify", "--ledger", pg_location.url()]) == 0
    capsys.readouterr()
    view = pg_location.with_schema(pg_location.schema + "_view")
    projection = "l2_session.projections.session_counts:SessionEventCounts"
    args = ["project", "--ledger", pg_location.url(), "--view", view.url(),
            "--projection", projection, "--catch-up", "--batch-size", "50"]  # fmt: skip
    assert main(args) == 0
    assert f"position {copied} head {copied} behind 0" in capsys.readouterr().out
    with psycopg.connect(**view.connect_kwargs()) as conn:
        total = conn.execute(f"SELECT sum(events) FROM {view.schema}.session_event_counts")
        assert total.fetchone() == (copied,)
    # Importing twice into the same schema is refused, naming it.
    assert main(["pg-import", "--from", str(sqlite_ledger), "--ledger", pg_location.url()]) == 2
    assert "already holds a ledger" in capsys.readouterr().err


def test_project_names_a_projection_it_cannot_load(
    pg_location: PostgresLocation, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["project", "--ledger", pg_location.url(), "--view", pg_location.url(),
            "--projection", "no.such.module:Thing"]  # fmt: skip
    assert main(args) == 2
    assert "cannot load projection 'no.such.module:Thing'" in capsys.readouterr().err


def test_the_postgresql_commands_print_json_when_asked(
    pg_location: PostgresLocation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    sqlite_ledger = tmp_path / "node.sqlite3"
    assert main(["simulate", "--ledger", str(sqlite_ledger), "--sessions", "1"]) == 0
    capsys.readouterr()
    assert main(["pg-import", "--from", str(sqlite_ledger), "--ledger", pg_location.url(),
                 "--json"]) == 0  # fmt: skip
    imported = json.loads(capsys.readouterr().out)
    assert imported["events_copied"] > 0 and imported["from"] == str(sqlite_ledger)
    other = pg_location.with_schema(pg_location.schema + "_fresh")
    assert main(["pg-migrate", "--ledger", other.url(), "--json"]) == 0
    migrated = json.loads(capsys.readouterr().out)
    assert migrated["schema_version"] >= 2 and len(migrated["ledger_id"]) == 32
    view = pg_location.with_schema(pg_location.schema + "_view")
    assert main(["project", "--ledger", pg_location.url(), "--view", view.url(), "--projection",
                 "l2_session.projections.session_counts:SessionEventCounts", "--catch-up",
                 "--json"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1] == {**lines[-1], "position": imported["events_copied"], "behind": 0}
