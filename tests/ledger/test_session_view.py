"""The operators' read model (projections/session_view.py): what it says of each session is
what replaying the session says; a catch-up killed mid-way and resumed ends identical to a
view rebuilt from zero; each event is applied once."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import SessionError
from l2_session.domain.session.session import Session
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.projections.history import LedgerHistory
from l2_session.projections.session_view import SessionView

SECOND = 1_000_000
COMMANDS = ["initiate_handshake", "heartbeat_due", "connectivity_lost", "partition_detected",
            "connectivity_restored", "degraded_timed_out", "retry", "transport_failed",
            "transport_switched", "cleanup", "respond", "message", "close", "timeout"]  # fmt: skip


def populate(ledger: SessionLedger, clock, seed: int, saves: int = 30, sessions: int = 5) -> None:
    rng = random.Random(seed)
    now = clock.wall_us()
    sessions = [Session.open(f"did:key:z6MkPeer{i}", "initiator", SessionConfig(), now)
                for i in range(sessions)]  # fmt: skip
    for _ in range(saves):
        for _ in range(rng.randint(1, 5)):
            now += rng.choice([1_000, 2 * SECOND, 31 * SECOND])
            s, command = rng.choice(sessions), rng.choice(COMMANDS)
            try:
                if command == "respond":
                    s.receive_valid_response(now, key_material=rng.randbytes(32), prekeys="p")
                elif command == "message":
                    s.submit_message(now, b"m")
                elif command == "timeout":
                    s.handshake_timed_out(now, None)
                else:
                    getattr(s, command)(now)
            except SessionError:
                pass
        clock.set_wall_us(max(clock.wall_us(), now))
        ledger.save(*sessions)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_view_says_what_replaying_each_session_says(ledger_factory, clock, tmp_path, seed):
    ledger = ledger_factory()
    populate(ledger, clock, seed)
    view = SessionView(tmp_path / "view.sqlite3")
    applied = view.catch_up(ledger, batch=7)
    head = ledger.recorder.max_notification_id()
    assert applied == head and view.lag(ledger).events == 0
    replayed = {str(r.aggregate_id): r.summary() for r in LedgerHistory(ledger).states_at()}
    rows = view.sessions()
    assert {r["id"] for r in rows} == set(replayed)
    for row in rows:
        truth = replayed[row["id"]]
        assert (row["state"], row["transport"], row["failure_reason"], row["peer"]) == (
            truth["state"], truth["transport"], truth["failure_reason"], truth["peer"])  # fmt: skip
        assert row["events"] == truth["version"] and row["last_position"] == truth["position"]
    moves = {(m["from_state"], m["to_state"]): m["count"] for m in view.transitions()}
    steps = [t for t in LedgerHistory(ledger).timeline() if t.kind == "session"]
    expected: dict[tuple[str, str], int] = {}
    for t in steps:
        if t.state_before is not None and t.state != t.state_before:
            expected[(t.state_before, t.state)] = expected.get((t.state_before, t.state), 0) + 1
    assert moves == expected
    assert view.catch_up(ledger) == 0  # nothing new: nothing applied twice


KILLER = textwrap.dedent("""
    import os, signal, sys
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.projections import session_view
    ledger = SessionLedger(sys.argv[1], create=False)
    view = session_view.SessionView(sys.argv[2])
    batches = [0]
    apply = view._apply
    def apply_then_die(*args):
        apply(*args)
        batches[0] += 1
        if batches[0] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
    view._apply = apply_then_die
    view.catch_up(ledger, batch=5)
""")


def test_a_catch_up_killed_mid_way_resumes_to_the_view_rebuilt_from_zero(
    identity, storage_key, clock, ledger_path, tmp_path
):
    ledger = SessionLedger(ledger_path, identity=identity, storage_key=storage_key, clock=clock)
    populate(ledger, clock, seed=9, saves=40, sessions=12)
    assert ledger.recorder.max_notification_id() > 20  # more than the four batches
    killed = tmp_path / "killed.sqlite3"
    result = subprocess.run([sys.executable, "-c", KILLER, str(ledger_path), str(killed), "4"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr
    resumed = SessionView(killed)
    assert resumed.position() == 20  # four batches of five committed, no more
    resumed.catch_up(ledger, batch=5)
    fresh = SessionView(tmp_path / "fresh.sqlite3")
    fresh.catch_up(ledger)
    for table in ("sessions", "peers", "transitions"):
        assert dump(killed, table) == dump(tmp_path / "fresh.sqlite3", table), table
    assert resumed.position() == fresh.position() == ledger.recorder.max_notification_id()
    ledger.close()


def dump(path: Path, table: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        rows = db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    db.close()
    return rows


def test_a_ledger_with_a_gap_is_refused_not_projected_past(ledger_factory, clock, tmp_path):
    ledger = ledger_factory()
    populate(ledger, clock, seed=4, saves=5)
    view = SessionView(tmp_path / "view.sqlite3")
    page = list(ledger.recorder.select_notifications(1, 10))
    del page[3]
    with pytest.raises(Exception, match="a gap"):
        view._apply(ledger, page, 0)
    assert view.position() == 0 and not view.sessions()
