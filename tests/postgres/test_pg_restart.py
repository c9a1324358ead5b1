"""Decision 16 on a PostgreSQL ledger that several nodes share: a restarted node finds the
sessions it left live — not the ones it closed, not another node's — in one statement, and
records the restart of each."""

from __future__ import annotations

import os
from typing import Any

import pytest
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.recovery import FINAL_TOPICS, OPENED_TOPIC
from l2_session.domain.session.config import DEFAULT_CONFIG
from l2_session.domain.session.session import Session
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import verify

pytestmark = pytest.mark.postgres

T0 = 1_767_225_600_000_000


def _established(peer: str) -> Session:
    s = Session.open(peer, "initiator", DEFAULT_CONFIG, T0)
    s.initiate_handshake(T0)
    s.receive_valid_response(T0 + 1_000, bytes(range(32)), prekeys="p")
    return s


def test_a_restarted_node_recovers_its_own_live_sessions_from_a_shared_ledger(pg_url: str) -> None:
    key = os.urandom(32)
    nodes = {name: NodeIdentity.generate() for name in ("a", "b")}
    opened: list[Any] = []
    try:
        live: dict[str, Any] = {}
        for name, identity in nodes.items():
            ledger = SessionLedger(pg_url, identity=identity, storage_key=key)
            opened.append(ledger)
            kept, ended = _established(f"did:key:z6Mk{name}1"), _established(f"did:key:z6Mk{name}2")
            ended.close(T0 + 2_000)
            ledger.save(kept, ended)
            live[name] = kept.id

        restarted = SessionLedger(pg_url, identity=nodes["a"], storage_key=key)
        opened.append(restarted)
        assert restarted.live_session_ids(OPENED_TOPIC, FINAL_TOPICS) == [live["a"]]
        manager = SessionManager(nodes["a"].did, restarted, key_exchange="mock")
        assert manager.recover(T0 + 60_000_000) == [live["a"]]
        assert manager.session(live["a"]).state == "suspended"
        names = [type(e).__name__ for e in restarted.events.get(live["a"])]
        assert names[-1] == "NodeRestarted"
        assert [type(e).__name__ for e in restarted.events.get(live["b"])][-1] == "Established"
        report = verify(pg_url)
        assert report.ok, report.summary()
    finally:
        for ledger in opened:
            ledger.close()
