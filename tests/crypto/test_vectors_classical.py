"""BLAKE3, Ed25519, X25519 and ChaCha20-Poly1305 against the published vectors (SPEC-018 §7.2).

Every entry is held to its file's verdict: ``valid`` must compute the listed output, ``invalid``
must be rejected, ``acceptable`` may go either way but, when computed, must equal the listed
output. The tallies are asserted so a vector file that silently shrinks, or an entry that stops
being checked, fails the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

Tally = Callable[[str, str, str], None]
Load = Callable[[str], dict[str, Any]]


def _entries(doc: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(group, test) for group in doc["testGroups"] for test in group["tests"]]


# --- BLAKE3 -----------------------------------------------------------------------------------


def _blake3_input(length: int) -> bytes:
    # The file's _comment: input byte i is i % 251.
    return bytes(i % 251 for i in range(length))


def test_blake3_all_modes_all_lengths_extended_output(shared_vectors: Path, tally: Tally) -> None:
    doc = json.loads((shared_vectors / "blake3" / "test_vectors.json").read_text())
    key = doc["key"].encode()
    context = doc["context_string"]
    failures = []
    for case in doc["cases"]:
        data = _blake3_input(case["input_len"])
        for mode, hasher in (
            ("hash", lambda d: blake3.blake3(d)),
            ("keyed_hash", lambda d: blake3.blake3(d, key=key)),
            ("derive_key", lambda d: blake3.blake3(d, derive_key_context=context)),
        ):
            expected = bytes.fromhex(case[mode])
            h = hasher(data)
            # The default 32-byte output, the full extended output, and every shorter length:
            # XOF outputs must be prefixes of one another.
            got = {
                "default": h.digest() == expected[:32],
                "extended": h.digest(length=len(expected)) == expected,
                "prefixes": all(
                    h.digest(length=n) == expected[:n] for n in range(1, len(expected))
                ),
                "seek": h.digest(length=len(expected) - 40, seek=40) == expected[40:],
            }
            # Incremental hashing across chunk boundaries must agree with one-shot hashing.
            incremental = hasher(b"")
            for start in range(0, len(data), 1000):
                incremental.update(data[start : start + 1000])
            got["incremental"] = incremental.digest(length=len(expected)) == expected
            for check, ok in got.items():
                if not ok:
                    failures.append((case["input_len"], mode, check))
            tally("blake3/test_vectors.json", "blake3", "expressed")
    assert failures == []
    assert len(doc["cases"]) == 35
    assert all(len(bytes.fromhex(c["hash"])) == 131 for c in doc["cases"])


# --- Ed25519 ----------------------------------------------------------------------------------


def test_ed25519_wycheproof(wycheproof: Load, tally: Tally) -> None:
    doc = wycheproof("ed25519_test.json")
    failures = []
    for group, test in _entries(doc):
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(group["publicKey"]["pk"]))
        try:
            public.verify(bytes.fromhex(test["sig"]), bytes.fromhex(test["msg"]))
            outcome = "valid"
        except InvalidSignature:
            outcome = "invalid"
        if outcome != test["result"]:
            failures.append((test["tcId"], test["comment"], test["result"], outcome))
        tally("wycheproof/ed25519_test.json", "cryptography", "expressed")
    assert failures == []
    assert len(_entries(doc)) == doc["numberOfTests"] == 151


# --- X25519 -----------------------------------------------------------------------------------


def test_x25519_wycheproof(wycheproof: Load, tally: Tally) -> None:
    doc = wycheproof("x25519_test.json")
    failures = []
    outcomes: dict[str, int] = {}
    rejected: set[str] = set()
    for _group, test in _entries(doc):
        private = X25519PrivateKey.from_private_bytes(bytes.fromhex(test["private"]))
        try:
            shared = private.exchange(
                X25519PublicKey.from_public_bytes(bytes.fromhex(test["public"]))
            )
        except ValueError:
            shared = None
        if shared is not None and shared.hex() != test["shared"]:
            failures.append((test["tcId"], "wrong shared secret"))
        elif shared is None and test["result"] != "acceptable":
            failures.append((test["tcId"], f"rejected a {test['result']} entry"))
        if shared is None:
            rejected.add(test["tcId"])
        label = f"{test['result']}-{'computed' if shared is not None else 'rejected'}"
        outcomes[label] = outcomes.get(label, 0) + 1
        tally("wycheproof/x25519_test.json", "cryptography", label)
    assert failures == []
    # The handshake relies on the library refusing an all-zero shared secret (a low-order peer
    # key, RFC 7748 §6.1): exactly the 31 ZeroSharedSecret entries are the rejected ones.
    zero = {t["tcId"] for _, t in _entries(doc) if "ZeroSharedSecret" in t["flags"]}
    assert rejected == zero
    assert outcomes == {
        "valid-computed": 264,
        "acceptable-computed": 223,
        "acceptable-rejected": 31,
    }


# --- ChaCha20-Poly1305 ------------------------------------------------------------------------


def test_chacha20_poly1305_wycheproof(wycheproof: Load, tally: Tally) -> None:
    doc = wycheproof("chacha20_poly1305_test.json")
    failures = []
    for _group, test in _entries(doc):
        key, iv = bytes.fromhex(test["key"]), bytes.fromhex(test["iv"])
        aad, msg = bytes.fromhex(test["aad"]), bytes.fromhex(test["msg"])
        sealed = bytes.fromhex(test["ct"] + test["tag"])
        aead = ChaCha20Poly1305(key)
        try:
            opened = aead.decrypt(iv, sealed, aad)
            outcome = "valid" if opened == msg else "wrong plaintext"
        except (InvalidTag, ValueError):
            # ValueError: a nonce that is not 96 bits (InvalidNonceSize entries).
            outcome = "invalid"
        # Encryption must produce exactly the listed ciphertext and tag, too.
        if outcome == "valid" and aead.encrypt(iv, msg, aad) != sealed:
            outcome = "wrong encryption"
        if outcome != test["result"]:
            failures.append((test["tcId"], test["comment"], test["result"], outcome))
        tally("wycheproof/chacha20_poly1305_test.json", "cryptography", "expressed")
    assert failures == []
    assert len(_entries(doc)) == doc["numberOfTests"] == 325


@pytest.mark.parametrize("size", [0, 8, 11, 13, 16, 24])
def test_chacha20_poly1305_refuses_nonce_sizes_other_than_96_bits(size: int) -> None:
    # Our channel builds 12-byte nonces; a library that silently accepted other sizes would
    # hide a framing bug, so pin the refusal.
    with pytest.raises(ValueError):
        ChaCha20Poly1305(bytes(32)).encrypt(bytes(size), b"m", b"")
