"""The test-only ML-KEM-768 of mlkem768_reference.py (which gives docs/handshake.md's worked
example its encapsulation randomness) is FIPS 203: Wycheproof's seeded key generation and
derandomized encapsulation vectors, and the two libraries the project uses."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import mlkem768_reference as reference
import pqcrypto.kem.ml_kem_768 as pq
from cryptography.hazmat.primitives.asymmetric import mlkem

Tally = Callable[[str, str, str], None]
Load = Callable[[str], dict[str, Any]]


def _entries(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [test for group in doc["testGroups"] for test in group["tests"]]


def test_keygen_from_seed_is_wycheproofs(wycheproof: Load, tally: Tally) -> None:
    name = "mlkem_768_keygen_seed_test.json"
    failures = []
    for test in _entries(wycheproof(name)):
        seed = bytes.fromhex(test["seed"])
        ek, dk = reference.keygen(seed[:32], seed[32:])
        if (ek.hex(), dk.hex()) != (test["ek"], test["dk"]):
            failures.append(test["tcId"])
        tally(f"wycheproof/{name}", "reference", "expressed (ek, dk)")
    assert failures == []


def test_derandomized_encapsulation_is_wycheproofs(wycheproof: Load, tally: Tally) -> None:
    # The reference does not check its input key (FIPS 203 §7.2): only valid entries apply.
    name = "mlkem_768_encaps_test.json"
    failures, valid = [], 0
    for test in _entries(wycheproof(name)):
        if test["result"] != "valid":
            tally(f"wycheproof/{name}", "reference", "skipped (no input check)")
            continue
        valid += 1
        ciphertext, shared = reference.encapsulate(
            bytes.fromhex(test["ek"]), bytes.fromhex(test["m"])
        )
        if (ciphertext.hex(), shared.hex()) != (test["c"], test["K"]):
            failures.append(test["tcId"])
        tally(f"wycheproof/{name}", "reference", "expressed")
    assert failures == []
    assert valid > 100


def test_both_libraries_open_what_the_reference_seals() -> None:
    for n in range(3):
        seed = hashlib.sha3_512(b"ml-kem check %d" % n).digest()
        public, expanded = reference.keygen(seed[:32], seed[32:])
        key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        assert key.public_key().public_bytes_raw() == public
        ciphertext, shared = reference.encapsulate(public, hashlib.sha3_256(seed).digest())
        assert key.decapsulate(ciphertext) == shared
        assert bytes(pq.decaps(expanded, ciphertext)) == shared
