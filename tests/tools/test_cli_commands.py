"""Every command given wrong input: one line naming what is wrong, the documented exit code
(2: usage or unreadable input, 1: a ledger that is not intact, 3: a bug), a traceback only
with --debug; and --version, --help's exit codes."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from clirun import DemoLedger, corrupt_page, refused, run
from l2_session.infrastructure.ledger.pg_schema import migrate, read_meta
from l2_session.infrastructure.ledger.pg_url import PostgresLocation

CLOSED = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens on port 1
PROJECTION = "l2_session.projections.session_counts:SessionEventCounts"


def test_version_is_the_installed_package_s():
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"l2-session {importlib.metadata.version('l2-session')}"


def test_help_documents_the_exit_codes():
    out = run("--help").stdout
    for code in ("0 ", "1 ", "2 ", "3 "):
        assert f"\n  {code}" in out, out
    assert "--debug" in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((), "COMMAND"),
        (("nosuchcommand",), "nosuchcommand"),
        (("diagram", "extra"), "extra"),
        (("verify",), "--ledger"),
        (("pg-import", "--ledger", CLOSED), "--from"),
        (("project",), "--view"),
    ],
)
def test_usage_errors_are_one_line(args: tuple[str, ...], fragment: str):
    refused(run(*args), 2, fragment, "--help")


@pytest.mark.parametrize(
    "option, value",
    [("--batch-size", "0"), ("--batch-size", "-5"), ("--poll-interval", "-1"),
     ("--poll-interval", "0"), ("--poll-interval", "nan")],
)  # fmt: skip
def test_project_numbers_must_be_positive(option: str, value: str):
    args = ["project", "--ledger", CLOSED, "--view", CLOSED + "?schema=view",
            "--projection", PROJECTION, option, value]  # fmt: skip
    refused(run(*args), 2, option, value)


def test_project_refuses_a_view_in_the_ledger_s_own_schema():
    url = "postgresql://postgres@127.0.0.1:1/postgres?schema=ledger"
    args = ["project", "--ledger", url, "--view", url, "--projection", PROJECTION]
    refused(run(*args), 2, "--view", "schema")


@pytest.mark.parametrize("command", ["pg-migrate", "pg-import", "project"])
def test_pg_commands_name_an_unreachable_server_on_one_line(command: str, ledger: DemoLedger):
    args = {
        "pg-migrate": ["pg-migrate", "--ledger", CLOSED],
        "pg-import": ["pg-import", "--from", str(ledger.path), "--ledger", CLOSED],
        "project": ["project", "--ledger", CLOSED, "--view", CLOSED + "?schema=view",
                    "--projection", PROJECTION, "--catch-up"],
    }[command]  # fmt: skip
    refused(run(*args), 2, "cannot connect", "127.0.0.1:1")


@pytest.mark.parametrize("value", ["ledger.sqlite3", "postgresql://", "mysql://x@h/db"])
def test_pg_migrate_wants_a_postgresql_url(value: str):
    refused(run("pg-migrate", "--ledger", value), 2, "PostgreSQL URL")


@pytest.mark.parametrize("what", ["missing", "directory", "text"])
def test_pg_import_names_a_source_that_is_not_a_ledger(tmp_path: Path, what: str):
    source = tmp_path / "source"
    if what == "directory":
        source.mkdir()
    elif what == "text":
        source.write_text("hello\n", encoding="utf-8")
    refused(run("pg-import", "--from", str(source), "--ledger", CLOSED), 2, str(source))


def test_pg_import_refuses_a_damaged_source_before_touching_the_target(ledger: DemoLedger):
    corrupt_page(ledger.path, "ledger_signers")
    result = run("pg-import", "--from", str(ledger.path), "--ledger", CLOSED)
    refused(result, 1, str(ledger.path), "damaged")


@pytest.mark.postgres
def test_pg_import_of_a_damaged_source_leaves_no_half_ledger(
    ledger: DemoLedger, pg_location: PostgresLocation
):
    corrupt_page(ledger.path, "ledger_signers")
    result = run("pg-import", "--from", str(ledger.path), "--ledger", pg_location.url())
    refused(result, 1, str(ledger.path))
    with psycopg.connect(**pg_location.connect_kwargs()) as conn, conn.cursor() as cur:
        assert read_meta(cur, pg_location.schema) is None


@pytest.mark.postgres
@pytest.mark.parametrize("projection", ["os:getcwd", "os:sep", "builtins:dict"])
def test_project_names_something_that_is_not_a_projection(
    ledger: DemoLedger, pg_location: PostgresLocation, projection: str
):
    args = ["project", "--ledger", str(ledger.path), "--view", pg_location.url(),
            "--projection", projection, "--catch-up"]  # fmt: skip
    refused(run(*args), 2, projection, "projection")


@pytest.mark.postgres
def test_demo_refuses_a_postgresql_schema_that_holds_a_ledger(
    pg_location: PostgresLocation, tmp_path: Path
):
    url = pg_location.url()
    first = run("simulate", "--ledger", url, "--sessions", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    with psycopg.connect(**pg_location.connect_kwargs()) as conn:
        count = f"SELECT count(*) FROM {pg_location.schema}.ledger_events"
        before = conn.execute(count).fetchone()
        again = run("simulate", "--ledger", url, "--sessions", "1", "--save-checkpoint",
                    str(tmp_path / "again.checkpoint"))  # fmt: skip
        refused(again, 2, pg_location.redacted(), "already")
        assert conn.execute(count).fetchone() == before


@pytest.mark.postgres
def test_verify_names_a_postgresql_ledger_schema_missing_its_tables(pg_location: PostgresLocation):
    migrate(pg_location, created_at_us=1_767_225_600_000_000)
    with psycopg.connect(autocommit=True, **pg_location.connect_kwargs()) as conn:
        conn.execute(f"DROP TABLE {pg_location.schema}.ledger_signers")
    result = run("verify", "--ledger", pg_location.url())
    refused(result, 1, "ledger_signers", "does not exist")
    assert "LINE 1" not in result.stderr


# -- the one place errors become lines: a bug, and --debug ---------------------------------
BUGGY = (
    "import sys; from l2_session.domain.session import diagram; from l2_session.tools import cli\n"
    "def broken(): raise RuntimeError('bug \\x1b[2J here')\n"
    "diagram.render_mermaid = broken\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


def test_an_unexpected_error_is_one_line_asking_for_debug():
    result = subprocess.run([sys.executable, "-c", BUGGY, "diagram"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    line = refused(result, 3, "internal error", "RuntimeError", "--debug")
    assert "\\x1b[2J" in line


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path):
    buggy = subprocess.run([sys.executable, "-c", BUGGY, "diagram", "--debug"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert buggy.returncode == 3
    assert "Traceback" in buggy.stderr and "RuntimeError" in buggy.stderr
    missing = run("--debug", "verify", "--ledger", str(tmp_path / "absent.sqlite3"))
    assert missing.returncode == 2
    assert "Traceback" in missing.stderr and "LedgerNotFound" in missing.stderr
    assert missing.stderr.rstrip().splitlines()[-1].startswith("l2-session verify: ")
