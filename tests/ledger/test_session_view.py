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
from l2_session.domain.session.peer import Peer, peer_id
from l2_session.domain.session.session import Session
from l2_session.infrastructure.ledger import LedgerCorrupted, SessionLedger
from l2_session.infrastructure.ledger.chain import row_part
from l2_session.projections import session_view
from l2_session.projections.history import LedgerHistory
from l2_session.projections.session_view import Fold, SessionView
from tampering import open_as_attacker

SECOND = 1_000_000
COMMANDS = ["initiate_handshake", "heartbeat_due", "connectivity_lost", "partition_detected",
            "connectivity_restored", "degraded_timed_out", "retry", "transport_failed",
            "transport_switched", "cleanup", "respond", "message", "close", "timeout",
            "node_restarted", "back_to_quic"]  # fmt: skip
PEER_COMMANDS = ["authentication_failed", "schedule_retry", "succeeded"]


def populate(ledger: SessionLedger, clock, seed: int, saves: int = 30, sessions: int = 5) -> None:
    rng = random.Random(seed)
    now = clock.wall_us()
    sessions = [Session.open(f"did:key:z6MkPeer{i}", "initiator", SessionConfig(), now)
                for i in range(sessions)]  # fmt: skip
    peers = [Peer.register(f"did:key:z6MkPeer{i}", SessionConfig(), now) for i in range(2)]
    for _ in range(saves):
        for _ in range(rng.randint(1, 5)):
            now += rng.choice([1_000, 2 * SECOND, 31 * SECOND])
            peer, verb = rng.choice(peers), rng.choice(PEER_COMMANDS)
            if rng.random() < 0.3:
                if verb == "succeeded":
                    peer.succeeded(now)
                else:
                    getattr(peer, verb)(now, rng.random() * 0.9)
            s, command = rng.choice(sessions), rng.choice(COMMANDS)
            try:
                if command == "respond":
                    s.receive_valid_response(now, key_material=rng.randbytes(32), prekeys="p")
                elif command == "message":
                    s.submit_message(now, b"m")
                elif command == "timeout":
                    s.handshake_timed_out(now, None)
                elif command == "back_to_quic":  # decision 24: TransportSwitched naming quic
                    s.transport_switched(now, "quic")
                else:
                    getattr(s, command)(now)
            except (SessionError, ValueError):  # not allowed now (ValueError: a fallback
                pass  # is pending, so the session cannot move back yet)
        clock.set_wall_us(max(clock.wall_us(), now))
        ledger.save(*sessions, *peers)


@pytest.mark.parametrize("seed", [1, 2, 3, 11, 12, 13])
def test_the_view_says_what_replaying_each_session_says(ledger_factory, clock, tmp_path, seed):
    ledger = ledger_factory()
    populate(ledger, clock, seed)
    view = SessionView(tmp_path / "view.sqlite3")
    applied = view.catch_up(ledger, batch=7)
    head = ledger.recorder.max_notification_id()
    assert applied == head and view.lag(ledger).events == 0
    replayed = {str(r.aggregate_id): r for r in LedgerHistory(ledger).states_at()
                if r.kind == "session"}  # fmt: skip
    rows = view.sessions()
    assert {r["id"] for r in rows} == set(replayed)
    for row in rows:  # every column, against the session the domain replays
        a, position = replayed[row["id"]].aggregate, replayed[row["id"]].position
        assert row == {
            "id": str(a.id), "peer": a.peer_did, "role": a.role,
            "state": "closed" if a.closed else str(a.state),
            "since_us": a.state_since_us,
            "transport": a.transport, "failure_reason": a.failure_reason,
            "close_reason": getattr(a, "close_reason", None), "events": a.version,
            "last_position": position,
        }  # fmt: skip
        assert replayed[row["id"]].summary()["state"] == row["state"]  # (snapshots included)
    for row in view.peers():
        peer = ledger.repository.get(peer_id(row["did"]))
        assert (row["failed_attempts"], row["quarantined_until_us"], row["retry_at_us"]) == (
            peer.failed_attempts, peer.quarantined_until_us or None, peer.retry_at_us)  # fmt: skip
    assert len(view.peers()) == 2
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
    session_view.PARALLEL_FROM = 1  # with workers > 1: in parallel however short
    batches = [0]
    commit = view._commit
    def commit_then_die(*args):
        commit(*args)
        batches[0] += 1
        if batches[0] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
    view._commit = commit_then_die
    view.catch_up(ledger, batch=5, workers=int(sys.argv[4]))
