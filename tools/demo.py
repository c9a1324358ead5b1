"""``l2-session demo``: sessions driven through SPEC-018's life on a fresh signed ledger.

Several sessions are established with the manual clock, exchange heartbeats and messages,
rotate their keys once, and are saved together (group commit); then the ledger is checkpointed,
verified, reopened and replayed, and a summary is printed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from l2_session.domain.config import SessionConfig
from l2_session.domain.session import Session
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import VerificationReport, verify

SECOND = 1_000_000


@dataclass(frozen=True)
class DemoResult:
    location: str
    sessions: int
    events: int
    append_seconds: float
    verify_seconds: float
    replayed_ok: bool
    report: VerificationReport
    checkpoint: str
    states: list[str]

    @property
    def ok(self) -> bool:
        return self.replayed_ok and self.report.ok


def run_demo(location: str | Path, *, sessions: int = 6, heartbeats: int = 24) -> DemoResult:
    clock = ManualClock()
    identity, storage_key = NodeIdentity.generate(), os.urandom(32)
    config = SessionConfig()
    interval = round(config.heartbeat_interval * SECOND)
    started = time.perf_counter()
    ledger = SessionLedger(location, identity=identity, storage_key=storage_key, clock=clock)
    try:
        now = clock.wall_us()
        live = [
            Session.open(f"did:key:z6MkDemoPeer{i}", "initiator", config, now)
            for i in range(sessions)
        ]
        for s in live:
            s.initiate_handshake(now)
        ledger.save(*live)
        now += 20_000
        for s in live:
            s.receive_valid_response(now, key_material=os.urandom(32), prekeys="demo-prekeys-v1")
            s.submit_message(now, b"hello over an established session")
        ledger.save(*live)
        for beat in range(heartbeats):
            now += interval  # SPEC-018 §2.2: a heartbeat after 30 s without activity
            clock.set_wall_us(now)
            for s in live:
                counter = s.heartbeat_due(now)
                s.receive_heartbeat_ack(now + 40_000, counter)  # answered within 2 s
                if beat % 6 == 0:
                    s.submit_message(now + 40_000, f"message {beat}".encode())
            now += 40_000
            ledger.save(*live)
        checkpoint = ledger.checkpoint()
        appended = time.perf_counter() - started
        head = ledger.ledger_recorder.head()[0]
    finally:
        ledger.close()

    reopened = SessionLedger(location, identity=identity, storage_key=storage_key, clock=clock)
    try:
        replayed_ok = all(
            reopened.repository.get(s.id).__dict__ == s.__dict__ | {"_pending_events": []}
            for s in live
        )
    finally:
        reopened.close()
    started = time.perf_counter()
    report = verify(location, checkpoint, trusted_signers=[identity.did])
    verified = time.perf_counter() - started
    return DemoResult(
        location=str(location),
        sessions=sessions,
        events=head,
        append_seconds=appended,
        verify_seconds=verified,
        replayed_ok=replayed_ok,
        report=report,
        checkpoint=checkpoint.to_text(),
        states=sorted({s.state.value for s in live}),
    )


def print_summary(result: DemoResult) -> None:
    print(f"l2-session demo: ledger {result.location}")
    print(
        f"  appended {result.events} signed events for {result.sessions} sessions "
        f"in {result.append_seconds:.2f} s (states now: {', '.join(result.states)})"
    )
    replay = "identical" if result.replayed_ok else "DIFFERENT"
    print(f"  reopened and replayed every session: {replay}")
    print(f"  verified in {result.verify_seconds:.2f} s against this checkpoint:")
    print("    " + result.checkpoint.rstrip().replace("\n", "\n    "))
    print(result.report.summary())
