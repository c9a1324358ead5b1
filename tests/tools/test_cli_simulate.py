"""``l2-session simulate`` only ever creates a new ledger, dates it when it ran, and hands over its
checkpoint as ``verify --checkpoint`` reads it."""

from __future__ import annotations

import hashlib
import os
import shlex
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from clirun import CLI, DemoLedger, refused, run
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.session import Session
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_simulate_into_a_missing_folder_names_it(tmp_path: Path):
    result = run("simulate", "--ledger", str(tmp_path / "nodir" / "x.sqlite3"), "--sessions", "1")
    refused(result, 2, str(tmp_path / "nodir"))
    assert not (tmp_path / "nodir").exists()


@pytest.mark.parametrize("what", ["text", "ledger", "directory", "empty"])
def test_simulate_never_touches_what_is_already_there(
    tmp_path: Path, ledger: DemoLedger, what: str
):
    target = {
        "text": tmp_path / "notes.txt",
        "ledger": ledger.path,
        "directory": tmp_path / "folder",
        "empty": tmp_path / "empty.sqlite3",
    }[what]
    if what == "text":
        target.write_text("my notes\n", encoding="utf-8")
    elif what == "directory":
        target.mkdir()
    elif what == "empty":
        target.touch()
    before = None if target.is_dir() else digest(target)
    listing = sorted(p.name for p in target.parent.iterdir())
    result = run("simulate", "--ledger", str(target), "--sessions", "1")
    refused(result, 2, str(target), "already exists")
    assert (None if target.is_dir() else digest(target)) == before
    assert sorted(p.name for p in target.parent.iterdir()) == listing


def test_simulate_twice_in_one_folder_refuses_the_second_time(tmp_path: Path):
    first = run("simulate", "--sessions", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ledger = tmp_path / "l2-session-simulation.sqlite3"
    before = digest(ledger)
    second = run("simulate", "--sessions", "1", cwd=tmp_path)
    line = refused(second, 2, "l2-session-simulation.sqlite3", "already exists")
    assert "clock" not in line
    assert digest(ledger) == before


def test_simulate_refuses_a_checkpoint_file_that_is_already_there(tmp_path: Path):
    (tmp_path / "x.sqlite3.checkpoint").write_text("keep me\n", encoding="utf-8")
    result = run("simulate", "--ledger", str(tmp_path / "x.sqlite3"), "--sessions", "1")
    refused(result, 2, "x.sqlite3.checkpoint", "already exists")
    assert (tmp_path / "x.sqlite3.checkpoint").read_text(encoding="utf-8") == "keep me\n"
    assert not (tmp_path / "x.sqlite3").exists()


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_simulate_in_a_read_only_location_says_so(tmp_path: Path):
    # /proc takes no new files, not even root's (the tests may run as root, whom chmod
    # does not stop).
    path = "/proc/l2-session-simulation-test.sqlite3"
    refused(run("simulate", "--ledger", path, "--sessions", "1"), 2, path)
    # With its checkpoint file elsewhere, the ledger is what fails; the claimed checkpoint
    # file is removed again, so that a failed simulation leaves nothing behind.
    saved = tmp_path / "demo.checkpoint"
    result = run("simulate", "--ledger", path, "--sessions", "1", "--save-checkpoint", str(saved))
    refused(result, 2, path)
    assert not saved.exists()


@pytest.mark.parametrize("sessions", ["0", "-2", "many", "1000001"])
def test_simulate_sessions_must_be_a_sensible_number(tmp_path: Path, sessions: str):
    result = run("simulate", "--ledger", str(tmp_path / "x.sqlite3"), "--sessions", sessions)
    refused(result, 2, "--sessions", sessions)
    assert not (tmp_path / "x.sqlite3").exists()


def test_simulate_history_is_dated_when_it_ran_and_a_node_can_append_after_it(tmp_path: Path):
    path = tmp_path / "demo.sqlite3"
    before_us = time.time_ns() // 1000
    assert run("simulate", "--ledger", str(path), "--sessions", "1").returncode == 0
    after_us = time.time_ns() // 1000
    with sqlite3.connect(path) as db:
        first, last = db.execute(
            "SELECT MIN(timestamp), MAX(timestamp) FROM ledger_events"
        ).fetchone()
    db.close()
    # The simulation covers about 12 minutes of heartbeats: they end when it ran, not in the
    # future (where a node's real clock would find the ledger ahead of it) nor in the past.
    assert before_us - 3_600_000_000 < first <= last <= after_us
    node = SessionLedger(path, identity=NodeIdentity.generate(), storage_key=os.urandom(32))
    try:  # the system clock, as a node uses it
        now = node.clock.wall_us()
        session = Session.open(NodeIdentity.generate().did, "initiator", SessionConfig(), now)
        node.save(session)
    finally:
        node.close()


def test_simulate_saves_its_checkpoint_and_prints_it_ready_to_use(tmp_path: Path):
    path = tmp_path / "demo ledger.sqlite3"  # a space: the printed command must quote it
    result = run("simulate", "--ledger", str(path), "--sessions", "2")
    assert result.returncode == 0, result.stderr
    saved = Path(f"{path}.checkpoint")
    text = saved.read_text(encoding="utf-8")
    assert text.startswith("l2-session/ledger/")
    assert text in result.stdout  # verbatim, not indented
    (command,) = [line for line in result.stdout.splitlines() if "l2-session verify" in line]
    argv = shlex.split(command.strip())
    assert argv[:2] == ["l2-session", "verify"]
    check = subprocess.run([*CLI, *argv[1:]], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "checkpoint: matches" in check.stdout
