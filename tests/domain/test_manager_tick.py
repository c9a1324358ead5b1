"""``SessionManager.tick`` saves everything a tick fires in one ``save`` (one group commit)
and derives what to send only after that save returned — on a real SQLite ledger."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from l2_session.domain.manager.keyexchange import MockKeyExchange
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session.commands import (
    Data,
    HandshakeRequest,
    HandshakeResponse,
    Heartbeat,
    Output,
    Send,
)
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.peer import Peer
from l2_session.domain.session.session import Session
from session_helpers import ALICE, SECOND, T0

PEERS = ("did:key:z6MkPeerOne", "did:key:z6MkPeerTwo")


class RecordingLedger:
    """A real ledger that notes each save in a shared log; ``fail_next`` makes the next save
    take the events and fail, as a save that dies on a full disk does."""

    def __init__(self, inner: Any, log: list[tuple[str, Any]]) -> None:
        self.inner = inner
        self.log = log
        self.fail_next = False

    @property
    def repository(self) -> Any:
        return self.inner.repository

    def live_session_ids(self, *topics: Any) -> Any:
        return self.inner.live_session_ids(*topics)

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        if self.fail_next:
            self.fail_next = False
            for obj in objs:
                obj.collect_events()
            raise sqlite3.OperationalError("database or disk is full")
        self.log.append(("save", objs))
        return self.inner.save(*objs, **kwargs)

    def saves(self) -> list[tuple[Any, ...]]:
        return [objs for what, objs in self.log if what == "save"]


class RecordingKeyExchange(MockKeyExchange):
    """Notes when an output needs the key exchange (a handshake request being derived)."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        super().__init__(seed=3)
        self.log = log

    def initiate(self, conversation: UUID, peer_did: str, now_us: int) -> bytes:
        self.log.append(("initiate", conversation))
        return super().initiate(conversation, peer_did, now_us)


@pytest.fixture
def node(session_ledger_factory: Callable[..., Any]) -> tuple[SessionManager, RecordingLedger]:
    log: list[tuple[str, Any]] = []
    ledger = RecordingLedger(session_ledger_factory("alice"), log)
    manager = SessionManager(ALICE, ledger, SessionConfig(), key_exchange=RecordingKeyExchange(log))
    return manager, ledger


def established(manager: SessionManager, peer_did: str, now_us: int) -> Session:
    sid, _ = manager.establish(peer_did, now_us)
    session = manager.session(sid)
    manager.receive(peer_did, HandshakeResponse(session.conversation, b"\x01" * 32), now_us)
    assert session.state == "established"
    return session


def frames_to(outputs: list[Output], session: Session) -> list[Any]:
    return [o.frame for o in outputs if isinstance(o, Send) and o.frame.conversation == session.conversation]  # fmt: skip


def stored(manager: SessionManager, aggregate_id: UUID) -> Any:
    return manager.ledger.repository.get(aggregate_id)


def timed_out_handshakes(manager: SessionManager, per_peer: int) -> list[Session]:
    """Handshakes with two peers, ``per_peer`` each, all timed out by one tick at T0 + 5 s."""
    sids = [manager.establish(p, T0)[0] for p in PEERS for _ in range(per_peer)]
    manager.tick(T0 + 5 * SECOND)
    sessions = [manager.session(sid) for sid in sids]
    assert {s.state for s in sessions} == {"failed"}
    return sessions


def test_a_tick_saves_every_fired_session_and_each_touched_peer_once_in_one_save(
    node: tuple[SessionManager, RecordingLedger],
) -> None:
    manager, ledger = node
    sids = [manager.establish(p, T0)[0] for p in PEERS for _ in range(4)]
    ledger.log.clear()

    manager.tick(T0 + 5 * SECOND)  # every handshake times out; each schedules a peer retry

    (saved,) = ledger.saves()  # one save for the whole tick, not one per session
    sessions = [o for o in saved if isinstance(o, Session)]
    peers = [o for o in saved if isinstance(o, Peer)]
    assert len(sessions) == len(manager) == len(set(map(id, sessions)))
    assert sorted(p.peer_did for p in peers) == sorted(PEERS)  # touched 4 times each, once here
    # Replaying the ledger after the batched tick rebuilds the same sessions and peers.
    for sid in sids:
        assert stored(manager, sid) == manager.session(sid)
    for p in PEERS:
        assert stored(manager, manager.peer(p).id) == manager.peer(p)
        assert manager.peer(p).failed_attempts == 4


