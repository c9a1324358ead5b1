"""The README's library example runs as printed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import verify
from l2_session.projections.history import LedgerHistory

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_runs(tmp_path):
    """The two-node example, run exactly as printed, in a process of its own: the message
    arrives, and both ledgers it leaves verify and record it (sent by alice, delivered to
    bob: replayed, bob's session expects message 2 next)."""
    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert code is not None
    (tmp_path / "example.py").write_text(code.group(1))
    run = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello, bob - over quic\n"
    for name in ("alice", "bob"):
        ledger = SessionLedger(tmp_path / f"{name}.sqlite3", create=False)
        try:
            assert verify(ledger).ok
            states = [s.summary() for s in LedgerHistory(ledger).states_at()]
        finally:
            ledger.close()
        (session,) = [s for s in states if s["kind"] == "session"]
        assert session["state"] == "established"
        queue = session["queue"]
        if name == "alice":
            # Its acknowledgement may still be on its way when alice closes (delayed ack):
            # a resumption resends it, and bob's ledger drops the duplicate.
            assert (session["role"], queue["next_seq"]) == ("initiator", 2)
        else:
            assert (session["role"], queue["next_expected_seq"]) == ("responder", 2)


def test_readme_audit_walkthrough_runs_as_printed(tmp_path):
    """The README's shell block of audit commands, run line by line after ``make demo``'s
    own command, from a copy of the project root's layout (.venv/bin, tools/)."""
    block = re.search(r"```sh\n(\.venv/bin/l2-session audit verify.*?)```", README.read_text(
        encoding="utf-8"), re.DOTALL)  # fmt: skip
    assert block is not None
    root = README.parent
    (tmp_path / ".venv").symlink_to(root / ".venv")
    (tmp_path / "tools").symlink_to(root / "tools")
    demo = run_line(tmp_path, ".venv/bin/l2-session demo --dir .demo")  # as make demo does
    assert demo.returncode == 0, demo.stderr
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    for line in lines:
        result = run_line(tmp_path, line)
        assert result.returncode == 0, (line, result.stdout, result.stderr)
    assert "bundle verification: OK" in result.stdout
    assert (tmp_path / ".demo" / "timeline.html").read_text().startswith("<!DOCTYPE html>")


def run_line(cwd, line):
    words = shlex.split(line)
    if words[0] == "python3":
        words[0] = sys.executable  # the venv's python: it has cryptography and blake3
    return subprocess.run(
        words,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "L2S_LEDGER"},
    )
