"""Fixtures of the CLI tests: small demo ledgers (made once by the CLI, copied per test), and the
PostgreSQL fixtures for the commands that take a postgresql:// URL."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the pgserver helper
from clirun import DemoLedger, run
from pgserver import pg_database, pg_location, pg_url

__all__ = ["pg_database", "pg_location", "pg_url"]


def _copy(source: Path, target: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


@pytest.fixture(scope="session")
def demo_ledger_files(tmp_path_factory: pytest.TempPathFactory) -> list[DemoLedger]:
    made = []
    for name in ("a", "b"):
        folder = tmp_path_factory.mktemp(f"demo_{name}")
        path = folder / "ledger.sqlite3"
        result = run("simulate", "--ledger", str(path), "--sessions", "1")
        assert result.returncode == 0, result.stderr
        with sqlite3.connect(path) as db:
            (text,) = db.execute(
                "SELECT text FROM ledger_checkpoints ORDER BY id DESC LIMIT 1"
            ).fetchone()
        db.close()
        checkpoint = folder / "checkpoint.txt"
        checkpoint.write_text(text, encoding="utf-8")
        made.append(DemoLedger(path, checkpoint))
    return made


def _copy_of(ledger: DemoLedger, folder: Path) -> DemoLedger:
    folder.mkdir()
    copy = DemoLedger(folder / "ledger.sqlite3", folder / "checkpoint.txt")
    _copy(ledger.path, copy.path)
    copy.checkpoint.write_bytes(ledger.checkpoint.read_bytes())
    return copy


@pytest.fixture
def ledger(demo_ledger_files: list[DemoLedger], tmp_path: Path) -> DemoLedger:
    """A one-session demo ledger of this test's own, and its checkpoint file."""
    return _copy_of(demo_ledger_files[0], tmp_path / "a")


@pytest.fixture
def other_ledger(demo_ledger_files: list[DemoLedger], tmp_path: Path) -> DemoLedger:
    """Another demo ledger (another ledger id, another signer)."""
    return _copy_of(demo_ledger_files[1], tmp_path / "b")
