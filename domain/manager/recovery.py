"""Starting again over an existing ledger (decision 16 in docs/spec-decisions.md).

A node whose process died finds its sessions in the ledger as they were: ``established``
sessions that no longer have a connection, handshakes whose ephemeral half was in memory only.
``recover`` records ``node_restarted`` for each session that was live — the table
(domain/session/states.py) says where it leads: live sessions to ``suspended``, handshakes in
flight to ``failed`` — so that nothing sent before the crash is taken up again under the old keys.
``reconnected`` then resumes them (decision 4: fresh keys from the stored resumption secret,
no KEM) as soon as the transport reaches their peer.

The manager recovers by itself: the first entry point that is given a time (``tick``,
``receive``, ``establish``, ``resume``, ...) recovers first, once; ``TcpNode`` calls
``recover`` when it starts. The sessions that were live are found without replaying the
ledger: ``live_session_ids`` (one index pass, SessionLedger) or, for any other eventsourcing
application, a scan of the notification log for the events that open and close sessions.

Mixed into ``SessionManager``, which provides the lookups and bookkeeping declared below.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from l2_session.domain.manager.ledger import Ledger
from l2_session.domain.session.commands import Output
from l2_session.domain.session.errors import SessionError
from l2_session.domain.session.peer import Peer
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import State, Trigger, is_allowed, next_state
from l2_session.domain.session.topics import SESSION_CLEANED_UP, SESSION_CLOSED, SESSION_OPENED

log = logging.getLogger("l2_session.session")

OPENED_TOPIC = SESSION_OPENED
# The events that leave a session closed (FINAL): decision 8's cleanup, decision 17's close,
# named as the ledger stores them (topics.py).
FINAL_TOPICS = (SESSION_CLEANED_UP, SESSION_CLOSED)
_PAGE = 1000  # notifications read at a time by the scan


def live_in_notifications(
    recorder: Any, opened_topic: str, final_topics: Sequence[str]
) -> list[UUID]:
    """``live_session_ids`` for any eventsourcing application recorder: the opened sessions
    not yet closed, from the notification log filtered (by the recorder) to those events."""
    live: dict[UUID, None] = {}
    start = 1
    while True:
        page = recorder.select_notifications(
            start, _PAGE, topics=(opened_topic, *final_topics), inclusive_of_start=True
        )
        for n in page:
            if n.topic == opened_topic:
                live[n.originator_id] = None
            else:
                live.pop(n.originator_id, None)
        if len(page) < _PAGE:
            return list(live)
        start = page[-1].id + 1


class Recovery:
    # Provided by SessionManager (manager.py).
    _ledger: Ledger
    _rng: random.Random
    _sessions: dict[UUID, Session]
    _recovered: bool
    _awaiting_peer: dict[str, list[UUID]]

    def peer(self, peer_did: str, now_us: int = 0) -> Peer:
        raise NotImplementedError

    def _add(self, session: Session) -> None:
        raise NotImplementedError

    def _arm(self, s: Session, not_before_us: int = 0) -> None:
        raise NotImplementedError

    def _reload(self, session_ids: list[UUID], peers: dict[UUID, Peer]) -> None:
        raise NotImplementedError

    def resume(self, session_id: UUID, now_us: int) -> list[Output]:
        raise NotImplementedError

    def recover(self, now_us: int) -> list[UUID]:
        """Record that this node restarted, for every session that was live when its process
        died, in one ``save``; returns their ids. Found in the ledger, not listed by the
        caller. Once per manager: later calls (and the entry points, which call it first)
        find it done and return []."""
        if self._recovered:
            return []
        ids = self._live_session_ids()
        restarted: list[Session] = []
        peers: dict[UUID, Peer] = {}
        for sid in ids:
            s = self._sessions.get(sid) or self._ledger.repository.get(sid)
            if not isinstance(s, Session) or s.closed:
                continue
            # A clock stepped back across the restart must not leave a session unrecorded.
            at = max(now_us, s.at_us)
            retry_at = None
            if next_state(s.state, Trigger.NODE_RESTARTED) == State.FAILED and (
                s.role == "initiator"
            ):
                peer = self.peer(s.peer_did, at)
                peers[peer.id] = peer
                retry_at = peer.schedule_retry(at, self._rng.random())
            s.node_restarted(at, retry_at)
            restarted.append(s)
        try:
            if restarted:
                self._ledger.save(*restarted, *peers.values())
        except BaseException:
            self._reload([s.id for s in restarted if s.id in self._sessions], peers)
            raise
        self._recovered = True
        for s in restarted:
            self._add(s)
            self._arm(s)
            if s.key_material is not None:
                self._awaiting_peer.setdefault(s.peer_did, []).append(s.id)
        if restarted:
            log.info("node restarted: %d live session(s) recorded as such", len(restarted))
        return [s.id for s in restarted]

    def reconnected(self, peer_did: str, now_us: int) -> list[Output]:
        """The transport reaches ``peer_did`` (again): resume the sessions with it that the
        restart left waiting (decision 16), each with fresh keys from its stored secret. A
        session that cannot resume (no keys past ``ttl``, the peer quarantined) is left to
        its timers: a full handshake at its retry."""
        self._recover_once(now_us)
        out: list[Output] = []
        for sid in self._awaiting_peer.pop(peer_did, []):
            s = self._sessions.get(sid)
            if s is None or s.closed or not is_allowed(s.state, Trigger.INITIATE_RESUMPTION):
                continue  # it moved on meanwhile (closed, resumed by the peer, retried)
            try:
                out += self.resume(sid, now_us)
            except SessionError as error:
                log.info("session %s not resumed on reconnection: %s", sid, error)
        return out

    def _recover_once(self, now_us: int) -> None:
        if not self._recovered:
            self.recover(now_us)

    def _live_session_ids(self) -> list[UUID]:
        ledger: Any = self._ledger
        finder = getattr(ledger, "live_session_ids", None)
        if finder is not None:
            return list(finder(OPENED_TOPIC, FINAL_TOPICS))
        recorder = getattr(ledger, "recorder", None)
        if recorder is None or not hasattr(recorder, "select_notifications"):
            raise TypeError(
                f"{type(ledger).__name__} cannot name the sessions that were live when this "
                "node stopped: give it live_session_ids(opened_topic, final_topics) or use an "
                "eventsourcing application (SessionLedger)"
            )
        return live_in_notifications(recorder, OPENED_TOPIC, FINAL_TOPICS)
