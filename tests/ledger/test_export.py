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


def rewrite(bundle, name: str, text: str) -> None:
    """Change a file of a bundle and the manifest's hash of it, as a tamperer would."""
    from blake3 import blake3

    (bundle / name).write_text(text)
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = text.encode()
    manifest["files"][name] = {"blake3": blake3(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_signed_session_heads_prove_where_a_live_session_ends(
    ledger_factory, clock, identity, tmp_path
):
    from l2_session.infrastructure.identity import NodeIdentity

    ledger = ledger_factory()
    now = clock.wall_us()
    sessions = [Session.open(f"did:key:z6MkPeer{i}", "initiator", SessionConfig(), now)
                for i in range(4)]  # fmt: skip
    for s in sessions:
        s.initiate_handshake(now)
    ledger.save(*sessions)
    for step in range(3):
        now += 5 * SECOND
        clock.set_wall_us(now)
        for s in sessions:
            s.submit_message(now, b"m%d" % step) if step else s.receive_valid_response(
                now, key_material=bytes(32), prekeys="p"
            )
        ledger.save(*sessions)
    ledger.checkpoint()
    live = sessions[2].id
    unsigned = verify_bundle(export_bundle(ledger, tmp_path / "a", sessions=[live]).out)
    assert next(iter(unsigned.sessions.values())).startswith("NOT PROVEN")
    out = export_bundle(ledger, tmp_path / "b", sessions=[live], identity=identity).out
    signed = verify_bundle(out, [identity.did])
    assert signed.ok, signed.problems
    assert list(signed.sessions.values()) == [
        "proven: the signed session heads name its last event as its newest"
    ]
    # The session's newest event dropped (with its proof): the signed heads name it.
    events = (out / "events.jsonl").read_text().splitlines(keepends=True)[:-1]
    proofs = (out / "proofs.jsonl").read_text().splitlines(keepends=True)[:-1]
    rewrite(out, "events.jsonl", "".join(events))
    rewrite(out, "proofs.jsonl", "".join(proofs))
    dropped = verify_bundle(out, [identity.did])
    assert any(p.startswith("missing_event") and "newest event is version" in p
               for p in dropped.problems), dropped.problems  # fmt: skip
    # Heads signed by a key the ledger does not register are refused at export.
    with pytest.raises(ExportError, match="not a registered signer"):
        export_bundle(ledger, tmp_path / "c", sessions=[live], identity=NodeIdentity.generate())
    # A changed heads note no longer verifies.
    out = export_bundle(ledger, tmp_path / "d", sessions=[live], identity=identity).out
    text = (out / "heads.txt").read_text()
    lines = text.split("\n")
    lines[3] = str(int(lines[3]) + 1)
    rewrite(out, "heads.txt", "\n".join(lines))
    changed = verify_bundle(out, [identity.did])
    assert any(p.startswith("heads_signature") for p in changed.problems), changed.problems


@pytest.mark.parametrize("workers", [1, 2])
def test_parts_checked_apart_are_joined_where_they_meet(
    ledger_factory, clock, identity, tmp_path, monkeypatch, workers
):
    """The verifier checks the bundle in parts (of CHUNK lines; a whole export's cut by bytes,
    most parts here holding one line or none) in parallel with workers > 1, and joins them: a
    gap or a swap where two parts meet is caught as inside one."""
    from l2_session.tools import verify_bundle as module

    monkeypatch.setattr(module, "CHUNK", 4)
    monkeypatch.setattr(module, "STEP", 4)
    monkeypatch.setattr(module, "LINE_BYTES", 50)  # a whole export: parts of 200 bytes
    ledger = ledger_factory()
    now = clock.wall_us()
    sessions = [Session.open(f"did:key:z6MkPeer{i}", "initiator", SessionConfig(), now)
                for i in range(3)]  # fmt: skip
    for step in range(4):
        now += SECOND
        clock.set_wall_us(now)
        for s in sessions:
            if step == 0:
                s.initiate_handshake(now)
            elif step == 1:
                s.receive_valid_response(now, key_material=bytes(32), prekeys="p")
            else:
                s.submit_message(now, b"m")
        ledger.save(*sessions)
    ledger.checkpoint()
    out = export_bundle(ledger, tmp_path / "whole").out
    whole = verify_bundle(out, [identity.did], workers)  # the tree joined from ~50 parts
    assert whole.ok and whole.events == 15, whole.problems
    two = export_bundle(ledger, tmp_path / "two", sessions=[sessions[0].id, sessions[2].id]).out
    report = verify_bundle(two, [identity.did], workers)  # 10 events and their proofs, 3 parts
    assert report.ok and report.events == 10, report.problems
    events = (out / "events.jsonl").read_text().splitlines(keepends=True)
    for name, kept_events, expected in [
        ("gap", events[:4] + events[5:], "missing_event"),
        ("swap", [*events[:3], events[4], events[3], *events[5:]], "order"),
    ]:  # fmt: skip
        copy = tmp_path / name
        copy.mkdir()
        for f in out.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        rewrite(copy, "events.jsonl", "".join(kept_events))
        report = verify_bundle(copy, [identity.did], workers)
        assert any(p.startswith(expected) for p in report.problems), (name, report.problems)
