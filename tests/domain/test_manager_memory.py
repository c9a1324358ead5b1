"""A long-running node keeps in memory only the sessions that can still change: a closed
session (SPEC-018 §3.1 ``[*]``, decision 8's cleanup) leaves the manager's memory and its
deadline heap; the ledger keeps it, and the manager reads it back when asked — on real signed
SQLite ledgers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import uuid4, uuid5

import pytest
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session.commands import HandshakeRequest, HandshakeResponse, Send
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import UnknownSession
from session_helpers import ALICE, BOB, SECOND, T0, unconfirmed_summaries

HOUR = 3600 * SECOND


def _manager(open_ledger: Callable[..., Any], did: str, ledger: Any = None) -> SessionManager:
    return SessionManager(
        did, ledger or open_ledger(did.rsplit("z6Mk", 1)[1].lower()), key_exchange="mock"
    )


def _failed_initiator(alice: SessionManager) -> Any:
    sid, _ = alice.establish(BOB, T0)
    alice.tick(T0 + 6 * SECOND)  # no response within handshake_timeout: failed
    assert alice.session(sid).state == "failed"
    return sid


def test_a_closed_session_leaves_memory_and_the_ledger_keeps_it(session_ledger_factory) -> None:
    alice = _manager(session_ledger_factory, ALICE)
    sid = _failed_initiator(alice)
    alice.cleanup(sid, T0 + 7 * SECOND)
    assert len(alice) == 0 and alice.next_wakeup_us() is None
    closed = alice.session(sid)  # read back from the ledger
    assert closed.closed and closed.id == sid
    assert [type(e).__name__ for e in alice.ledger.events.get(sid)][-1] == "CleanedUp"
    with pytest.raises(UnknownSession):
        alice.session(uuid4())


def test_a_session_not_closed_and_not_in_memory_is_still_unknown(session_ledger_factory) -> None:
    # Only closed sessions are read back by ``session``: a live one must be restored (and
    # armed) first, or its deadlines would never fire.
    alice = _manager(session_ledger_factory, ALICE)
    sid = _failed_initiator(alice)
    restarted = _manager(session_ledger_factory, ALICE, alice.ledger)
    with pytest.raises(UnknownSession):
        restarted.session(sid)
    assert restarted.restore(sid).state == "failed"


def test_sessions_whose_lease_runs_out_in_a_tick_free_their_memory(session_ledger_factory):
    # Initiator sessions whose handshakes fail: each stays (it retries, and its lease keeps
    # it) until the lease (ttl) closes it, then it leaves memory.
    alice = _manager(session_ledger_factory, ALICE)
    for i in range(3):
        alice.establish(f"{BOB}{i}", T0 + i)
    alice.tick(T0 + 6 * SECOND)
    assert len(alice) == 3 and {s.state for s in alice._sessions.values()} == {"failed"}
    now = T0 + 7 * SECOND
    while len(alice) and now < T0 + 2 * SessionConfig().ttl * SECOND:
        now = max(now, alice.next_wakeup_us() or now)
        alice.tick(now)  # retries fail again (nobody answers) until the leases run out
        now += SECOND
    assert len(alice) == 0 and alice.next_wakeup_us() is None
    assert len(alice._conversations) == 0 and len(alice._last_handshake_frame) == 0


def test_a_handshake_flood_leaves_no_sessions_behind(session_ledger_factory) -> None:
    # Decisions 15 and 18: INITs that are answered but never confirmed (a flood the rate
    # limits let through, or peers that vanish) fail after handshake_timeout and leave memory
    # in the same tick — the responder holds them for 5 s, not for the 24 h lease — and the
    # ledger gets one summary of them per interval, not four events each.
    alice = _manager(session_ledger_factory, ALICE)
    bob = _manager(session_ledger_factory, BOB)
    requests = []
    for i in range(20):
        _, outputs = alice.establish(BOB, T0 + i)
        [request] = [o.frame for o in outputs if isinstance(o, Send)]
        requests.append(request)
        bob.receive(ALICE, request, T0 + i)
    assert len(bob) == 20
    appends = bob.ledger.ledger_recorder.committer.requests
    bob.tick(T0 + 6 * SECOND)
    assert len(bob) == 0 and bob.next_wakeup_us() is None
    assert len(bob._conversations) == 0 and len(bob._last_handshake_frame) == 0
    assert bob.ledger.ledger_recorder.committer.requests == appends  # nothing written
    assert list(bob.ledger.events.get(uuid5(requests[0].conversation, BOB))) == []
    assert unconfirmed_summaries(bob.ledger) == []
    bob.tick(T0 + 6 * SECOND + bob._unconfirmed.interval_us)  # the interval is over
    assert bob.ledger.ledger_recorder.committer.requests == appends + 1
    assert unconfirmed_summaries(bob.ledger) == [{"timeout": 20}]
    bob.tick(T0 + 6 * SECOND + 3 * bob._unconfirmed.interval_us)  # nothing since: no summary
    assert bob.ledger.ledger_recorder.committer.requests == appends + 1


@pytest.mark.parametrize("restart", [False, True], ids=["same process", "restarted each time"])
def test_a_conversation_answered_again_after_each_close_gets_a_new_session(
    session_ledger_factory: Callable[..., Any], restart: bool
) -> None:
    # Each answer after a close opens a new responder session, named after the closed one; the
    # manager must find the newest closed one, in memory or not, or the next answer would
    # reuse a stored session's id (before the fix: a ConcurrencyConflict after a restart).
    # Each session holds a message its node queued, so it is written (decision 18) and keeps
    # its lease when it fails (decision 15); cleanup closes it.
    bob = _manager(session_ledger_factory, BOB)
    request = HandshakeRequest(uuid4(), b"\x01" * 32)
    seen = []
    for round_ in range(3):
        if restart:
            bob = _manager(session_ledger_factory, BOB, bob.ledger)
        now = T0 + round_ * 10 * SECOND
        outputs = bob.receive(ALICE, request, now)
        assert [type(o.frame) for o in outputs] == [HandshakeResponse]
        session = bob.session_for(request.conversation)
        seen.append(session.id)
        bob.submit(session.id, b"queued", now)
        bob.tick(now + 6 * SECOND)  # no confirmation: failed, holding the message
        bob.cleanup(session.id, now + 7 * SECOND)
    assert len(set(seen)) == 3
    assert all(bob.session(sid).closed for sid in seen)


def test_a_conversation_answered_again_after_an_unwritten_failure_reuses_its_id(
    session_ledger_factory: Callable[..., Any],
) -> None:
    # Decision 18: a responder's session that failed holding nothing left no trace, so the
    # next answer to the conversation is a new session under the same id, after a restart too.
    bob = _manager(session_ledger_factory, BOB)
    request = HandshakeRequest(uuid4(), b"\x01" * 32)
    for round_ in range(3):
        bob = _manager(session_ledger_factory, BOB, bob.ledger) if round_ == 2 else bob
        now = T0 + round_ * 10 * SECOND
        bob.receive(ALICE, request, now)
        session = bob.session_for(request.conversation)
        assert session is not None and session.id == uuid5(request.conversation, BOB)
        bob.tick(now + 6 * SECOND)
        assert bob.session_for(request.conversation) is None
    assert list(bob.ledger.events.get(session.id)) == []


def test_the_peer_table_is_bounded_and_lets_idle_peers_go_on_the_clock(session_ledger_factory):
    # Every request names a DID; the table keeps the most recently used few, never one with
    # events not yet saved, and lets the others go when the manager's clock passes.
    bob = SessionManager(
        BOB,
        session_ledger_factory("bob"),
        max_peers=3,
        peer_idle_us=60 * SECOND,
        key_exchange="mock",
    )
    for i in range(10):
        bob.receive(f"{ALICE}{i}", HandshakeRequest(uuid4(), b"\x01" * 32), T0 + i)
    assert len(bob._peers) == 3
    mallory = bob.peer(f"{ALICE}M", T0 + 10)
    mallory.authentication_failed(T0 + 10, 0.5)  # recorded, not saved yet
    for i in range(10):
        bob.peer(f"{ALICE}x{i}", T0 + 11)
    assert len(bob._peers) == 3 and bob.peer(f"{ALICE}M") is mallory  # kept, the oldest
    bob.ledger.save(mallory)
    bob.tick(T0 + 20 * SECOND)  # not idle long enough yet
    assert len(bob._peers) == 3
    bob.tick(T0 + 80 * SECOND)
    assert len(bob._peers) == 0
    again = bob.peer(f"{ALICE}M", T0 + 80 * SECOND)  # read back from the ledger
    assert again is not mallory and again.quarantined_until_us == mallory.quarantined_until_us


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_peers", 0, "max_peers must be an int >= 1, got 0"),
        ("peer_idle_us", -5, "peer_idle_us must be an int >= 1, got -5"),
        ("summary_interval_us", 1.5, "summary_interval_us must be an int >= 1, got 1.5"),
        ("transport", "websocket", "transport 'websocket' is not one of quic, utcp, tcp"),
    ],
)
def test_manager_limits_are_checked_on_construction(session_ledger_factory, option, value, message):
    with pytest.raises(ValueError, match=message):
        SessionManager(BOB, session_ledger_factory("bob"), **{option: value}, key_exchange="mock")
