"""The CLI's ledger commands, run as a user runs them (the installed console script)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "l2_session.tools.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_simulate_appends_verifies_and_replays(tmp_path):
    ledger = tmp_path / "demo.sqlite3"
    result = run("simulate", "--ledger", str(ledger))
    assert result.returncode == 0, result.stderr
    assert "replayed every session: identical" in result.stdout
    assert "ledger verification: OK" in result.stdout
    events = sqlite3.connect(ledger).execute("SELECT COUNT(*) FROM ledger_events").fetchone()[0]
    assert events >= 300
    assert f"appended {events} signed events" in result.stdout


def test_verify_exit_codes_say_ok_tampered_or_unusable(tmp_path):
    ledger = tmp_path / "demo.sqlite3"
    assert run("simulate", "--ledger", str(ledger), "--sessions", "2").returncode == 0
    checkpoint = sqlite3.connect(ledger).execute(
        "SELECT text FROM ledger_checkpoints ORDER BY id DESC LIMIT 1").fetchone()[0]  # fmt: skip
    (tmp_path / "cp.txt").write_text(checkpoint, encoding="utf-8")
    assert (
        run("verify", "--ledger", str(ledger), "--checkpoint", str(tmp_path / "cp.txt")).returncode
        == 0
    )

    tampered = tmp_path / "tampered.sqlite3"
    shutil.copy(ledger, tampered)
    db = sqlite3.connect(tampered)
    db.execute("DROP TRIGGER ledger_events_no_update")
    db.execute("UPDATE ledger_events SET timestamp = timestamp + 1 WHERE position = 5")
    db.commit()
    result = run("verify", "--ledger", str(tampered))
    assert result.returncode == 1
    assert "hash_mismatch at position 5" in result.stdout

    missing = run("verify", "--ledger", str(tmp_path / "absent.sqlite3"))
    assert missing.returncode == 2
    assert "absent.sqlite3" in missing.stderr and "Traceback" not in missing.stderr


def test_the_console_script_is_installed():
    script = Path(sys.executable).with_name("l2-session")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "verify" in result.stdout and "demo" in result.stdout
