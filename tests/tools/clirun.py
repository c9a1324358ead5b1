"""Running ``l2-session`` as a user runs it (a subprocess), and what every failure must look like."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CLI = [sys.executable, "-m", "l2_session.tools.cli"]


@dataclass(frozen=True)
class DemoLedger:
    path: Path
    checkpoint: Path  # its latest checkpoint's text, as a file


def run(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "L2S_LEDGER"}  # no ledger by accident
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def refused(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Assert the command failed with ``code`` and one line on stderr holding every fragment
    (and no traceback); return that line."""
    line = result.stderr.rstrip("\n")
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert line and "\n" not in line, f"expected one line on stderr, got:\n{result.stderr}"
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def corrupt_page(ledger: Path, name: str) -> None:
    """Overwrite the page header of the table or index ``name`` (as a disk fault would)."""
    with sqlite3.connect(ledger) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (name,)).fetchone()
    db.close()
    with open(ledger, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 12)
