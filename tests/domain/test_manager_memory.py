"""A long-running node keeps in memory only the sessions that can still change: a closed
session (SPEC-018 §3.1 ``[*]``, decision 8's cleanup) leaves the manager's memory and its
deadline heap; the ledger keeps it, and the manager reads it back when asked — on real signed
SQLite ledgers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest
from l2_session.domain.commands import HandshakeRequest, HandshakeResponse, Send
from l2_session.domain.config import SessionConfig
from l2_session.domain.errors import UnknownSession
from l2_session.domain.manager import SessionManager
from session_helpers import ALICE, BOB, SECOND, T0

HOUR = 3600 * SECOND


def _manager(open_ledger: Callable[..., Any], did: str, ledger: Any = None) -> SessionManager:
    return SessionManager(did, ledger or open_ledger(did.rsplit("z6Mk", 1)[1].lower()))


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
    # A stream of handshakes that never complete (a flood the rate limits let through, or
    # peers that vanish): the responder's sessions fail, and their lease (ttl) closes them.
    alice = _manager(session_ledger_factory, ALICE)
    bob = _manager(session_ledger_factory, BOB)
    for i in range(5):
        _, outputs = alice.establish(BOB, T0 + i)
        [request] = [o.frame for o in outputs if isinstance(o, Send)]
        bob.receive(ALICE, request, T0 + i)
    assert len(bob) == 5
    bob.tick(T0 + 6 * SECOND)
    assert {bob.session_for(c).state for c in list(bob._conversations)} == {"failed"}
    bob.tick(T0 + SessionConfig().ttl * SECOND + HOUR)
    assert len(bob) == 0 and bob.next_wakeup_us() is None
    assert len(bob._conversations) == 0 and len(bob._last_handshake_frame) == 0


@pytest.mark.parametrize("restart", [False, True], ids=["same process", "restarted each time"])
def test_a_conversation_answered_again_after_each_close_gets_a_new_session(
    session_ledger_factory: Callable[..., Any], restart: bool
) -> None:
    # Each answer after a close opens a new responder session, named after the closed one; the
    # manager must find the newest closed one, in memory or not, or the next answer would
    # reuse a stored session's id (before the fix: a ConcurrencyConflict after a restart).
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
        bob.tick(now + 6 * SECOND)  # no confirmation: failed (saved with the timeout)
        bob.cleanup(session.id, now + 7 * SECOND)
    assert len(set(seen)) == 3
    assert all(bob.session(sid).closed for sid in seen)
