"""The Merkle tree code (infrastructure/ledger/merkle.py) with SHA-256 against
transparency-dev/merkle's published test data (../shared/vectors/merkle): the root of every
tree of the first n reference leaves, and every inclusion and consistency proof case — each
asserted as its ``wantErr`` says. Then proofs this code makes, for every leaf and every pair
of sizes up to 64 leaves, checked by this code's verifier and by the reference cases, with
SHA-256 and with BLAKE3."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from l2_session.infrastructure.ledger.merkle import (
    ProofError,
    blake3_hash,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    sha256_hash,
    verify_consistency,
    verify_inclusion,
)


def b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def cases(shared_vectors: Path, kind: str) -> list[tuple[str, dict[str, Any]]]:
    folder = shared_vectors / "merkle" / kind
    found = [
        (str(path.relative_to(folder)), json.loads(path.read_text()))
        for path in sorted(folder.rglob("*.json"))
    ]
    assert found, f"no {kind} vectors under {folder}"
    return found


@pytest.fixture(scope="module")
def reference(shared_vectors: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((shared_vectors / "merkle" / "tree_roots.json").read_text())
    return data


def test_the_root_of_every_reference_tree(reference: dict[str, Any]) -> None:
    leaves = [leaf_hash(bytes.fromhex(x), sha256_hash) for x in reference["leaf_inputs_hex"]]
    expected = reference["root_hash_by_tree_size_hex"]
    assert len(expected) == len(leaves) + 1  # sizes 0 to 8
    for size, want in enumerate(expected):
        assert root(leaves[:size], sha256_hash).hex() == want, size


def test_every_inclusion_case(shared_vectors: Path) -> None:
    checked = {"accepted": 0, "refused": 0}
    for name, case in cases(shared_vectors, "inclusion"):
        proof = [b64(p) for p in case["proof"] or []]
        try:
            verify_inclusion(
                case["leafIdx"], case["treeSize"], b64(case["leafHash"]), proof,
                b64(case["root"]), sha256_hash,
            )  # fmt: skip
        except ProofError:
            assert case["wantErr"], f"{name}: refused, but it is a valid proof"
            checked["refused"] += 1
        else:
            assert not case["wantErr"], f"{name}: accepted, but it must be refused"
            checked["accepted"] += 1
    assert checked["accepted"] >= 5 and checked["refused"] >= 40, checked


def test_every_consistency_case(shared_vectors: Path) -> None:
    checked = {"accepted": 0, "refused": 0}
    for name, case in cases(shared_vectors, "consistency"):
        proof = [b64(p) for p in case["proof"] or []]
        try:
            verify_consistency(
                case["size1"], case["size2"], b64(case["root1"]), b64(case["root2"]), proof,
                sha256_hash,
            )  # fmt: skip
        except ProofError:
            assert case["wantErr"], f"{name}: refused, but it is a valid proof"
            checked["refused"] += 1
        else:
            assert not case["wantErr"], f"{name}: accepted, but it must be refused"
            checked["accepted"] += 1
    assert checked["accepted"] >= 5 and checked["refused"] >= 40, checked


def test_the_proofs_made_here_match_the_reference_happy_paths(
    shared_vectors: Path, reference: dict[str, Any]
) -> None:
    leaves = [leaf_hash(bytes.fromhex(x), sha256_hash) for x in reference["leaf_inputs_hex"]]
    matched = 0
    for name, case in cases(shared_vectors, "inclusion"):
        if case["wantErr"] or case["treeSize"] > len(leaves):
            continue
        if b64(case["leafHash"]) != leaves[case["leafIdx"]]:
            continue  # a case on other leaves (the single-entry ones)
        made = inclusion_proof(case["leafIdx"], leaves[: case["treeSize"]], sha256_hash)
        assert made == [b64(p) for p in case["proof"] or []], name
        matched += 1
    for name, case in cases(shared_vectors, "consistency"):
        if case["wantErr"] or not 0 < case["size1"] < case["size2"] <= len(leaves):
            continue
        made = consistency_proof(case["size1"], leaves[: case["size2"]], sha256_hash)
        assert made == [b64(p) for p in case["proof"] or []], name
        matched += 1
    assert matched >= 5


@pytest.mark.parametrize("h", [sha256_hash, blake3_hash], ids=["sha256", "blake3"])
def test_every_proof_made_for_trees_up_to_64_leaves_checks_and_a_changed_one_does_not(h) -> None:
    leaves = [leaf_hash(b"leaf %d" % i, h) for i in range(64)]
    roots = [root(leaves[:n], h) for n in range(65)]
    for size in range(1, 65):
        for index in range(size):
            proof = inclusion_proof(index, leaves[:size], h)
            verify_inclusion(index, size, leaves[index], proof, roots[size], h)
            if proof:
                bad = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
                with pytest.raises(ProofError):
                    verify_inclusion(index, size, leaves[index], bad, roots[size], h)
        for old in range(1, size):
            proof = consistency_proof(old, leaves[:size], h)
            verify_consistency(old, size, roots[old], roots[size], proof, h)
            with pytest.raises(ProofError):
                verify_consistency(old, size, roots[old - 1] if old > 1 else roots[size],
                                   roots[size], proof, h)  # fmt: skip


@pytest.mark.parametrize("h", [sha256_hash, blake3_hash])
def test_the_old_root_a_consistency_proof_leads_to_is_the_old_trees_root(h) -> None:
    """What a server gives as the old root without reading it (consistency_old_root), for
    every pair of sizes up to 64 where the old size is not a power of two."""
    from l2_session.infrastructure.ledger.merkle import consistency_old_root

    leaves = [leaf_hash(bytes([i]), h) for i in range(64)]
    checked = 0
    for new in range(2, 65):
        for old in range(1, new):
            if old & (old - 1) == 0:
                with pytest.raises(ValueError):
                    consistency_old_root(old, new, consistency_proof(old, leaves[:new], h), h)
                continue
            proof = consistency_proof(old, leaves[:new], h)
            assert consistency_old_root(old, new, proof, h) == root(leaves[:old], h)
            checked += 1
    assert checked == 2016 - 321  # every pair, but those from a power of two
