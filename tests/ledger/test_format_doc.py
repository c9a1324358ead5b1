"""docs/ledger-format.md's worked example must be what the code computes, value for value."""

from __future__ import annotations

import re
from pathlib import Path

from blake3 import blake3
from l2_session.infrastructure.identity import public_key_from_did_key
from l2_session.infrastructure.ledger.checkpoint import Checkpoint
from l2_session.infrastructure.ledger.example import worked_example

DOC = Path(__file__).resolve().parents[2] / "docs" / "ledger-format.md"


def documented_values() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"<!-- example:(\w+) -->\n```\n(.*?)\n```", text, re.DOTALL)
    }


def test_every_value_of_the_worked_example_matches_the_code():
    documented, computed = documented_values(), worked_example()
    assert set(documented) == set(computed)
    for name, value in computed.items():
        assert documented[name] == value.rstrip(), name


def test_the_example_verifies_from_the_document_alone():
    """What an independent verifier does with the documented bytes only."""
    doc = documented_values()
    for n in (1, 2):
        hash_input = bytes.fromhex(doc[f"event{n}_hash_input"])
        assert blake3(hash_input).hexdigest() == doc[f"event{n}_hash"]
        public_key_from_did_key(doc["signer"]).verify(
            bytes.fromhex(doc[f"event{n}_signature"]), bytes.fromhex(doc[f"event{n}_hash"])
        )
    assert doc["event1_payload"].encode().hex() in doc["event1_hash_input"]
    assert doc["event1_hash"] in doc["event2_hash_input"]  # both chains link event 2 to event 1
    assert blake3(bytes.fromhex(doc["sealed_blob"])).hexdigest() == doc["sealed_digest"]
    assert doc["sealed_digest"] in doc["event2_payload"]
    checkpoint = Checkpoint.parse(doc["checkpoint"] + "\n")
    assert checkpoint.signature_valid()
    assert checkpoint.head_hash.hex() == doc["event2_hash"]


def test_the_tree_checkpoint_and_registration_verify_from_the_document_alone():
    """Format 2, by hand from the documented bytes: the leaves and root of the two events'
    tree (§13), the proof of event 1, the registration (§7) and the checkpoint as any C2SP
    signed-note verifier checks it with the documented verifier key (§5)."""
    import base64
    import hashlib
    import struct

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    doc = documented_values()
    h1, h2 = bytes.fromhex(doc["event1_hash"]), bytes.fromhex(doc["event2_hash"])
    leaf1 = blake3(b"\x00" + h1).digest()
    leaf2 = blake3(b"\x00" + h2).digest()
    assert (leaf1.hex(), leaf2.hex()) == (doc["leaf1_hash"], doc["leaf2_hash"])
    root = blake3(b"\x01" + leaf1 + leaf2).digest()
    assert root.hex() == doc["tree_root"]
    assert doc["inclusion_proof_event1"] == leaf2.hex()  # the sibling, and nothing else

    key = public_key_from_did_key(doc["signer"])
    statement = bytes.fromhex(doc["registration_statement"])
    ledger_id = doc["ledger_id"].encode()
    signer = doc["signer"].encode()
    t0 = 1_767_225_600_000_000
    assert statement == (
        b"l2-session/ledger/signer/v2\n"
        + struct.pack(">I", len(ledger_id)) + ledger_id
        + struct.pack(">I", len(signer)) + signer
        + struct.pack(">q", t0)
    )  # fmt: skip
    key.verify(bytes.fromhex(doc["registration_signature"]), statement)

    note = doc["checkpoint"] + "\n"
    body, _, signature_line = note.partition("\n\n")
    lines = body.split("\n")
    assert lines[0] == "l2-session/ledger/" + doc["ledger_id"]
    assert lines[1] == "2" and base64.b64decode(lines[2]) == root
    assert lines[3] == "head " + base64.b64encode(h2).decode()
    name, key_id_hex, encoded = doc["checkpoint_verifier_key"].split("+", 2)
    public = base64.b64decode(encoded)
    assert name == doc["signer"] and public[0] == 1 and key_id_hex == doc["checkpoint_key_id"]
    assert hashlib.sha256(name.encode() + b"\n\x01" + public[1:]).digest()[:4].hex() == key_id_hex
    dash, signed_by, sig = signature_line.rstrip("\n").split(" ")
    assert (dash, signed_by) == ("\u2014", name)
    raw = base64.b64decode(sig)
    assert raw[:4].hex() == key_id_hex
    Ed25519PublicKey.from_public_bytes(public[1:]).verify(raw[4:], (body + "\n").encode())
    old = Checkpoint.parse(doc["checkpoint_format1"] + "\n")
    assert old.version == 1 and old.signature_valid() and old.head_hash == h2
