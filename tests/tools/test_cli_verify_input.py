"""``l2-session verify`` given bad input: one line naming what is wrong, exit 2; a damaged or
mismatching ledger: a report, exit 1; never a traceback, never raw control characters."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import pytest
from clirun import DemoLedger, corrupt_page, refused, run
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.peer import Peer
from l2_session.domain.session.session import Session
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger


@pytest.mark.parametrize(
    "damaged", ["ledger_signers", "sqlite_autoindex_ledger_meta_1", "ledger_meta"]
)
def test_a_damaged_page_is_reported_as_damage_not_a_traceback(ledger: DemoLedger, damaged: str):
    corrupt_page(ledger.path, damaged)
    result = run("verify", "--ledger", str(ledger.path))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, (result.stdout, result.stderr)
    if result.stdout:  # verify could read enough to report
        assert "PROBLEM" in result.stdout and "database_corrupt" in result.stdout
    else:  # the file no longer opens as SQLite: one line naming it
        refused(result, 1, str(ledger.path))


def test_sqlite_s_own_report_is_text_not_a_bytes_literal(ledger: DemoLedger):
    corrupt_page(ledger.path, "sqlite_autoindex_ledger_events_1")
    result = run("verify", "--ledger", str(ledger.path))
    assert result.returncode == 1, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "quick_check" in line]
    assert "b'" not in line and "\\n" not in line, line
    assert "btreeInitPage() returns error code 11" in line


def test_a_binary_checkpoint_file_is_named_not_a_traceback(ledger: DemoLedger, tmp_path: Path):
    binary = tmp_path / "checkpoint.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    result = run("verify", "--ledger", str(ledger.path), "--checkpoint", str(binary))
    refused(result, 2, str(binary), "UTF-8")


def test_an_oversized_checkpoint_file_is_refused_without_reading_it_all(
    ledger: DemoLedger, tmp_path: Path
):
    big = tmp_path / "big.txt"
    big.write_text("l2-session ledger x\n" + "a" * 2_000_000, encoding="utf-8")
    result = run("verify", "--ledger", str(ledger.path), "--checkpoint", str(big))
    refused(result, 2, str(big), "bytes")


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_an_unreadable_checkpoint_file_is_named(ledger: DemoLedger, tmp_path: Path, what: str):
    path = tmp_path / "cp"
    if what == "directory":
        path.mkdir()
    result = run("verify", "--ledger", str(ledger.path), "--checkpoint", str(path))
    line = refused(result, 2, str(path))
    assert "Errno" not in line


def test_a_checkpoint_that_lost_its_blank_line_is_told_so(ledger: DemoLedger):
    text = ledger.checkpoint.read_text(encoding="utf-8")
    ledger.checkpoint.write_text(text.replace("\n\n", "\n"), encoding="utf-8")
    result = run("verify", "--ledger", str(ledger.path), "--checkpoint", str(ledger.checkpoint))
    refused(result, 2, str(ledger.checkpoint), "no blank line", "line 6")


@pytest.mark.parametrize(
    "garbage", ["hello world\n", "Just some notes\nwith two lines\n", "\n\n\n"]
)
def test_garbage_as_a_checkpoint_is_not_a_checkpoint(
    ledger: DemoLedger, tmp_path: Path, garbage: str
):
    path = tmp_path / "notes.txt"
    path.write_text(garbage, encoding="utf-8")
    result = run("verify", "--ledger", str(ledger.path), "--checkpoint", str(path))
    line = refused(result, 2, str(path))
    assert "blank line" not in line
    assert "not a checkpoint" in line or "empty" in line


def test_a_checkpoint_with_windows_line_ends_is_told_so(ledger: DemoLedger):
    text = ledger.checkpoint.read_text(encoding="utf-8")
    ledger.checkpoint.write_bytes(text.replace("\n", "\r\n").encode())
    result = run("verify", "--ledger", str(ledger.path), "--checkpoint", str(ledger.checkpoint))
    refused(result, 2, "CR LF")


def test_checkpoint_line_says_whether_it_matches(ledger: DemoLedger, other_ledger: DemoLedger):
    same = run("verify", "--ledger", str(ledger.path), "--checkpoint", str(ledger.checkpoint))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "checkpoint: matches" in same.stdout

    other = run(
        "verify", "--ledger", str(ledger.path), "--checkpoint", str(other_ledger.checkpoint)
    )
    assert other.returncode == 1
    assert "checkpoint: checked" not in other.stdout
    assert "checkpoint: DOES NOT MATCH" in other.stdout
    assert "checkpoint: matches" not in other.stdout


def test_trust_must_be_a_did_key(ledger: DemoLedger):
    for value in ("notadid", "did:web:example.com", "did:key:z6MkNotBase58!!"):
        result = run("verify", "--ledger", str(ledger.path), "--trust", value)
        refused(result, 2, "--trust", value, "did:key")
        assert result.stdout == ""


@pytest.mark.parametrize("workers", ["0", "-3", "two", "100000"])
def test_workers_must_be_a_positive_number(ledger: DemoLedger, workers: str):
    result = run("verify", "--ledger", str(ledger.path), "--workers", workers)
    refused(result, 2, "--workers", workers)
    assert result.stdout == ""


def test_control_characters_from_the_ledger_are_escaped(ledger: DemoLedger):
    injected_did = "did:key:z6Mk\x1b]0;owned\x07\x1b[2J"
    injected_sid = "\x1b[31mred\x9b"
    with sqlite3.connect(ledger.path) as db:
        db.execute("DROP TRIGGER ledger_events_no_update")
        db.execute("UPDATE ledger_events SET signer=? WHERE position=3", (injected_did,))
        db.execute("UPDATE ledger_events SET session_id=? WHERE position=4", (injected_sid,))
    db.close()
    result = run("verify", "--ledger", str(ledger.path))
    assert result.returncode == 1
    for raw in ("\x1b", "\x07", "\x9b"):
        assert raw not in result.stdout and raw not in result.stderr
    assert "did:key:z6Mk\\x1b]0;owned\\x07\\x1b[2J" in result.stdout
    assert "\\x1b[31mred\\x9b" in result.stdout


def test_control_characters_in_a_path_are_escaped_in_the_error(tmp_path: Path):
    result = run("verify", "--ledger", str(tmp_path / "x\x1b[2J.sqlite3"))
    refused(result, 2, "x\\x1b[2J.sqlite3")


def test_sessions_and_peers_are_counted_apart(tmp_path: Path):
    path = tmp_path / "node.sqlite3"
    clock = ManualClock()
    node = SessionLedger(path, identity=NodeIdentity.generate(), storage_key=os.urandom(32),
                         clock=clock)  # fmt: skip
    peer_did = NodeIdentity.generate().did
    now = clock.wall_us()
    session = Session.open(peer_did, "initiator", SessionConfig(), now)
    session.initiate_handshake(now)
    node.save(session, Peer.register(peer_did, SessionConfig(), now))
    node.close()
    result = run("verify", "--ledger", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "in 1 session, 1 peer " in result.stdout
    assert "2 sessions" not in result.stdout


def test_sessions_are_counted_on_a_demo_ledger(ledger: DemoLedger):
    result = run("verify", "--ledger", str(ledger.path))
    assert result.returncode == 0
    assert "in 1 session " in result.stdout


@pytest.mark.parametrize("url", ["postgresql://", "postgresql://u@127.0.0.1:99999/db"])
def test_a_bad_postgresql_url_is_named(url: str):
    refused(run("verify", "--ledger", url), 2, "PostgreSQL URL")


def test_an_unreachable_server_is_one_line():
    url = f"postgresql://ops:s3cret@127.0.0.1:1/ledger_{uuid.uuid4().hex[:6]}"
    line = refused(run("verify", "--ledger", url), 2, "cannot connect", "127.0.0.1:1")
    assert "s3cret" not in line


@pytest.mark.parametrize("what", ["text", "directory", "empty-name", "sqlite-not-ledger"])
def test_what_is_not_a_ledger_is_named(tmp_path: Path, what: str):
    path = tmp_path / "input"
    if what == "text":
        path.write_text("hello\n", encoding="utf-8")
    elif what == "directory":
        path.mkdir()
    elif what == "sqlite-not-ledger":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE notes (t TEXT)")
        db.close()
    argument = "" if what == "empty-name" else str(path)
    line = refused(run("verify", "--ledger", argument), 2)
    assert (str(path) in line) if argument else ("--ledger" in line)
