"""Merkle trees as RFC 9162 §2.1 (RFC 6962 §2.1) builds them, with the hash a parameter: the
tree hash of a list of leaves, inclusion proofs and consistency proofs — made and checked.

    leaf hash  = H(0x00 || leaf)
    node hash  = H(0x01 || left || right)
    empty tree = H("")

A tree of n > 1 leaves splits at k, the largest power of two below n: the first k leaves on
the left, the rest on the right. The ledger's tree uses BLAKE3 (``blake3_hash``), its leaves
being the event hashes in global order; with SHA-256 this code passes every case of
transparency-dev/merkle's test data (tests/vectors/test_merkle_vectors.py), which is what
lets it be trusted with BLAKE3.

Pure functions over hashes already computed: nothing here reads the ledger. Proof checks
raise ``ProofError`` naming what is wrong, never return a partial answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import blake3

HashFn = Callable[[bytes], bytes]
LEAF_PREFIX, NODE_PREFIX = b"\x00", b"\x01"


def sha256_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def blake3_hash(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


class ProofError(ValueError):
    """A proof that does not prove what it was checked for."""


def leaf_hash(leaf: bytes, h: HashFn = blake3_hash) -> bytes:
    return h(LEAF_PREFIX + leaf)


def node_hash(left: bytes, right: bytes, h: HashFn = blake3_hash) -> bytes:
    return h(NODE_PREFIX + left + right)


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes], h: HashFn = blake3_hash) -> bytes:
    """The tree hash of the leaves whose hashes are given (RFC 9162 §2.1.1)."""
    if not leaf_hashes:
        return h(b"")
    # Bottom up, pairing as the recursive definition does: a lone last node rises unpaired.
    level = list(leaf_hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1], h) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_proof(
    index: int, leaf_hashes: Sequence[bytes], h: HashFn = blake3_hash
) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``leaf_hashes`` (RFC 9162 §2.1.3.1)."""
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaf_hashes)}")
    return _path(index, list(leaf_hashes), h)


def _path(m: int, leaves: list[bytes], h: HashFn) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, leaves[:k], h), root(leaves[k:], h)]
    return [*_path(m - k, leaves[k:], h), root(leaves[:k], h)]


def consistency_proof(
    old_size: int, leaf_hashes: Sequence[bytes], h: HashFn = blake3_hash
) -> list[bytes]:
    """That the tree of the first ``old_size`` leaves is a prefix of the tree of all of
    ``leaf_hashes`` (RFC 9162 §2.1.4.1)."""
    if not 0 < old_size <= len(leaf_hashes):
        raise ValueError(f"no consistency proof from {old_size} to {len(leaf_hashes)} leaves")
    return _subproof(old_size, list(leaf_hashes), True, h)


def _subproof(m: int, leaves: list[bytes], complete: bool, h: HashFn) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves, h)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete, h), root(leaves[k:], h)]
    return [*_subproof(m - k, leaves[k:], False, h), root(leaves[:k], h)]


def verify_inclusion(
    index: int,
    size: int,
    leaf: bytes,
    proof: Sequence[bytes],
    expected_root: bytes,
    h: HashFn = blake3_hash,
) -> None:
    """That ``leaf`` (a leaf hash) is at ``index`` in the tree of ``size`` leaves whose hash is
    ``expected_root`` (RFC 9162 §2.1.3.2); ``ProofError`` otherwise."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    _check_sizes(h, leaf=leaf, root=expected_root, proof=proof)
    computed = _root_from_inclusion(index, size, leaf, proof, h)
    if computed != expected_root:
        raise ProofError(f"the proof of leaf {index} leads to another root for size {size}")


def _check_sizes(h: HashFn, proof: Sequence[bytes], **hashes: bytes) -> None:
    """Every hash given must be one of ``h``'s: an empty or truncated one proves nothing."""
    size = len(h(b""))
    for name, value in [*hashes.items(), *((f"proof[{i}]", p) for i, p in enumerate(proof))]:
        if len(value) != size:
            raise ProofError(f"{name} has {len(value)} bytes, a hash has {size}")


def _root_from_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], h: HashFn
) -> bytes:
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"the proof of leaf {index} in {size} has too many hashes")
        if fn & 1 or fn == sn:
            r = node_hash(p, r, h)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p, h)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the proof of leaf {index} in {size} has too few hashes")
    return r


def verify_consistency(
    size1: int,
    size2: int,
    root1: bytes,
    root2: bytes,
    proof: Sequence[bytes],
    h: HashFn = blake3_hash,
) -> None:
    """That the tree of ``size1`` leaves with hash ``root1`` is a prefix of the tree of
    ``size2`` leaves with hash ``root2`` (RFC 9162 §2.1.4.2); ``ProofError`` otherwise."""
    if size2 < size1:
        raise ProofError(f"size {size2} is smaller than size {size1}")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing: it has none")
    if size1 == size2:
        if proof:
            raise ProofError(f"a consistency proof between equal sizes ({size1}) must be empty")
        if root1 != root2:
            raise ProofError(f"two different roots for one size ({size1})")
        return
    _check_sizes(h, root1=root1, root2=root2, proof=proof)
    if not proof:
        raise ProofError(f"an empty consistency proof from {size1} to {size2}")
    hashes = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the old root is a node of the new tree
        hashes.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = hashes[0]
    for c in hashes[1:]:
        if sn == 0:
            raise ProofError(f"the proof from {size1} to {size2} has too many hashes")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr, h), node_hash(c, sr, h)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c, h)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the proof from {size1} to {size2} has too few hashes")
    if fr != root1:
        raise ProofError(f"the proof does not lead to the root given for size {size1}")
    if sr != root2:
        raise ProofError(f"the proof does not lead to the root given for size {size2}")
