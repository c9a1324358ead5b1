"""The export on both backends, through the library: what a PostgreSQL ledger exports verifies
as a SQLite one's does (the same bytes, read by the same statements in each dialect)."""

from __future__ import annotations

import json

import pytest
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.session import Session
from l2_session.infrastructure.ledger.export import ExportError, export_bundle
from l2_session.tools.verify_bundle import verify_bundle

SECOND = 1_000_000


def test_whole_and_partial_exports_verify(ledger_factory, clock, identity, tmp_path):
    ledger = ledger_factory()
    with pytest.raises(ExportError, match="no checkpoint"):
        export_bundle(ledger, tmp_path / "early")
    now = clock.wall_us()
    sessions = [Session.open(f"did:key:z6MkPeer{i}", "initiator", SessionConfig(), now)
                for i in range(3)]  # fmt: skip
    for step in range(6):
        now += 5 * SECOND
        clock.set_wall_us(now)
        for s in sessions:
            if step == 0:
                s.initiate_handshake(now)
            elif step == 1:
                s.receive_valid_response(now, key_material=bytes(32), prekeys="p")
            else:
                s.submit_message(now, b"m%d" % step)
        ledger.save(*sessions)
    ledger.checkpoint()
    whole = verify_bundle(export_bundle(ledger, tmp_path / "whole").out, [identity.did])
    assert whole.ok and whole.anchored, whole.problems
    assert whole.events == whole.tree_size == ledger.tree_head()[0]
    middle = clock.wall_us() - 12 * SECOND
    out = export_bundle(ledger, tmp_path / "part", sessions=[sessions[1].id],
                        since_us=middle - 3 * SECOND, until_us=middle + 3 * SECOND).out  # fmt: skip
    part = verify_bundle(out, [identity.did])
    assert part.ok, part.problems
    assert list(part.sessions.values()) == ["proven: the next event is after the range"]
    roles = [json.loads(line)["role"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert roles[0] == "before" and roles[-1] == "after" and "selected" in roles
