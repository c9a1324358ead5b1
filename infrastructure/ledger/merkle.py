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


def _paired(level: Sequence[bytes], h: HashFn) -> list[bytes]:
    """The level above ``level``, pairing as the recursive definition does: a lone last node
    rises unpaired."""
    paired = [node_hash(level[i], level[i + 1], h) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        paired.append(level[-1])
    return paired


def root(leaf_hashes: Sequence[bytes], h: HashFn = blake3_hash) -> bytes:
    """The tree hash of the leaves whose hashes are given (RFC 9162 §2.1.1)."""
    if not leaf_hashes:
        return h(b"")
    level = list(leaf_hashes)
    while len(level) > 1:
        level = _paired(level, h)
    return level[0]


def levels(leaf_hashes: Sequence[bytes], h: HashFn = blake3_hash) -> list[list[bytes]]:
    """Every level of the tree of ``leaf_hashes``, leaves first, the root's last: what
    ``audit_path`` reads the proofs of many leaves from, building the tree once."""
    found = [list(leaf_hashes)]
    while len(found[-1]) > 1:
        found.append(_paired(found[-1], h))
    return found


def audit_path(tree_levels: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """The inclusion proof of leaf ``index`` (RFC 9162 §2.1.3.1) from the tree's ``levels``:
    the sibling at each level, where there is one (a lone node rises without one)."""
    path = []
    for nodes in tree_levels[:-1]:
        if index ^ 1 < len(nodes):
            path.append(nodes[index ^ 1])
        index >>= 1
    return path


def inclusion_proof(
    index: int, leaf_hashes: Sequence[bytes], h: HashFn = blake3_hash
) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``leaf_hashes`` (RFC 9162 §2.1.3.1)."""
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaf_hashes)}")
    return [root(leaf_hashes[a:b], h) for a, b in inclusion_ranges(index, len(leaf_hashes))]


def consistency_proof(
    old_size: int, leaf_hashes: Sequence[bytes], h: HashFn = blake3_hash
) -> list[bytes]:
    """That the tree of the first ``old_size`` leaves is a prefix of the tree of all of
    ``leaf_hashes`` (RFC 9162 §2.1.4.1)."""
    if not 0 < old_size <= len(leaf_hashes):
        raise ValueError(f"no consistency proof from {old_size} to {len(leaf_hashes)} leaves")
    return [root(leaf_hashes[a:b], h) for a, b in consistency_ranges(old_size, len(leaf_hashes))]


# -- proofs as leaf ranges: the same proofs, for a tree kept in storage ------------------------
# Every hash of a proof is the tree hash of a range [a, b) of leaves. A range begins where a
# subtree of the recursive split begins, so it is a run of perfect subtrees ("parts"), each
# 2**level leaves aligned on a multiple of its size, largest first (``perfect_parts``): the
# first ``level`` bits of a tree size name the parts of the whole tree. A stored tree keeps
# the hash of every perfect subtree, so any proof costs one lookup per part.


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose tree hashes are, in order, the audit path of leaf ``index`` in a
    tree of ``size`` leaves (RFC 9162 §2.1.3.1's PATH, unrolled)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    found: list[tuple[int, int]] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = 1 << (hi - lo - 1).bit_length() - 1  # _split, inline: this loop serves proofs
        if m < k:
            found.append((lo + k, hi))
            hi = lo + k
        else:
            found.append((lo, lo + k))
            lo, m = lo + k, m - k
    return found[::-1]


def consistency_ranges(old_size: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose tree hashes are, in order, the consistency proof from
    ``old_size`` to ``size`` leaves (RFC 9162 §2.1.4.1's SUBPROOF, unrolled)."""
    if not 0 < old_size <= size:
        raise ValueError(f"no consistency proof from {old_size} to {size} leaves")
    found: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, size, old_size, True
    while hi - lo != m:
        k = _split(hi - lo)
        if m <= k:
            found.append((lo + k, hi))
            hi = lo + k
        else:
            found.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        found.append((lo, hi))
    return found[::-1]


def perfect_parts(lo: int, hi: int) -> list[tuple[int, int]]:
    """The perfect subtrees, as (level, index), whose leaves in order are ``lo`` to ``hi``
    (exclusive), largest first: subtree (level, index) holds leaves ``index * 2**level`` up
    to ``(index + 1) * 2**level``. ``lo`` is where a subtree of the recursive split begins
    (0, or a range of ``inclusion_ranges``/``consistency_ranges``)."""
    parts: list[tuple[int, int]] = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        if lo & ((1 << level) - 1):
            raise ValueError(f"leaves {lo}.. do not begin a subtree of {1 << level}")
        parts.append((level, lo >> level))
        lo += 1 << level
    return parts


def fold(part_hashes: Sequence[bytes], h: HashFn = blake3_hash) -> bytes:
    """The tree hash of a range from the hashes of its perfect parts, largest first (the
    recursive split puts each part on the left of the rest)."""
    found = part_hashes[-1]
    for part in reversed(part_hashes[:-1]):
        found = node_hash(part, found, h)
    return found


class Frontier:
    """The right edge of a growing tree: the hashes of the perfect subtrees that make it up
    (``perfect_parts(0, size)``), from which each new leaf completes zero or more nodes and
    the root is a fold. It is all an appender keeps in memory: O(log n) hashes."""

    __slots__ = ("h", "hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = (), h: HashFn = blake3_hash):
        if len(hashes) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} parts")
        self.size, self.hashes, self.h = size, list(hashes), h

    def copy(self) -> Frontier:
        return Frontier(self.size, self.hashes, self.h)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add the leaf whose hash is ``leaf``; the nodes it completes above it, as (level,
        index, hash), lowest first."""
        completed: list[tuple[int, int, bytes]] = []
        found, level, size, h = leaf, 0, self.size, self.h
        while size >> level & 1:
            found = node_hash(self.hashes.pop(), found, h)
            level += 1
            completed.append((level, size >> level, found))
        self.hashes.append(found)
        self.size = size + 1
        return completed

    def root(self) -> bytes:
        return fold(self.hashes, self.h) if self.hashes else self.h(b"")


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


def consistency_old_root(
    size1: int, size2: int, proof: Sequence[bytes], h: HashFn = blake3_hash
) -> bytes:
    """The root of the tree of ``size1`` leaves that a consistency proof to ``size2`` leaves
    leads to (RFC 9162 §2.1.4.2's first root), for ``size1`` not a power of two (then the
    old root is a node of the new tree, and the proof leaves it out). A server uses it to
    give the old root without reading it; ``verify_consistency`` still checks it."""
    if not 0 < size1 < size2 or size1 & (size1 - 1) == 0 or not proof:
        raise ValueError(f"no old root in a proof from {size1} to {size2}")
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    found = proof[0]
    for c in proof[1:]:
        if fn & 1 or fn == sn:
            found = h(NODE_PREFIX + c + found)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        fn, sn = fn >> 1, sn >> 1
    return found


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
