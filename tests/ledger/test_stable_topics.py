"""Topics are frozen names, not Python paths: a ledger written before a class moved still reads.

Every class of a stored aggregate carries the topic below, whatever module it lives in; the
fixture ledger (tests/ledger/fixtures/README.md) was written by the code of the time the
topics were these classes' module paths, and opens, replays, verifies and recovers today.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from uuid import UUID

import pytest
from eventsourcing.utils import get_topic, resolve_topic
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.unconfirmed import UnconfirmedHandshakes
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.core import SessionCore
from l2_session.domain.session.peer import Peer
from l2_session.domain.session.session import Session
from l2_session.domain.session.topics import STORED_TOPICS, stored_classes
from l2_session.domain.session.witnessed import WitnessedLog
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import verify

FIXTURES = Path(__file__).parent / "fixtures"
IDENTITY_SEED = bytes(range(32))  # as in fixtures/make_stable_topics_ledger.py
STORAGE_KEY = bytes(range(32, 64))

# Written out in full, apart from domain/session/topics.py: a change there must fail here.
PINNED = {
    "SessionCore": "l2_session.domain.session_core:SessionCore",
    "SessionCore.CleanedUp": "l2_session.domain.session_core:SessionCore.CleanedUp",
    "SessionCore.Created": "l2_session.domain.session_core:SessionCore.Created",
    "SessionCore.Established": "l2_session.domain.session_core:SessionCore.Established",
    "SessionCore.Event": "l2_session.domain.session_core:SessionCore.Event",
    "SessionCore.Failed": "l2_session.domain.session_core:SessionCore.Failed",
    "SessionCore.HandshakeInitiated": "l2_session.domain.session_core:SessionCore.HandshakeInitiated",
    "SessionCore.HandshakeReceived": "l2_session.domain.session_core:SessionCore.HandshakeReceived",
    "SessionCore.HeartbeatAnswered": "l2_session.domain.session_core:SessionCore.HeartbeatAnswered",
    "SessionCore.HeartbeatMissed": "l2_session.domain.session_core:SessionCore.HeartbeatMissed",
    "SessionCore.HeartbeatSent": "l2_session.domain.session_core:SessionCore.HeartbeatSent",
    "SessionCore.Opened": "l2_session.domain.session_core:SessionCore.Opened",
    "SessionCore.RotationStarted": "l2_session.domain.session_core:SessionCore.RotationStarted",
    "SessionCore.Step": "l2_session.domain.session_core:SessionCore.Step",
    "Session": "l2_session.domain.session:Session",
    "Session.CleanedUp": "l2_session.domain.session:Session.CleanedUp",
    "Session.Closed": "l2_session.domain.session:Session.Closed",
    "Session.CountersReserved": "l2_session.domain.session:Session.CountersReserved",
    "Session.Created": "l2_session.domain.session:Session.Created",
    "Session.Established": "l2_session.domain.session:Session.Established",
    "Session.Event": "l2_session.domain.session:Session.Event",
    "Session.Failed": "l2_session.domain.session:Session.Failed",
    "Session.FallbackAttempted": "l2_session.domain.session:Session.FallbackAttempted",
    "Session.HandshakeInitiated": "l2_session.domain.session:Session.HandshakeInitiated",
    "Session.HandshakeReceived": "l2_session.domain.session:Session.HandshakeReceived",
    "Session.HeartbeatAnswered": "l2_session.domain.session:Session.HeartbeatAnswered",
    "Session.HeartbeatMissed": "l2_session.domain.session:Session.HeartbeatMissed",
    "Session.HeartbeatSent": "l2_session.domain.session:Session.HeartbeatSent",
    "Session.LinkCameUp": "l2_session.domain.session:Session.LinkCameUp",
    "Session.LinkWentDown": "l2_session.domain.session:Session.LinkWentDown",
    "Session.MessageDelivered": "l2_session.domain.session:Session.MessageDelivered",
    "Session.MessageQueued": "l2_session.domain.session:Session.MessageQueued",
    "Session.MessagesAcknowledged": "l2_session.domain.session:Session.MessagesAcknowledged",
    "Session.NodeRestarted": "l2_session.domain.session:Session.NodeRestarted",
    "Session.Opened": "l2_session.domain.session:Session.Opened",
    "Session.PartitionDetected": "l2_session.domain.session:Session.PartitionDetected",
    "Session.ReestablishmentAttempted": "l2_session.domain.session:Session.ReestablishmentAttempted",
    "Session.RotationStarted": "l2_session.domain.session:Session.RotationStarted",
    "Session.Step": "l2_session.domain.session:Session.Step",
    "Session.Suspended": "l2_session.domain.session:Session.Suspended",
    "Session.TransportSwitched": "l2_session.domain.session:Session.TransportSwitched",
    "Peer": "l2_session.domain.peer:Peer",
    "Peer.BackoffReset": "l2_session.domain.peer:Peer.BackoffReset",
    "Peer.Created": "l2_session.domain.peer:Peer.Created",
    "Peer.Event": "l2_session.domain.peer:Peer.Event",
    "Peer.Quarantined": "l2_session.domain.peer:Peer.Quarantined",
    "Peer.Registered": "l2_session.domain.peer:Peer.Registered",
    "Peer.RetryScheduled": "l2_session.domain.peer:Peer.RetryScheduled",
    "UnconfirmedHandshakes": "l2_session.domain.unconfirmed:UnconfirmedHandshakes",
    "UnconfirmedHandshakes.Created": "l2_session.domain.unconfirmed:UnconfirmedHandshakes.Created",
    "UnconfirmedHandshakes.Event": "l2_session.domain.unconfirmed:UnconfirmedHandshakes.Event",
    "UnconfirmedHandshakes.Summarised": "l2_session.domain.unconfirmed:UnconfirmedHandshakes.Summarised",
    # Witnessing (decision 25): added with ledger format 2.
    "WitnessedLog": "l2_session.domain.witnessed:WitnessedLog",
    "WitnessedLog.CheckpointConflict": "l2_session.domain.witnessed:WitnessedLog.CheckpointConflict",
    "WitnessedLog.CheckpointWitnessed": "l2_session.domain.witnessed:WitnessedLog.CheckpointWitnessed",
    "WitnessedLog.Created": "l2_session.domain.witnessed:WitnessedLog.Created",
    "WitnessedLog.Event": "l2_session.domain.witnessed:WitnessedLog.Event",
    "WitnessedLog.Started": "l2_session.domain.witnessed:WitnessedLog.Started",
}
AGGREGATES = (SessionCore, Session, Peer, UnconfirmedHandshakes, WitnessedLog)
STORED = {cls.__qualname__: cls for agg in AGGREGATES for cls in stored_classes(agg)}


def test_every_stored_class_is_pinned_and_nothing_else():
    assert set(STORED) == set(PINNED)
    assert dict(STORED_TOPICS) == PINNED


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_class_writes_and_reads_its_pinned_topic(name):
    cls = STORED[name]
    assert "TOPIC" in vars(cls), "TOPIC is inherited: a class needs its own"
    assert get_topic(cls) == PINNED[name]
    assert resolve_topic(PINNED[name]) is cls


# How a session holds its state in memory, where that changed and what the ledger holds did
# not: the same events replay to the same session. A reservation of send counters is reset by
# Established when the keys change, so the key it was made under is not kept; a session not in
# a transport fallback holds fallback_pending as a class default, not an attribute of its own.
REPRESENTATION = (
    re.compile(r"\('reserved_key_id', (None|'[0-9a-f]*')\), "),
    re.compile(r"\('fallback_pending', False\), "),
)


def plain(text: str) -> str:
    """``<State.FAILED: 'failed'>`` as ``'failed'``: a closed session read from a snapshot
    holds its state as the str it equals; and without the attributes of REPRESENTATION."""
    for attribute in REPRESENTATION:
        text = attribute.sub("", text)
    return re.sub(r"<\w+\.\w+: ('[^']*')>", r"\1", text)


@pytest.fixture
def old_ledger(tmp_path):
    """A copy of the fixture ledger (recovery writes to it) and what its writer saw."""
    for suffix in (".sqlite3", ".checkpoint"):
        shutil.copy(FIXTURES / f"stable_topics{suffix}", tmp_path)
    expected = json.loads((FIXTURES / "stable_topics.json").read_text(encoding="utf-8"))
    return tmp_path / "stable_topics.sqlite3", expected


def test_a_ledger_written_before_the_classes_moved_replays_verifies_and_recovers(old_ledger):
    path, expected = old_ledger
    assert set(expected["topics"]) <= set(PINNED.values())
    checkpoint = (path.parent / "stable_topics.checkpoint").read_text(encoding="utf-8")
    report = verify(path, checkpoint, trusted_signers=[expected["signer"]])
    assert report.ok, report.summary()
    assert report.sessions == 5 and report.peers == 1  # counted by their creation topics

    identity = NodeIdentity.from_seed(IDENTITY_SEED)
    ledger = SessionLedger(path, identity=identity, storage_key=STORAGE_KEY)
    try:
        for aggregate_id, seen in expected["aggregates"].items():
            replayed = ledger.repository.get(UUID(aggregate_id))
            assert type(replayed).__name__ == seen["class"]
            assert replayed.version == seen["version"]
            state = sorted((k, v) for k, v in vars(replayed).items() if k != "_pending_events")
            assert plain(repr(state)) == plain(seen["state"])
        # A restarted node finds the sessions left live by their frozen topics (decision 16).
        manager = SessionManager(identity.did, ledger, SessionConfig(), key_exchange="mock")
        recovered = manager.recover(now_us=1_767_225_600_000_000 + 3_600_000_000)
        assert sorted(str(sid) for sid in recovered) == expected["live_sessions"]
    finally:
        ledger.close()
    assert verify(path, trusted_signers=[expected["signer"]]).ok


def test_what_the_code_writes_now_is_named_by_the_pinned_topics(tmp_path):
    ledger = SessionLedger(
        tmp_path / "new.sqlite3", identity=NodeIdentity.generate(), storage_key=bytes(32)
    )
    try:
        session = Session.open("did:key:z6MkPeer", "initiator", SessionConfig(), 1_000_000)
        session.initiate_handshake(1_000_000)
        session.receive_valid_response(1_020_000, bytes(32), prekeys="p")
        session.close(1_030_000)
        peer = Peer.register("did:key:z6MkPeer", SessionConfig(), 1_000_000)
        ledger.save(session, peer)
        topics = [n.topic for n in ledger.recorder.select_notifications(start=1, limit=100)]
    finally:
        ledger.close()
    assert topics == [
        PINNED["Session.Opened"],
        PINNED["SessionCore.HandshakeInitiated"],
        PINNED["SessionCore.Established"],
        PINNED["Session.Closed"],
        PINNED["Peer.Registered"],
    ]
