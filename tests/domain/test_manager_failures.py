"""What the manager does when a save fails or a frame cannot be made: memory goes back to
what the ledger holds, nothing is delivered twice or lost, and one session's trouble does not
stall the others (found in review; a real SQLite ledger that fails once)."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest
from l2_session.domain.handshake.admission import HandshakeRefused
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session.commands import Data, Deliver, HandshakeRequest, HandshakeResponse
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import SessionError
from session_helpers import ALICE, BOB, SECOND, T0
from test_manager_tick import PEERS, RecordingKeyExchange, RecordingLedger, frames_to


class RefusingKeyExchange(RecordingKeyExchange):
    """Cannot make a handshake request to ``refused`` (its prekeys expired, say)."""

    def __init__(self, refused: str) -> None:
        super().__init__([])
        self.refused = refused

    def initiate(self, conversation: UUID, peer_did: str, now_us: int) -> bytes:
        if peer_did == self.refused:
            raise HandshakeRefused(f"no usable prekeys for {peer_did}")
        return super().initiate(conversation, peer_did, now_us)


def test_a_message_whose_save_failed_is_delivered_when_it_comes_again(session_ledger_factory):
    ledger = RecordingLedger(session_ledger_factory("bob"), [])
    bob = SessionManager(BOB, ledger, SessionConfig(), key_exchange="mock")
    sid, _ = bob.establish(ALICE, T0)
    session = bob.session(sid)
    bob.receive(ALICE, HandshakeResponse(session.conversation, b"\x01" * 32), T0)
    data = Data(session.conversation, 1, b"hello")

    ledger.fail_next = True
    with pytest.raises(Exception, match="disk is full"):
        bob.receive(ALICE, data, T0 + SECOND)
    # The sender resends (no ack came): delivered now, exactly once.
    delivered = [o for o in bob.receive(ALICE, data, T0 + 2 * SECOND) if isinstance(o, Deliver)]
    assert [(d.seq, d.payload) for d in delivered] == [(1, b"hello")]
    assert [o for o in bob.receive(ALICE, data, T0 + 3 * SECOND) if isinstance(o, Deliver)] == []
    assert ledger.repository.get(sid).next_expected_seq == 2


def test_a_new_session_whose_first_save_failed_is_forgotten(session_ledger_factory):
    ledger = RecordingLedger(session_ledger_factory("bob"), [])
    bob = SessionManager(BOB, ledger, SessionConfig(), key_exchange="mock")
    ledger.fail_next = True
    with pytest.raises(Exception, match="disk is full"):
        bob.establish(ALICE, T0)
    assert len(bob) == 0
    assert bob.next_wakeup_us() is None  # no timer for a session the ledger never held


def test_a_frame_one_session_cannot_make_does_not_stall_the_others(session_ledger_factory):
    """A tick's outputs are derived after its save; if one session's request cannot be made,
    the others still go out and every fired session is re-armed."""
    ledger = RecordingLedger(session_ledger_factory("alice"), [])
    alice = SessionManager(
        ALICE, ledger, SessionConfig(), key_exchange=RefusingKeyExchange(PEERS[0])
    )
    sids = [alice.establish(PEERS[1], T0)[0]]
    alice._kx.refused = ""  # type: ignore[attr-defined]  # the first requests go out
    sids.insert(0, alice.establish(PEERS[0], T0)[0])
    alice._kx.refused = PEERS[0]  # type: ignore[attr-defined]
    alice.tick(T0 + 5 * SECOND)  # both handshakes time out: retry with backoff
    sessions = [alice.session(sid) for sid in sids]
    assert [s.state for s in sessions] == ["failed", "failed"]
    retry_at = max(s.retry_at_us for s in sessions)
    out = alice.tick(retry_at)
    assert [type(f).__name__ for f in frames_to(out, sessions[1])] == ["HandshakeRequest"]
    assert frames_to(out, sessions[0]) == []
    assert [s.state for s in sessions] == ["handshake_initiated", "handshake_initiated"]
    # The refused one is still timed: its handshake times out and is retried again.
    alice.tick(retry_at + 5 * SECOND)
    assert sessions[0].state == "failed"


def test_direct_calls_still_raise_when_their_frame_cannot_be_made(session_ledger_factory):
    ledger = RecordingLedger(session_ledger_factory("alice"), [])
    alice = SessionManager(ALICE, ledger, SessionConfig(), key_exchange=RefusingKeyExchange(BOB))
    with pytest.raises(SessionError, match="no usable prekeys"):
        alice.establish(BOB, T0)


def _answered(bob: SessionManager, count: int) -> list[Any]:
    conversations = [uuid4() for _ in range(count)]
    for c in conversations:
        assert bob.receive(ALICE, HandshakeRequest(c, b"\x02" * 32), T0)  # a RESPONSE goes out
    return conversations


def test_last_handshake_frames_are_forgotten_once_nothing_can_ask_for_them(session_ledger_factory):
    """The responder keeps its RESPONSE to answer a lost confirmation again; a handshake
    that failed (or completed) no longer needs it, so handshakes that never finish do not
    grow the manager's memory."""
    bob = SessionManager(BOB, session_ledger_factory("bob"), SessionConfig(), key_exchange="mock")
    _answered(bob, 5)
    assert len(bob._last_handshake_frame) == 5
    bob.tick(T0 + 5 * SECOND)  # no confirmation came: every handshake fails on its timeout
    assert bob._last_handshake_frame == {}


def test_a_response_whose_save_failed_is_dropped_when_it_comes_again(session_ledger_factory):
    """The deterministic key exchange behaves as PQxdh's engine does: once a response was
    used, its handshake is over in memory, so the same response again (the responder resends
    it after the save of the first failed) is stale — dropped, the session waits for its
    timeout and retries — not an authentication failure that quarantines an honest peer."""
    ledger = RecordingLedger(session_ledger_factory("bob"), [])
    bob = SessionManager(BOB, ledger, SessionConfig(), key_exchange="mock")
    sid, _ = bob.establish(ALICE, T0)
    response = HandshakeResponse(bob.session(sid).conversation, b"\x01" * 32)

    ledger.fail_next = True
    with pytest.raises(Exception, match="disk is full"):
        bob.receive(ALICE, response, T0 + SECOND)
    dropped = bob.dropped_frames
    assert bob.receive(ALICE, response, T0 + 2 * SECOND) == []
    assert bob.dropped_frames == dropped + 1
    assert bob.session(sid).state == "handshake_initiated"
    bob.peer(ALICE).check_admissible(T0 + 2 * SECOND)  # not quarantined
    # No answer: the handshake times out and is retried, as for a lost response.
    bob.tick(T0 + 6 * SECOND)
    assert bob.session(sid).state == "failed"
    assert ledger.repository.get(sid).failure_reason == "timeout"
