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
