"""``l2-session audit``: proofs printed as JSON, checked offline against the checkpoint that
signs their root; a changed proof, a wrong checkpoint and wrong input each refused by name."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from clirun import DemoLedger, refused, run


def head_of(ledger: DemoLedger) -> int:
    with sqlite3.connect(ledger.path) as db:
        (size,) = db.execute("SELECT MAX(position) FROM ledger_events").fetchone()
    db.close()
    return int(size)


def prove(ledger: DemoLedger, tmp_path: Path, *args: str) -> tuple[dict, Path]:
    result = run("audit", "prove", "--ledger", str(ledger.path), *args)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "proof.json"
    out.write_text(result.stdout, encoding="utf-8")
    return json.loads(result.stdout), out


def test_an_inclusion_proof_checks_against_the_checkpoint_it_carries(ledger, tmp_path):
    size = head_of(ledger)
    proof, path = prove(ledger, tmp_path, "--inclusion", "3")
    assert (proof["proof"], proof["position"], proof["tree_size"]) == ("inclusion", 3, size)
    assert proof["checkpoint"] == ledger.checkpoint.read_text(encoding="utf-8")
    result = run("audit", "check-proof", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"proof: checks (inclusion, tree of {size} events)" in result.stdout
    assert "root signed by did:key:" in result.stdout


def test_a_consistency_proof_checks_and_a_changed_hash_does_not(ledger, tmp_path):
    size = head_of(ledger)
    proof, path = prove(ledger, tmp_path, "--consistency", "5", str(size))
    assert run("audit", "check-proof", str(path)).returncode == 0
    proof["hashes"][0] = proof["hashes"][1]
    path.write_text(json.dumps(proof), encoding="utf-8")
    result = run("audit", "check-proof", str(path))
    assert result.returncode == 1 and "DOES NOT CHECK" in result.stdout, result.stdout


def test_a_proof_of_a_size_no_checkpoint_signs_says_its_root_is_unsigned(ledger, tmp_path):
    proof, path = prove(ledger, tmp_path, "--inclusion", "2", "--size", "4")
    assert proof["checkpoint"] is None
    result = run("audit", "check-proof", str(path))
    assert result.returncode == 0 and "root: not signed" in result.stdout
    # ... and a checkpoint of another size does not sign it
    result = run("audit", "check-proof", str(path), "--checkpoint", str(ledger.checkpoint))
    assert result.returncode == 1 and "another ledger, size or root" in result.stdout


def test_another_ledgers_checkpoint_or_an_untrusted_signer_is_refused(
    ledger, demo_ledger_files, tmp_path
):
    _, path = prove(ledger, tmp_path, "--inclusion", "1")
    other = demo_ledger_files[1].checkpoint
    result = run("audit", "check-proof", str(path), "--checkpoint", str(other))
    assert result.returncode == 1 and "DOES NOT MATCH" in result.stdout
    stranger = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    result = run("audit", "check-proof", str(path), "--trust", stranger)
    assert result.returncode == 1 and "not a --trust key" in result.stdout


def test_wrong_requests_and_inputs_are_one_line_each(ledger, tmp_path):
    size = head_of(ledger)
    refused(run("audit", "prove", "--ledger", str(ledger.path)), 2, "--inclusion", "--consistency")
    refused(
        run("audit", "prove", "--ledger", str(ledger.path), "--inclusion", str(size + 1)),
        2,
        f"position {size + 1} is not in a tree of {size}",
    )
    refused(
        run("audit", "prove", "--ledger", str(ledger.path), "--consistency", "3", "2"),
        2,
        "from 3 to 2",
    )
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json", encoding="utf-8")
    refused(run("audit", "check-proof", str(garbage)), 2, "is not a JSON proof")
    garbage.write_text('{"proof": "other"}', encoding="utf-8")
    refused(run("audit", "check-proof", str(garbage)), 2, "not 'inclusion' or 'consistency'")
    refused(run("audit", "check-proof", str(tmp_path / "none.json")), 2, "cannot read it")


def test_audit_verify_is_verify(ledger):
    result = run(
        "audit", "verify", "--ledger", str(ledger.path), "--checkpoint", str(ledger.checkpoint)
    )
    assert result.returncode == 0, result.stderr
    assert "ledger verification: OK" in result.stdout
    assert "signers: anchored" in result.stdout and "stored tree checked" in result.stdout


def test_json_output_says_the_same_as_the_text(ledger, tmp_path):
    """--json: the verdicts of verify and check-proof as data, with the same exit codes."""
    size = head_of(ledger)
    report = run("verify", str(ledger.path), "--checkpoint", str(ledger.checkpoint), "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert (data["ok"], data["events_checked"], data["anchored"]) == (True, size, True)
    assert data["problems"] == [] and data["tree_checked"] is True
    _, path = prove(ledger, tmp_path, "--inclusion", "3")
    good = run("audit", "check-proof", str(path), "--json")
    verdict = json.loads(good.stdout)
    assert good.returncode == 0 and verdict["checks"] and verdict["signed"]["matches"]
    stranger = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    bad = run("audit", "check-proof", str(path), "--trust", stranger, "--json")
    verdict = json.loads(bad.stdout)
    assert bad.returncode == 1 and not verdict["signed"]["matches"]
    assert "not a --trust key" in verdict["signed"]["problems"][0]


def test_the_ledger_is_an_argument_or_an_option_but_not_two_different_ones(ledger, tmp_path):
    both = run("verify", str(ledger.path), "--ledger", str(ledger.path))
    assert both.returncode == 0, both.stderr
    other = tmp_path / "other.sqlite3"
    refused(run("verify", str(ledger.path), "--ledger", str(other)), 2, "two ledgers given")
