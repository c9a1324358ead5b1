"""The forensic export (``l2-session export``) and its verifiers (``audit verify-bundle`` and the
standalone tools/verify_bundle.py): a round trip, every kind of tampering — by someone who
also rewrites the manifest's hashes — caught by name, partial exports and their boundaries,
and the standalone verifier run where only cryptography and blake3 are installed."""

from __future__ import annotations

import ast
import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from blake3 import blake3
from clirun import refused, run
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.session import Session
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.projections.history import iso

SECOND = 1_000_000
STANDALONE = Path(__file__).resolve().parents[2] / "tools" / "verify_bundle.py"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """Three sessions over a minute: one closed, two live; a checkpoint at the end."""
    path = tmp_path_factory.mktemp("export") / "ledger.sqlite3"
    clock = ManualClock()
    identity = NodeIdentity.generate()
    keys = KeyStore.create(path.with_name("node.keys"), identity=identity)
    ledger = SessionLedger(path, identity=identity, storage_key=keys.storage_key, clock=clock)
    try:
        now = clock.wall_us()
        sessions = [Session.open(f"did:key:z6MkPeer{i}", "initiator", SessionConfig(), now)
                    for i in range(3)]  # fmt: skip
        for s in sessions:
            s.initiate_handshake(now)
        ledger.save(*sessions)
        for step in range(1, 7):
            now += 10 * SECOND
            clock.set_wall_us(now)
            for s in sessions:
                if step == 1:
                    s.receive_valid_response(now, key_material=os.urandom(32), prekeys="p1")
                elif not s.closed:
                    s.submit_message(now, f"message {step}".encode())
            if step == 4:
                sessions[2].close(now)
            ledger.save(*sessions)
        ledger.checkpoint()
    finally:
        ledger.close()
    return path, {
        "ids": [str(s.id) for s in sessions],
        "signer": identity.did,
        "t0": clock.wall_us() - 60 * SECOND,
        "keys": str(keys.path),
    }


