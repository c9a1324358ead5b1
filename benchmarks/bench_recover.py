"""What a restart costs before the node can go on (decision 16): finding the sessions it left
live, on a ledger with many closed sessions and some live ones, and recording the restart.

Built: ``closed`` sessions (opened, established, two heartbeats, closed: 8 events each) and
``live`` sessions (established, one heartbeat: 5 events each), saved 200 sessions at a time,
on a signed SQLite ledger (durability normal). A second ledger holds few long sessions (1,000
events each, half of them closed), to show that the statement's cost follows the number of
sessions, not of events.

Timed, each on a ledger reopened as a restarted process would open it:
- ``live_session_ids``: the one statement SessionManager.recover asks the ledger (no event is
  decoded) — median of 5;
- the notification-log scan, the fallback for eventsourcing applications without it;
- ``recover``: the statement, replaying the live sessions, and one save of a NodeRestarted
  event for each (with the snapshot each session entering ``suspended`` takes) — median of 3,
  each by a fresh manager (each records one more restart); and replaying the live sessions
  alone;
- for contrast, replaying every session to find the live ones (what recovery avoids).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.recovery import FINAL_TOPICS, OPENED_TOPIC, live_in_notifications
from l2_session.domain.session.config import DEFAULT_CONFIG
from l2_session.domain.session.session import Session
from l2_session.domain.session.timers import Timer, deadlines
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger

from benchmarks.common import figure, median, scratch_dir, timed, timed_call

T0 = 1_767_225_600_000_000
KEY = bytes(range(32))
BATCH = 200


def _session(n: int, closed: bool) -> Session:
    s = Session.open(f"did:key:z6MkPeer{n}", "initiator", DEFAULT_CONFIG, T0)
    s.initiate_handshake(T0)
    s.receive_valid_response(T0 + 1_000, KEY, prekeys="p")
    for _ in range(2 if closed else 1):
        sent = deadlines(s)[Timer.SEND_HEARTBEAT]
        counter = s.heartbeat_due(sent)
        s.receive_heartbeat_ack(sent + 1_000, counter)
    if closed:
        s.close(s.at_us + 1_000)
    return s


def _build(path: Path, identity: NodeIdentity, key: bytes, closed: int, live: int) -> list[Any]:
    ledger = SessionLedger(path, identity=identity, storage_key=key, durability="normal")
    ids = []
    try:
        kinds = [True] * closed + [False] * live
        for start in range(0, len(kinds), BATCH):
            batch = [_session(start + i, c) for i, c in enumerate(kinds[start : start + BATCH])]
            ledger.save(*batch)
            ids += [s.id for s in batch]
    finally:
        ledger.close()
    return ids


def _build_long(path: Path, identity: NodeIdentity, key: bytes, sessions: int) -> None:
    ledger = SessionLedger(path, identity=identity, storage_key=key, durability="normal")
    try:
        for n in range(sessions):
            s = _session(n, closed=False)
            until = 0
            while s.version < 999:
                until += 1024
                s.reserve_counters(s.at_us + 10, until)
            if n % 2:
                s.close(s.at_us + 10)
            ledger.save(s)
    finally:
        ledger.close()


def run(quick: bool) -> dict[str, Any]:
    closed, live = (2_000, 50) if quick else (20_000, 200)
    identity, key = NodeIdentity.generate(), os.urandom(32)
    with scratch_dir("recover-") as folder:
        path = folder / "node.sqlite3"
        start = time.perf_counter()
        ids = _build(path, identity, key, closed, live)
        build_s = time.perf_counter() - start

        def reopen() -> SessionLedger:
            return SessionLedger(path, identity=identity, storage_key=key)

        ledger = reopen()
        try:
            named = ledger.live_session_ids(OPENED_TOPIC, FINAL_TOPICS)
            if len(named) != live:
                raise AssertionError(f"found {len(named)} live sessions, built {live}")
            query_ms = [
                timed(lambda: ledger.live_session_ids(OPENED_TOPIC, FINAL_TOPICS)) * 1000
                for _ in range(5)
            ]
            scan_s, scanned = timed_call(
                lambda: live_in_notifications(ledger.recorder, OPENED_TOPIC, FINAL_TOPICS)
            )
            if sorted(scanned) != sorted(named):
                raise AssertionError("the notification scan disagrees with the statement")
            live_replay_s = timed(lambda: [ledger.repository.get(sid) for sid in named])
            replay_s = timed(lambda: [ledger.repository.get(sid) for sid in ids])
            events = ledger.ledger_recorder.head()[0]
        finally:
            ledger.close()

        long_path = folder / "long.sqlite3"
        long_sessions = 20 if quick else 100
        _build_long(long_path, identity, key, long_sessions)
        ledger = SessionLedger(long_path, identity=identity, storage_key=key)
        try:
            long_events = ledger.ledger_recorder.head()[0]
            if len(ledger.live_session_ids(OPENED_TOPIC, FINAL_TOPICS)) != long_sessions // 2:
                raise AssertionError("wrong number of live long sessions")
            long_ms = [
                timed(lambda: ledger.live_session_ids(OPENED_TOPIC, FINAL_TOPICS)) * 1000
                for _ in range(5)
            ]
        finally:
            ledger.close()

        recover_ms = []
        for attempt in range(3):
            ledger = reopen()
            try:
                manager = SessionManager(identity.did, ledger, key_exchange="mock")
                now = T0 + (attempt + 1) * 3_600_000_000
                seconds, found = timed_call(lambda m=manager, n=now: m.recover(n))
                if len(found) != live:
                    raise AssertionError(f"recovered {len(found)} sessions, built {live}")
                recover_ms.append(seconds * 1000)
            finally:
                ledger.close()

    shape = f"{closed} closed + {live} live sessions, {events} events"
    return {
        "closed_sessions": closed,
        "live_sessions": live,
        "events": events,
        "build_s": build_s,
        "figures": [
            figure("live_session_ids (one statement)", median(query_ms), "ms", note=shape),
            figure("recover (find, replay the live, record)", median(recover_ms), "ms", note=shape),
            figure("of which: replaying the live sessions", live_replay_s * 1000, "ms", note=shape),
            figure("notification-log scan (fallback)", scan_s * 1000, "ms", note=shape),
            figure("contrast: replay every session", replay_s * 1000, "ms", note=shape),
            figure(
                "live_session_ids, long sessions",
                median(long_ms),
                "ms",
                note=f"{long_sessions} sessions of ~1,000 events, half closed: "
                f"{long_events} events",
            ),
        ],
    }
