"""Crashes and concurrent writers: acknowledged appends survive SIGKILL; conflicts are clean."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from l2_session.infrastructure.ledger import ConcurrencyConflict, GroupCommitConfig
from l2_session.infrastructure.ledger.pg_url import PostgresLocation, is_postgres_url
from l2_session.infrastructure.ledger.verify import verify
from ledger_aggregates import Conversation, populate, state_of
from test_tree import event_hashes, expected_nodes, stored_nodes

CHILD = Path(__file__).with_name("writer_child.py")


def start_writer(path: Path | str, seed: bytes, sessions: int) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), seed.hex(), str(sessions)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
    return child


def stored_versions(path: Path | str) -> set[tuple[str, int]]:
    if is_postgres_url(path):
        location = PostgresLocation.parse(path)
        with psycopg.connect(**location.connect_kwargs()) as conn:
            rows = conn.execute(f"SELECT session_id, version FROM {location.schema}.ledger_events")
            return set(rows.fetchall())
    db = sqlite3.connect(path)
    try:
        return set(db.execute("SELECT session_id, version FROM ledger_events"))
    finally:
        db.close()


@pytest.mark.slow
def test_appends_acknowledged_before_sigkill_are_never_lost(ledger_location):
    path = ledger_location
    seed = os.urandom(32)
    rng = random.Random(int.from_bytes(seed[:4], "big"))
    acknowledged: set[tuple[str, int]] = set()
    kills = 12
    for _ in range(kills):
        child = start_writer(path, seed, sessions=100_000)
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda c=child, out=lines: out.extend(iter(c.stdout.readline, ""))
        )
        reader.start()
        time.sleep(rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join()
        for line in lines:
            if line.endswith("\n"):  # a line cut by the kill was not fully acknowledged
                sid, version = line.split()
                acknowledged.add((sid, int(version)))
        report = verify(path)  # the stored tree too, node by node
        assert report.ok and report.tree_checked, report.summary()
        missing = acknowledged - stored_versions(path)
        assert not missing, f"acknowledged but lost after SIGKILL: {sorted(missing)[:5]}"
    assert len(acknowledged) > kills  # the children did get work done between kills
    # The tree kept across twelve kills and restarts is the tree rebuilt from the events.
    assert stored_nodes(path) == expected_nodes(event_hashes(path))


def test_two_writer_processes_share_one_ledger(ledger_location):
    path = ledger_location
    children = [start_writer(path, os.urandom(32), sessions=25) for _ in range(2)]
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert all(child.returncode == 0 for child in children)
    acknowledged = {
        (s, int(v)) for out in outputs for s, v in (line.split() for line in out.splitlines())
    }
    assert acknowledged <= stored_versions(path)
    report = verify(path)
    assert report.ok, report.summary()
    assert report.events_checked == 2 * 25 * 6
    # Two processes extended one tree, each reading the other's edge when the head moved.
    assert stored_nodes(path) == expected_nodes(event_hashes(path))
    assert len(report.signers_seen) == 2


def test_two_writers_appending_the_same_version_one_wins(ledger_factory, clock):
    first, second = ledger_factory(), ledger_factory()
    [conversation] = populate(first, clock, sessions=1, notes=2)
    mine, theirs = first.repository.get(conversation.id), second.repository.get(conversation.id)
    mine.note(text="mine")
    theirs.note(text="theirs")
    first.save(mine)
    with pytest.raises(
        ConcurrencyConflict,
        match=f"session {conversation.id.hex} version {mine.version} was already appended",
    ):
        second.save(theirs)
    replayed = second.repository.get(conversation.id)
    assert replayed.notes[-1] == "mine"
    assert state_of(replayed) == state_of(mine)
    assert verify(first).ok


def test_a_conflict_inside_a_group_commit_rolls_back_only_that_request(ledger_factory, clock):
    ledger = ledger_factory()
    [existing] = populate(ledger, clock, sessions=1, notes=0)
    fresh = [Conversation(peer=f"p{i}") for i in range(2)]
    for conversation in fresh:  # 12 events each: tiles of 8 completed in every request
        for n in range(11):
            conversation.note(text=f"note {n}")
    mapped = [[ledger.mapper.to_stored_event(e) for e in c.collect_events()] for c in fresh]
    clash = [StoredEvent(originator_id=existing.id, originator_version=1, topic="x:Y", state=b"{}")]
    head_before = ledger.ledger_recorder.head()[0]
    outcomes = ledger.ledger_recorder._commit_batch([mapped[0], clash, mapped[1]])
    assert outcomes[0] == list(range(head_before + 1, head_before + 13))
    assert isinstance(outcomes[1], ConcurrencyConflict)
    assert outcomes[2] == list(range(head_before + 13, head_before + 25))  # no hole left
    for conversation in fresh:
        assert state_of(ledger.repository.get(conversation.id)) == state_of(conversation)
    report = verify(ledger)  # the stored tree too: tried as one batch, then request by request
    assert report.ok and report.tree_checked, report.summary()


def test_group_commit_batches_concurrent_appends_into_fewer_transactions(ledger_factory, clock):
    ledger = ledger_factory(group_commit=GroupCommitConfig(max_batch_events=10_000, max_delay=0.05))
    threads, per_thread = 8, 10
    barrier = threading.Barrier(threads)
    saved: list[Conversation] = []

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            conversation = Conversation(peer="p")
            conversation.note(text="hello")
            ledger.save(conversation)
            saved.append(conversation)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    committer = ledger.ledger_recorder.committer
    assert committer.requests == threads * per_thread
    assert committer.batches < committer.requests
    assert all(state_of(ledger.repository.get(c.id)) == state_of(c) for c in saved)
    assert verify(ledger).ok


def test_group_commit_configuration_is_validated():
    with pytest.raises(ValueError, match="max_batch_events must be >= 1, got 0"):
        GroupCommitConfig(max_batch_events=0)
    with pytest.raises(ValueError, match="max_delay must be between 0 and 1 second, got 5"):
        GroupCommitConfig(max_delay=5)


@pytest.mark.parametrize(("durability", "synchronous"), [(None, 2), ("normal", 1), ("off", 0)])
def test_durability_is_full_fsync_unless_asked_otherwise(
    ledger_factory, ledger_path, durability, synchronous
):
    """By default an append that returned is on disk: WAL with synchronous=FULL (2)."""
    ledger = ledger_factory(**({"durability": durability} if durability else {}))
    with ledger.datastore.get_connection(commit=True) as connection:
        assert connection._sqlite_conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert connection._sqlite_conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_large_batches_signed_on_two_threads_stay_in_order(ledger_factory, clock, monkeypatch):
    """A batch is hashed in order and signed in halves at once; a signature put on the wrong
    event (halves swapped, say) would show up as bad signatures here."""
    from l2_session.infrastructure.ledger import chain

    ledger = ledger_factory(group_commit=GroupCommitConfig(max_batch_events=10_000, max_delay=0.05))
    recorder = ledger.ledger_recorder
    if recorder._signing_pool is None:  # one core: the pool is not made; force one for the test
        from concurrent.futures import ThreadPoolExecutor

        monkeypatch.setattr(recorder, "_signing_pool", ThreadPoolExecutor(max_workers=1))
    used = []
    submit = recorder._signing_pool.submit
    monkeypatch.setattr(recorder._signing_pool, "submit", lambda fn: used.append(1) or submit(fn))
    sessions = [Conversation(peer=f"p{i}") for i in range(40)]
    for c in sessions:
        c.note(text="a")
        c.note(text="b")
    ledger.save(*sessions)  # one request of 120 events
    barrier = threading.Barrier(2)

    def more(group: list[Conversation]) -> None:
        barrier.wait()
        for c in group:
            c.note(text="c")
        ledger.save(*group)

    halves = [sessions[:20], sessions[20:]]
    threads = [threading.Thread(target=more, args=(h,)) for h in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(used) >= 1 and chain.PARALLEL_SIGN_MIN <= 120
    assert all(state_of(ledger.repository.get(c.id)) == state_of(c) for c in sessions)
    report = verify(ledger)
    assert report.ok, report.summary()
    assert report.events_checked == 160