def export(ledger_path: Path, out: Path, *args: str) -> Path:
    result = run("export", str(ledger_path), "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    return out


def verify(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("audit", "verify-bundle", str(bundle), *args)


def lines(bundle: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (bundle / name).read_text().splitlines()]


def rewrite(bundle: Path, name: str, entries: list[dict] | str) -> None:
    """Change a file (JSON Lines from a list) and the manifest's hash of it, as a tamperer
    who knows the format would."""
    if not isinstance(entries, str):
        entries = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    (bundle / name).write_text(entries)
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / name).read_bytes()
    manifest["files"][name] = {"blake3": blake3(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_whole_export_verifies_with_both_verifiers(ledger, tmp_path):
    path, facts = ledger
    bundle = export(path, tmp_path / "bundle")
    result = verify(bundle, "--trust", facts["signer"], "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"] and report["anchored"], result.stdout
    assert report["events"] == report["tree_size"] == len(lines(bundle, "events.jsonl"))
    assert set(report["sessions"].values()) == {"proven: the bundle holds every event of the tree"}
    alone = subprocess.run([sys.executable, str(STANDALONE), str(bundle)], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert alone.returncode == 0 and "bundle verification: OK" in alone.stdout
    assert "UNANCHORED" in alone.stdout  # no --trust: said plainly
    assert not any("sealed" in e for e in lines(bundle, "events.jsonl"))


def test_a_whole_export_s_leaves_are_its_tree_and_a_version_1_bundle_still_verifies(
    ledger, tmp_path
):
    """Version 2: a whole export holds no proofs unless asked (``--proofs``): the verifier
    recomputes the tree from every leaf. Asked, or in a version 1 bundle (which carried them
    in a whole export too), each proof is checked as well."""
    path, _facts = ledger
    bundle = export(path, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["selection"]["partial"] is False
    assert "proofs.jsonl" not in manifest["files"] and not (bundle / "proofs.jsonl").exists()
    # Claimed partial, a whole export lacks the proofs a partial one needs.
    manifest["selection"]["partial"] = True
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    claimed = verify(bundle)
    assert claimed.returncode == 1
    assert "- missing_file: the manifest does not list proofs.jsonl" in claimed.stdout
    # With --proofs: every event's proof, each one checked.
    proven = export(path, tmp_path / "proven", "--proofs")
    proofs = lines(proven, "proofs.jsonl")
    events = lines(proven, "events.jsonl")
    assert [p["position"] for p in proofs] == [e["position"] for e in events]
    manifest = json.loads((proven / "manifest.json").read_text())
    assert manifest["version"] == 2 and "proofs.jsonl" in manifest["files"]
    for version in (2, 1):  # version 1 wrote the same files for a whole export
        manifest["version"] = version
        (proven / "manifest.json").write_text(json.dumps(manifest))
        for result in (verify(proven),
                       subprocess.run([sys.executable, str(STANDALONE), str(proven)],
                                      capture_output=True, text=True, timeout=120)):  # fmt: skip
            assert result.returncode == 0, result.stdout
            assert "bundle verification: OK" in result.stdout
    proofs[4]["hashes"][1] = base64.b64encode(bytes(32)).decode()
    rewrite(proven, "proofs.jsonl", proofs)
    changed = verify(proven)
    assert changed.returncode == 1 and "- bad_proof: position 5 does not lead" in changed.stdout


@pytest.mark.parametrize(
    "tamper, expected",
    [
        ("payload", "hash_mismatch"),
        ("payload_rehashed", "bad_signature"),
        ("removed", "missing_event"),
        ("reordered", "order"),
        ("added", "order"),
        ("proof", "bad_proof"),
        ("tree", "bad_proof"),
        ("checkpoint", "checkpoint_signature"),
        ("signer_document", "bad_signer"),
        ("file_only", "file_changed"),
    ],
)
def test_every_kind_of_tampering_is_caught(ledger, tmp_path, tamper, expected):
    path, facts = ledger
    bundle = export(path, tmp_path / "bundle")
    events = lines(bundle, "events.jsonl")
    if tamper == "payload":
        events[3]["payload"] = base64.b64encode(b'{"x":1}').decode()
        rewrite(bundle, "events.jsonl", events)
    elif tamper == "payload_rehashed":  # a new hash needs the signer's key
        from l2_session.infrastructure.ledger.format import event_hash

        e = events[3]
        e["payload"] = base64.b64encode(b'{"x":1}').decode()
        e["event_hash"] = base64.b64encode(event_hash(
            e["position"], e["session_id"].encode(), e["version"], e["topic"].encode(), e["timestamp"],
            base64.b64decode(e["payload"]), base64.b64decode(e["prev_session_hash"]),
            base64.b64decode(e["prev_global_hash"]), e["signer"].encode(),
        )).decode()  # fmt: skip
        rewrite(bundle, "events.jsonl", events)
    elif tamper == "removed":
        del events[5]
        rewrite(bundle, "events.jsonl", events)
    elif tamper == "reordered":
        events[4], events[5] = events[5], events[4]
        rewrite(bundle, "events.jsonl", events)
    elif tamper == "added":
        rewrite(bundle, "events.jsonl", [*events, events[0]])
    elif tamper == "proof":  # a partial export's proofs (a whole one's leaves are its tree)
        bundle = export(path, tmp_path / "partial", "--session", facts["ids"][0])
        proofs = lines(bundle, "proofs.jsonl")
        proofs[2]["hashes"][0] = proofs[3]["hashes"][0]
        rewrite(bundle, "proofs.jsonl", proofs)
    elif tamper == "tree":  # the node's own key signs a checkpoint of another tree
        from l2_session.infrastructure.ledger.checkpoint import Checkpoint

        identity = KeyStore.load(facts["keys"]).identity
        cp = Checkpoint.parse((bundle / "checkpoint.txt").read_text())
        forged = Checkpoint.sign(identity, cp.ledger_id, cp.position, cp.head_hash,
                                 cp.timestamp_us, root=bytes(32))  # fmt: skip
        rewrite(bundle, "checkpoint.txt", forged.to_text())
    elif tamper == "checkpoint":
        text = (bundle / "checkpoint.txt").read_text().replace("time ", "time 1", 1)
        rewrite(bundle, "checkpoint.txt", text)
    elif tamper == "signer_document":
        signers = json.loads((bundle / "signers.json").read_text())
        other = NodeIdentity.generate().did
        signers[0]["did_document"]["verificationMethod"][0]["publicKeyMultibase"] = other[8:]
        rewrite(bundle, "signers.json", json.dumps(signers))
    elif tamper == "file_only":
        (bundle / "sessions.json").write_text("[ ]\n")  # the same JSON, another file
    for result in (verify(bundle),
                   subprocess.run([sys.executable, str(STANDALONE), str(bundle)],
                                  capture_output=True, text=True, timeout=120)):  # fmt: skip
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert f"- {expected}" in result.stdout, result.stdout


def test_a_partial_export_proves_its_range_and_reveals_no_other_session(ledger, tmp_path):
    path, facts = ledger
    live, closed = facts["ids"][0], facts["ids"][2]
    t0 = facts["t0"]
    bundle = export(path, tmp_path / "bundle", "--session", live, "--session", closed,
                    "--from", iso(t0 + 15 * SECOND), "--until", iso(t0 + 35 * SECOND))  # fmt: skip
    events = lines(bundle, "events.jsonl")
    assert {e["session_id"] for e in events} == {live.replace("-", ""), closed.replace("-", "")}
    assert {e["role"] for e in events} == {"before", "selected", "after"}
    report = json.loads(verify(bundle, "--json").stdout)
    assert report["ok"], report
    assert set(report["sessions"].values()) == {"proven: the next event is after the range"}
    # The closed session to its end: its final event proves nothing follows.
    whole_session = export(path, tmp_path / "closed", "--session", closed)
    ends = json.loads(verify(whole_session, "--json").stdout)["sessions"]
    assert list(ends.values()) == ["proven: the session's last event is final (closed)"]
    # ... and without that final event, the bundle no longer proves its end.
    kept = [e for e in lines(whole_session, "events.jsonl")][:-1]
    proofs = lines(whole_session, "proofs.jsonl")[:-1]
    rewrite(whole_session, "events.jsonl", kept)
    rewrite(whole_session, "proofs.jsonl", proofs)
    ends = json.loads(verify(whole_session, "--json").stdout)["sessions"]
    assert next(iter(ends.values())).startswith("NOT PROVEN")


def test_a_partial_export_missing_an_event_inside_its_range_is_caught(ledger, tmp_path):
    path, facts = ledger
    t0 = facts["t0"]
    bundle = export(path, tmp_path / "bundle", "--session", facts["ids"][1],
                    "--from", iso(t0 + 15 * SECOND), "--until", iso(t0 + 45 * SECOND))  # fmt: skip
    events, proofs = lines(bundle, "events.jsonl"), lines(bundle, "proofs.jsonl")
    middle = next(i for i, e in enumerate(events) if e["role"] == "selected") + 1
    del events[middle], proofs[middle]
    rewrite(bundle, "events.jsonl", events)
    rewrite(bundle, "proofs.jsonl", proofs)
    result = verify(bundle)
    assert result.returncode == 1 and "- missing_event: session" in result.stdout
    # Dropping the boundary after the range: sessions.json still names it.
    bundle = export(path, tmp_path / "again", "--session", facts["ids"][1],
                    "--from", iso(t0 + 15 * SECOND), "--until", iso(t0 + 45 * SECOND))  # fmt: skip
    events, proofs = lines(bundle, "events.jsonl")[:-1], lines(bundle, "proofs.jsonl")[:-1]
    rewrite(bundle, "events.jsonl", events)
    rewrite(bundle, "proofs.jsonl", proofs)
    result = verify(bundle)
    assert result.returncode == 1 and "boundary event after the range is gone" in result.stdout


def test_bad_requests_are_one_line_and_leave_nothing(ledger, tmp_path):
    path, _facts = ledger
    out = tmp_path / "bundle"
    refused(run("export", str(path), "--out", str(out), "--session", "0" * 32), 2,
            "holds no session")  # fmt: skip
    refused(run("export", str(path), "--out", str(out), "--from", "2030-01-01T00:00:00Z"), 2,
            "nothing to export")  # fmt: skip
    refused(run("export", str(path), "--out", str(out), "--from", "yesterday"), 2, "--from",
            "ISO 8601")  # fmt: skip
    refused(run("export", str(path), "--out", str(tmp_path / "no" / "such" / "b")), 2,
            "is not a folder")  # fmt: skip
    assert not out.exists() and not list(tmp_path.glob(".bundle.*"))
    out.mkdir()
    refused(run("export", str(path), "--out", str(out)), 2, "already exists")
    refused(verify(tmp_path / "absent"), 2, "not a bundle")
    refused(verify(out), 2, "manifest.json")


def test_the_standalone_verifier_imports_only_the_standard_library_and_two_packages():
    tree = ast.parse(STANDALONE.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots - set(sys.stdlib_module_names) == {"cryptography", "blake3"}


def test_the_standalone_verifier_runs_where_only_its_two_packages_are(ledger, tmp_path):
    path, facts = ledger
    bundle = export(path, tmp_path / "bundle")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "cryptography", "blake3"],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert install.returncode == 0, install.stderr
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "l2-session" not in names and "eventsourcing" not in names
    alone = subprocess.run([str(python), str(STANDALONE), str(bundle), "--trust", facts["signer"]],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "bundle verification: OK" in alone.stdout


def test_the_sqlite_tables_serve_a_session_s_transitions_through_datasette(ledger, tmp_path):
    import socket
    import time
    import urllib.request

    path, facts = ledger
    closed = facts["ids"][2]
    db = tmp_path / "case.db"
    result = run("export", str(path), "--out", str(tmp_path / "bundle"), "--session", closed,
                 "--sqlite", str(db))  # fmt: skip
    assert result.returncode == 0, result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    datasette = Path(sys.executable).with_name("datasette")
    server = subprocess.Popen([str(datasette), "serve", str(db), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)  # fmt: skip
    try:
        url = (f"http://127.0.0.1:{port}/case/transitions.json?_shape=array"
               f"&session_id={closed.replace('-', '')}&_sort=position")  # fmt: skip
        for _ in range(100):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    rows = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"datasette did not answer: {server.stderr.read1().decode()}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [(r["from_state"], r["to_state"]) for r in rows] == [
        (None, "idle"),  # opened
        ("idle", "handshake_initiated"), ("handshake_initiated", "established"),
        ("established", "closed")]  # fmt: skip
    with sqlite3.connect(db) as conn:
        keys = conn.execute("PRAGMA foreign_key_list(transitions)").fetchall()
        assert {k[2] for k in keys} == {"events", "sessions"}
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_with_the_node_s_keys_a_live_session_s_end_is_proven(ledger, tmp_path):
    path, facts = ledger
    live = facts["ids"][0]
    plain = export(path, tmp_path / "plain", "--session", live)
    assert next(iter(json.loads(verify(plain, "--json").stdout)["sessions"].values())).startswith(
        "NOT PROVEN"
    )
    signed = export(path, tmp_path / "signed", "--session", live, "--keys", facts["keys"])
    report = json.loads(verify(signed, "--trust", facts["signer"], "--json").stdout)
    assert report["ok"], report
    assert list(report["sessions"].values()) == [
        "proven: the signed session heads name its last event as its newest"
    ]
    refused(run("export", str(path), "--out", str(tmp_path / "x"), "--session", live,
                "--keys", str(tmp_path / "absent.keys")), 2, "--keys", "no key store")  # fmt: skip