def test_outputs_are_derived_only_after_the_ticks_save_returned(
    node: tuple[SessionManager, RecordingLedger],
) -> None:
    manager, ledger = node
    sessions = timed_out_handshakes(manager, per_peer=2)
    ledger.log.clear()

    outputs = manager.tick(T0 + 400 * SECOND)  # every retry with backoff is due: 4 requests

    assert [what for what, _ in ledger.log] == ["save"] + ["initiate"] * len(sessions)
    for s in sessions:
        assert s.state == "handshake_initiated"
        assert [type(f) for f in frames_to(outputs, s)] == [HandshakeRequest]
        assert stored(manager, s.id) == s


def test_a_failed_save_sends_nothing_loses_nothing_and_the_timers_fire_again(
    node: tuple[SessionManager, RecordingLedger],
) -> None:
    manager, ledger = node
    sessions = timed_out_handshakes(manager, per_peer=2)
    ledger.log.clear()
    ledger.fail_next = True

    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        manager.tick(T0 + 400 * SECOND)

    assert ledger.log == []  # no request was derived: nothing could have been sent
    for s in sessions:  # memory is back to what the ledger holds, and re-armed
        assert manager.session(s.id) == stored(manager, s.id)
        assert manager.session(s.id).state == "failed"
    assert manager.next_wakeup_us() is not None
    assert manager.next_wakeup_us() <= T0 + 400 * SECOND  # type: ignore[operator]

    outputs = manager.tick(T0 + 400 * SECOND)
    assert [what for what, _ in ledger.log] == ["save"] + ["initiate"] * len(sessions)
    assert sum(isinstance(f.frame, HandshakeRequest) for f in outputs if isinstance(f, Send)) == 4
    for s in sessions:
        assert stored(manager, s.id).state == "handshake_initiated"


def test_a_session_firing_two_timers_in_one_tick_sends_what_both_asked_for(
    node: tuple[SessionManager, RecordingLedger],
) -> None:
    """Heartbeat 1 goes unanswered; the tick that notices it (2 s later) comes so late that
    the next heartbeat is due too: one tick records HeartbeatMissed then HeartbeatSent, and
    the outputs come from both, in order — then the unacknowledged data, whose retransmission
    timer is due in the same tick."""
    manager, ledger = node
    s = established(manager, PEERS[0], T0)
    quiet = established(manager, PEERS[1], T0 + 31 * SECOND)  # due in neither tick
    start = s.last_activity_us
    manager.submit(s.id, b"unacknowledged", start)
    assert [type(f) for f in frames_to(manager.tick(start + 30 * SECOND), s)] == [Heartbeat, Data]
    ledger.log.clear()

    outputs = manager.tick(start + 60 * SECOND)

    assert frames_to(outputs, s) == [
        Heartbeat(s.conversation, 2),
        Data(s.conversation, 1, b"unacknowledged"),
    ]
    assert frames_to(outputs, quiet) == []
    (saved,) = ledger.saves()
    assert list(saved) == [s]
    names = [type(e).__name__ for e in ledger.inner.events.get(s.id)]
    assert names[-2:] == ["HeartbeatMissed", "HeartbeatSent"]
    assert stored(manager, s.id) == s and s.missed_heartbeats == 1


def test_heartbeats_of_many_sessions_go_out_after_one_save_and_replay_identically(
    node: tuple[SessionManager, RecordingLedger],
) -> None:
    manager, ledger = node
    sessions = [established(manager, PEERS[n % 2], T0) for n in range(6)]
    ledger.log.clear()

    outputs = manager.tick(T0 + 31 * SECOND)

    assert len(ledger.saves()) == 1
    for s in sessions:
        assert frames_to(outputs, s) == [Heartbeat(s.conversation, 1)]
        assert stored(manager, s.id) == s