""")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_catch_up_killed_mid_way_resumes_to_the_view_rebuilt_from_zero(
    identity, storage_key, clock, ledger_path, tmp_path, workers
):
    ledger = SessionLedger(ledger_path, identity=identity, storage_key=storage_key, clock=clock)
    populate(ledger, clock, seed=9, saves=40, sessions=12)
    assert ledger.recorder.max_notification_id() > 20  # more than the four batches
    killed = tmp_path / "killed.sqlite3"
    result = subprocess.run([sys.executable, "-c", KILLER, str(ledger_path), str(killed), "4",
                             str(workers)], capture_output=True, text=True, timeout=120)  # fmt: skip
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
    rows = ledger.recorder.notification_rows(0, 10)
    del rows[3]
    with pytest.raises(LedgerCorrupted, match="position 5 follows 3: a gap"):
        Fold(ledger).apply(rows, 0)
    assert view.position() == 0 and not view.sessions()


@pytest.mark.parametrize("seed", [5, 6])
def test_a_parallel_catch_up_ends_where_one_process_does(
    ledger_factory, clock, tmp_path, monkeypatch, seed
):
    """Two processes, each opening the ledger again (a SQLite file, a PostgreSQL URL) and
    folding the sessions of its share of every batch, write the same view as one process
    (the split by session id keeps each session's events together)."""
    ledger = ledger_factory()
    populate(ledger, clock, seed=seed, saves=40, sessions=16)
    monkeypatch.setattr(session_view, "PARALLEL_FROM", 1)
    workers: list[int] = []
    in_parallel = SessionView._in_parallel
    monkeypatch.setattr(SessionView, "_in_parallel",
                        lambda view, *a: workers.append(a[4]) or in_parallel(view, *a))  # fmt: skip
    parallel, alone = SessionView(tmp_path / "two.sqlite3"), SessionView(tmp_path / "one.sqlite3")
    seen: list[tuple[int, int]] = []
    assert parallel.catch_up(ledger, batch=9, workers=2, progress=lambda d, t: seen.append((d, t)))
    assert alone.catch_up(ledger, batch=9, workers=1) == ledger.recorder.max_notification_id()
    for table in ("sessions", "peers", "transitions"):
        assert dump(tmp_path / "two.sqlite3", table) == dump(tmp_path / "one.sqlite3", table)
    head = ledger.recorder.max_notification_id()
    assert parallel.position() == head and seen[-1] == (head, head)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) == -(-head // 9) and workers == [2]  # the two processes' batches


def test_a_parallel_catch_up_refuses_a_gap_and_commits_nothing_past_it(
    identity, storage_key, clock, ledger_path, tmp_path, monkeypatch
):
    ledger = SessionLedger(ledger_path, identity=identity, storage_key=storage_key, clock=clock)
    populate(ledger, clock, seed=7, saves=30, sessions=8)
    ledger.close()
    db = open_as_attacker(ledger_path)
    db.execute("DELETE FROM ledger_events WHERE position = 14")
    db.commit()
    db.close()
    monkeypatch.setattr(session_view, "PARALLEL_FROM", 1)
    ledger = SessionLedger(ledger_path, create=False)
    view = SessionView(tmp_path / "view.sqlite3")
    with pytest.raises(LedgerCorrupted, match="positions 11 to 15 hold 4 events: a gap"):
        view.catch_up(ledger, batch=5, workers=2)
    assert view.position() == 10
    ledger.close()


def test_rows_split_in_parts_are_the_rows_by_the_last_character_of_the_session_id(
    ledger_factory, clock
):
    """Both backends' SQL split a read as ``row_part`` says: each part holds exactly the rows
    of its sessions, and the parts together hold every row once."""
    ledger = ledger_factory()
    populate(ledger, clock, seed=8, saves=20, sessions=12)
    head = ledger.recorder.max_notification_id()
    every = ledger.recorder.notification_rows(0, head)
    assert [r[0] for r in every] == list(range(1, head + 1))
    for parts in (2, 3):
        shares = [ledger.recorder.notification_rows(0, head, part, parts) for part in range(parts)]
        for part, share in enumerate(shares):
            assert share == [r for r in every if row_part(r[1], parts) == part]
        assert sorted(r for share in shares for r in share) == every
    assert ledger.recorder.notification_rows(3, 5) == every[3:5]


def test_a_batch_whose_tracking_record_fails_leaves_no_row_behind(
    ledger_factory, clock, tmp_path, monkeypatch
):
    """The rows are written inside the tracking record's transaction: when the tracking record
    cannot be written, the batch's rows go with it."""
    ledger = ledger_factory()
    populate(ledger, clock, seed=10, saves=10)
    view = SessionView(tmp_path / "view.sqlite3")
    view.catch_up(ledger, batch=5, workers=1)
    before = {t: dump(tmp_path / "view.sqlite3", t) for t in ("sessions", "peers", "transitions")}
    session = Session.open("did:key:z6MkPeerLate", "initiator", SessionConfig(), clock.wall_us())
    session.initiate_handshake(clock.wall_us())
    ledger.save(session)

    def refuse(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(view, "_insert_tracking", refuse)
    with pytest.raises(Exception, match="disk I/O error"):
        view.catch_up(ledger, workers=1)
    after = {t: dump(tmp_path / "view.sqlite3", t) for t in ("sessions", "peers", "transitions")}
    assert after == before and view.lag(ledger).events == 2


def test_the_view_follows_a_session_to_utcp_and_back_to_quic(ledger_factory, clock, tmp_path):
    """Decision 24: ``FallbackAttempted`` sets the transport, and so does a
    ``TransportSwitched`` that names one (a move back to QUIC)."""
    ledger = ledger_factory()
    now = clock.wall_us()
    s = Session.open("did:key:z6MkPeer", "initiator", SessionConfig(), now)
    s.initiate_handshake(now)
    s.receive_valid_response(now + 1, key_material=bytes(32), prekeys="p")
    view = SessionView(tmp_path / "view.sqlite3")
    seen = []
    for step in (
        s.transport_failed,
        s.transport_switched,
        lambda t: s.transport_switched(t, "quic"),
    ):
        now += SECOND
        step(now)
        clock.set_wall_us(now)
        ledger.save(s)
        view.catch_up(ledger)
        (row,) = view.sessions()
        seen.append(row["transport"])
    assert seen == ["utcp", "utcp", "quic"] and ledger.repository.get(s.id).transport == "quic"
