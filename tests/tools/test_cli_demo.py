"""``l2-session demo`` runs the whole story with two node processes, and what it prints is
checked against the ledgers it leaves: the sessions, their transitions, every message
delivered exactly once, both ledgers verified and witnessed by each other."""

from __future__ import annotations

import re
from pathlib import Path

from clirun import run
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import verify
from l2_session.projections.history import LedgerHistory

SENT_BY_ALICE = 8  # 3 at first, 2 during the partition, 1 over μTCP, 1 over QUIC again, 1 before
# the kill


def sessions(path: Path) -> dict[str, tuple[dict, list]]:
    """Each session of a ledger: its replayed summary and its steps."""
    ledger = SessionLedger(path, create=False)
    try:
        history = LedgerHistory(ledger)
        found = {}
        for state in history.states_at():
            summary = state.summary()
            if summary["kind"] == "session":
                found[summary["id"]] = (summary, list(history.timeline(summary["id"])))
        return found
    finally:
        ledger.close()


def test_the_demo_tells_what_its_ledgers_record(tmp_path: Path):
    folder = tmp_path / "demo"
    result = run("demo", "--dir", str(folder), timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "All of it happened as told" in out

    ((alice_id, (alice, alice_steps)),) = sessions(folder / "alice.sqlite3").items()
    ((bob, _),) = sessions(folder / "bob.sqlite3").values()
    assert re.search(rf"session {alice_id[:8]}… established over QUIC", out)
    # Every message exactly once, in both directions.
    assert alice["queue"]["next_seq"] - 1 == SENT_BY_ALICE
    assert bob["queue"]["next_expected_seq"] - 1 == SENT_BY_ALICE
    assert alice["queue"]["next_expected_seq"] - 1 == bob["queue"]["next_seq"] - 1 == 1
    # The story's steps, in alice's ledger, in order.
    moves = [(t.event, t.state_before, t.state) for t in alice_steps]
    story = [
        ("Established", "handshake_initiated", "established"),
        ("Established", "rotating", "established"),
        ("HeartbeatMissed", "established", "degraded"),
        ("FallbackAttempted", None, None),
        ("TransportSwitched", None, None),  # to μTCP
        ("TransportSwitched", None, None),  # and back to QUIC
        ("NodeRestarted", "established", "suspended"),
    ]
    at = 0
    for event, before, after in story:
        while at < len(moves) and not (
            moves[at][0] == event and (before is None or moves[at][1:] == (before, after))
        ):
            at += 1
        assert at < len(moves), (
            f"{event} {before} → {after} not in alice's ledger after the step before"
        )
        at += 1  # the next step comes after this one
    restarted = next(t.position for t in alice_steps if t.event == "NodeRestarted")
    after = [t for t in alice_steps if t.position > restarted and t.state != t.state_before]
    assert after[-2:][0].trigger == "initiate_resumption()"  # resumed: no new KEM exchange
    assert alice["state"] == bob["state"] == "established"
    assert alice["transport"] == bob["transport"] == "quic"  # moved back, and resumed over it
    # Both ledgers verify, and each was witnessed by the other, as printed.
    for name, other in (("alice", "bob"), ("bob", "alice")):
        report = verify(
            str(folder / f"{name}.sqlite3"), witnesses=[str(folder / f"{other}.sqlite3")]
        )
        assert report.ok and report.witnessed_checkpoints >= 1
        assert f"{name}: {report.events_checked} events" in out
    # The next commands it prints work on what it left.
    assert f"audit verify {folder}/alice.sqlite3 --witness {folder}/bob.sqlite3" in out
    check = run(
        "audit", "verify", str(folder / "alice.sqlite3"), "--witness", str(folder / "bob.sqlite3")
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_demo_never_reuses_a_nodes_files(tmp_path: Path):
    (tmp_path / "alice.sqlite3").write_bytes(b"someone's ledger")
    result = run("demo", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "already holds alice.sqlite3" in result.stderr
    assert (tmp_path / "alice.sqlite3").read_bytes() == b"someone's ledger"
