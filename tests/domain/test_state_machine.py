"""Random command sequences with a random clock, against the Session aggregate and the ledger.

Invariants, after every step:
* every recorded event is a transition (or self-loop) of the §3.1 table, from the state the
  session was in;
* a refused command (any SessionError) recorded nothing;
* the queue matches a model: no message is lost, none is acknowledged twice, and the peer's
  messages are delivered exactly once, in order;
* replaying the stored events from the ledger rebuilds an identical session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from l2_session.domain.session import timers
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import SessionError
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import TRANSITIONS, State, Trigger
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from session_helpers import PEER, T0

SECOND = 1_000_000
STEPS = [0, 1_000, 50_000, 100_000, 2 * SECOND, 5 * SECOND, 30 * SECOND, 60 * SECOND,
         3600 * SECOND, 23 * 3600 * SECOND]  # fmt: skip
CONFIG = SessionConfig(max_message_size=16)
IDENTITY = NodeIdentity.generate()
STORAGE_KEY = os.urandom(32)

# Commands that need no argument beyond the time.
PLAIN = [
    "initiate_handshake", "heartbeat_due", "heartbeat_timed_out",
    "connectivity_lost", "partition_detected", "connectivity_restored", "degraded_timed_out",
    "retry", "retry_with_backoff", "time_to_rotate", "transport_failed", "transport_switched",
    "cleanup",
]  # fmt: skip
WITH_RETRY = ["receive_invalid_signature", "handshake_timed_out", "rotation_timed_out"]


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="l2s-hyp-"))
        self.clock = ManualClock()
        self.ledger = SessionLedger(
            self.dir / "ledger.sqlite3", identity=IDENTITY, storage_key=STORAGE_KEY,
            clock=self.clock, durability="off", snapshot_interval=25,
        )  # fmt: skip
        self.now = T0
        self.session = Session.open(PEER, "initiator", CONFIG, self.now)
        self.state_before: str = State.IDLE.value
        self.submitted: list[bytes] = []  # model of our outbound queue, by seq - 1
        self.acked = 0
        self.delivered: list[int] = []
        self.keys = 0

    @initialize(role=st.sampled_from(["initiator", "responder"]))
    def open_session(self, role: str) -> None:
        self.session = Session.open(PEER, role, CONFIG, self.now)  # type: ignore[arg-type]

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -------------------------------------------------------------- driving
    def attempt(self, command: str, *args: Any) -> None:
        version, pending = self.session.version, len(self.session.pending_events)
        try:
            getattr(self.session, command)(self.now, *args)
        except SessionError:
            assert self.session.version == version, f"refused {command} recorded something"
            assert len(self.session.pending_events) == pending
        self.check_new_events(self.session.pending_events[pending:])

    def fresh_key(self) -> bytes:
        self.keys += 1
        return self.keys.to_bytes(32, "big")

    @rule(step=st.sampled_from(STEPS))
    def advance(self, step: int) -> None:
        self.now += step
        self.clock.advance(step / SECOND)

    @rule(command=st.sampled_from(PLAIN))
    def plain(self, command: str) -> None:
        self.attempt(command)

    @rule(command=st.sampled_from(WITH_RETRY), backoff=st.sampled_from([None, 1, 300]))
    def failing(self, command: str, backoff: int | None) -> None:
        self.attempt(command, None if backoff is None else self.now + backoff * SECOND)

    @rule()
    def fire_next_timer(self) -> None:
        """Jump to the session's next deadline and fire it, as the manager's tick would."""
        due = timers.next_deadline(self.session)
        if due is None:
            return
        at, timer = due
        self.advance(max(0, at - self.now))
        args = (None,) if timer.value in WITH_RETRY else ()
        self.attempt(timer.value, *args)

    @rule(timer=st.sampled_from(list(timers.Timer)))
    def fire_timer(self, timer: timers.Timer) -> None:
        """Jump to one pending deadline (skipping earlier ones, as a stalled process would)."""
        at = timers.deadlines(self.session).get(timer)
        if at is not None:
            self.advance(max(0, at - self.now))
            self.attempt(timer.value, *((None,) if timer.value in WITH_RETRY else ()))

    @rule()
    def peer_cooperates(self) -> None:
        """The peer does the expected thing, so that runs get past the handshake often."""
        state = self.session.state
        if state == State.HANDSHAKE_INITIATED:
            self.attempt(
                "receive_valid_response", None if self.session.resuming else self.fresh_key()
            )
        elif state == State.HANDSHAKE_RECEIVED:
            self.attempt("receive_ack", self.fresh_key())
        elif state == State.ROTATING:
            self.attempt("rotation_complete", self.fresh_key())
        elif self.session.heartbeat_sent_us is not None:
            self.attempt("receive_heartbeat_ack", self.session.heartbeat_counter)
        elif state == State.IDLE:
            self.attempt("initiate_handshake")

    @rule(
        plan=st.lists(
            st.sampled_from(["timer", "peer", "submit", "ack", "deliver", "jump"]), max_size=12
        )
    )
    def live_for_a_while(self, plan: list[str]) -> None:
        """Several ordinary steps at once, so that runs reach deep states (rotation,
        suspension, resumption) and the ledger snapshots."""
        for step in plan:
            if step == "timer":
                self.fire_next_timer()
            elif step == "jump":
                self.fire_timer(timers.Timer.ROTATION)
                self.fire_timer(timers.Timer.DEGRADED_TIMEOUT)
                self.fire_timer(timers.Timer.SUSPENDED_RECOVERY)
            elif step == "peer":
                self.peer_cooperates()
            elif step == "submit":
                self.submit(b"m%d" % len(self.submitted))
            elif step == "ack":
                self.peer_acks(self.session.next_seq - 1)
            else:
                self.peer_message(0)

    @rule()
    def handshake_traffic(self) -> None:
        self.attempt("receive_handshake")
        self.attempt("receive_ack", self.fresh_key())
        self.attempt("receive_valid_response", self.fresh_key(), "prekeys-1")

    @rule(prekeys=st.sampled_from(["prekeys-1", "prekeys-2"]))
    def resume(self, prekeys: str) -> None:
        self.attempt("initiate_resumption", prekeys)
        self.attempt("receive_valid_response")

    @rule(stale=st.booleans())
    def heartbeat_ack(self, stale: bool) -> None:
        self.attempt("receive_heartbeat_ack", self.session.heartbeat_counter - stale)

    @rule()
    def rotation_complete(self) -> None:
        self.attempt("rotation_complete", self.fresh_key())

    @rule(payload=st.binary(max_size=20))
    def submit(self, payload: bytes) -> None:
        before = self.session.version
        self.attempt("submit_message", payload)
        if self.session.version > before:
            self.submitted.append(payload)

    @rule(seq=st.integers(0, 8))
    def peer_acks(self, seq: int) -> None:
        self.attempt("receive_message_ack", seq)
        if self.session.acked_up_to > self.acked:
            self.acked = self.session.acked_up_to

    @rule(offset=st.integers(-2, 2))
    def peer_message(self, offset: int) -> None:
        seq = self.session.next_expected_seq + offset
        self.attempt("receive_message", seq, b"p%d" % seq)

    @rule()
    def save_and_replay(self) -> None:
        self.ledger.save(self.session)
        replayed = self.ledger.repository.get(self.session.id)
        assert replayed == self.session
        assert timers.deadlines(replayed) == timers.deadlines(self.session)

    # -------------------------------------------------------------- invariants
    def check_new_events(self, events: list[Any]) -> None:
        for e in events:
            trigger = getattr(e, "trigger", None)
            if trigger is None:
                continue
            allowed = TRANSITIONS[State(self.state_before)]
            assert Trigger(trigger) in allowed, f"{trigger} recorded in {self.state_before}"
            assert allowed[Trigger(trigger)].value == e.state
            if type(e).__name__ == "MessageDelivered":
                self.delivered.append(e.seq)
            if e.state != "[*]":
                self.state_before = e.state

    @invariant()
    def queue_matches_model(self) -> None:
        unacked = self.session.unacknowledged()
        if self.session.closed:
            assert unacked == []
            return
        expected = list(enumerate(self.submitted, start=1))[self.acked :]
        assert unacked == expected, "a queued message was lost, duplicated or reordered"

    @invariant()
    def next_deadline_is_the_earliest_of_all_rules(self) -> None:
        """next_deadline asks only the rules of the state (timers.PENDING_IN); every rule,
        asked, must agree: the table hides no deadline and breaks ties in the same order."""
        pending = timers.deadlines(self.session)
        assert set(pending) <= timers.PENDING_IN[self.session.state] or self.session.closed
        if not pending:
            assert timers.next_deadline(self.session) is None
            return
        earliest = min(pending.values())
        first = next(t for t in timers.DEADLINES if pending.get(t) == earliest)
        assert timers.next_deadline(self.session) == (earliest, first)

    @invariant()
    def delivered_exactly_once_in_order(self) -> None:
        assert self.delivered == list(range(1, len(self.delivered) + 1))


SessionMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_session_state_machine = SessionMachine.TestCase
