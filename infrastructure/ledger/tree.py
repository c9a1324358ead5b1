"""The ledger's Merkle tree as it is stored beside the events (docs/ledger-format.md §13).

Leaf i of the tree is the event hash at position i + 1; the tree is RFC 9162's with BLAKE3
(merkle.py). The table ``ledger_tree`` keeps the hash of every perfect subtree of two or more
leaves, keyed by the position of its last leaf and its level in one integer::

    ledger_tree(node, hash)    node = 64 * position + level: the 2**level events ending at
                               ``position`` (level < 64)

so merkle.py's node (level, index) is the row 64 * ((index + 1) * 2**level) + level, a position
p completes the nodes of levels 1 to the number of trailing zero bits of p, and rows in node
order are in (position, level) order. Level 0 is not stored: a leaf hash is H(0x00 || event
hash), from the events table, under the same key (64 * position). Rows are inserted in the
transaction that inserts the events completing them and never changed (append-only, like the
events). Any root or proof is the fold of O(log n) stored hashes, read in one statement.

Nodes never change once written, so each ``TreeSQL`` keeps the upper levels it read (a few
thousand nodes for a million events: every proof passes through them) and the roots of the
sizes it served; a proof then reads only its lower levels.

Both backends use this code; they differ in the placeholder and the table names only.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from blake3 import blake3
from l2_session.infrastructure.ledger.errors import LedgerCorrupted, LedgerError
from l2_session.infrastructure.ledger.merkle import (
    Frontier,
    ProofError,
    blake3_hash,
    consistency_old_root,
    fold,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

TREE_TABLE = "ledger_tree"
LEVELS = 64  # node = LEVELS * position + level
LEVEL_BITS, LEVEL_MASK = 6, 63  # LEVELS = 2**LEVEL_BITS: node >> 6 is the position
NodeRow = tuple[int, bytes]  # (node, hash): a row of ledger_tree
CACHED_LEVEL = 5  # nodes of this level and above are kept once read (1/16 of the nodes) ...
CACHED_NODES_BITS = 16  # ... or of a higher one, so that at most about 2**16 are kept
MAX_CACHED = 1 << (CACHED_NODES_BITS + 1)  # kept at most (the cache starts over when full)
MAX_ROOTS = 256  # roots of tree sizes kept at most


class TreeMissing(LedgerError):
    """The ledger has no stored tree (format 1, not migrated), or a size it does not hold."""


def position_level(node: int) -> tuple[int, int]:
    """(position, level) of a ledger_tree key."""
    return node // LEVELS, node % LEVELS


def grow(tree: Frontier, event_hashes: Iterable[bytes]) -> list[NodeRow]:
    """Append the events' hashes (in position order) to ``tree``; the rows they complete.
    ``Frontier.append`` with BLAKE3 written out: this runs in every append's transaction."""
    if tree.h is not blake3_hash:
        rows: list[NodeRow] = []
        for event_hash in event_hashes:
            for level, index, value in tree.append(leaf_hash(event_hash)):
                rows.append((LEVELS * ((index + 1) << level) + level, value))
        return rows
    rows, edge, size, b3 = [], tree.hashes, tree.size, blake3
    for event_hash in event_hashes:
        found = b3(b"\x00" + event_hash).digest()
        level = 0
        while size >> level & 1:
            found = b3(b"\x01" + edge.pop() + found).digest()
            level += 1
            rows.append((LEVELS * (((size >> level) + 1) << level) + level, found))
        edge.append(found)
        size += 1
    tree.size = size
    return rows


class TreeSQL:
    """The statements of one backend (``mark`` is its placeholder, the names its tables') and
    what it keeps of what it read."""

    def __init__(self, mark: str, events: str, tree: str) -> None:
        self.mark, self.events, self.tree = mark, events, tree
        self.insert = f"INSERT INTO {tree} (node, hash) VALUES ({mark},{mark})"
        self.head_seen = 0  # the largest tree size known to be stored (the ledger only grows)
        self.cache_from = CACHED_LEVEL  # the lowest level kept
        self._nodes: dict[int, bytes] = {}
        self._roots: dict[int, bytes] = {}

    def seen(self, head: int) -> None:
        """The ledger holds ``head`` events: sizes up to it need no check, and the levels
        kept rise with the tree (the nodes of level L and above are about head / 2**(L-1))."""
        if head > self.head_seen:
            self.head_seen = head
            self.cache_from = max(CACHED_LEVEL, head.bit_length() + 1 - CACHED_NODES_BITS)

    def _select(self, n_nodes: int, n_leaves: int) -> str:
        m, parts = self.mark, []
        if n_nodes:
            marks = ",".join([m] * n_nodes)
            parts.append(f"SELECT node, hash FROM {self.tree} WHERE node IN ({marks})")
        if n_leaves:
            marks = ",".join([m] * n_leaves)
            parts.append(
                f"SELECT {LEVELS} * position, event_hash FROM {self.events} "
                f"WHERE position IN ({marks})"
            )
        return " UNION ALL ".join(parts)

    def read(self, cur: Any, keys: Iterable[int]) -> dict[int, bytes]:
        """The stored values of ``keys`` — a node's hash, or for a level-0 key the event hash
        at that position — in one statement (kept upper nodes are not read again). A key not
        stored is a damaged ledger (``LedgerCorrupted``)."""
        cached = self._nodes
        found: dict[int, bytes] = {}
        nodes: list[int] = []
        leaves: list[int] = []
        for key in keys:
            if key in found:
                continue
            if not key & LEVEL_MASK:
                if key not in nodes:  # a leaf, read from the events table
                    nodes.append(key)
                    leaves.append(key >> LEVEL_BITS)
                continue
            value = cached.get(key)
            if value is not None:
                found[key] = value
            elif key not in nodes:
                nodes.append(key)
        if nodes:
            inner = [k for k in nodes if k & LEVEL_MASK]
            cur.execute(self._select(len(inner), len(leaves)), [*inner, *leaves])
            for key, value in cur.fetchall():
                found[key] = value = bytes(value)
                if key & LEVEL_MASK >= self.cache_from:
                    if len(cached) >= MAX_CACHED:
                        cached.clear()
                    cached[key] = value
            missing = [k for k in nodes if k not in found]
            if missing:
                position, level = position_level(min(missing))
                what = (
                    f"no event at position {position}"
                    if level == 0
                    else f"no node of level {level} ending at position {position}"
                )
                raise LedgerCorrupted(
                    f"the ledger's tree has {what}: the tree is damaged; run verify"
                )
        return found

    def event_hash(self, cur: Any, position: int) -> bytes:
        return self.read(cur, (LEVELS * position,))[LEVELS * position]

    def frontier(self, cur: Any, size: int) -> Frontier:
        """The right edge of the tree of the first ``size`` events."""
        keys = _key_list(0, size)
        found = self.read(cur, keys)
        return Frontier(size, [self._value(found, key) for key in keys])

    def root(self, cur: Any, size: int) -> bytes:
        known = self._roots.get(size)
        if known is None:
            known = self.frontier(cur, size).root()
            self._remember_root(size, known)
        return known

    def _remember_root(self, size: int, value: bytes) -> None:
        if len(self._roots) >= MAX_ROOTS:
            self._roots.clear()
        self._roots[size] = value

    @staticmethod
    def _value(found: dict[int, bytes], plan: int | list[int]) -> bytes:
        """The tree hash of a range from its keys (``_keys``)."""
        if isinstance(plan, int):
            value = found[plan]
            return value if plan & LEVEL_MASK else leaf_hash(value)
        return fold([found[k] if k & LEVEL_MASK else leaf_hash(found[k]) for k in plan])

    def inclusion_proof(self, cur: Any, index: int, size: int) -> tuple[bytes, list[bytes], bytes]:
        """(event hash, audit path, root) of leaf ``index`` (the event at position index + 1)
        in the tree of the first ``size`` events: O(log size) hashes, one statement."""
        ((event, hashes),), root = self.inclusion_proofs(cur, (index,), size)
        return event, hashes, root

    def inclusion_proofs(
        self, cur: Any, indexes: Sequence[int], size: int
    ) -> tuple[list[tuple[bytes, list[bytes]]], bytes]:
        """((event hash, audit path) of each leaf of ``indexes``, root) in the tree of the
        first ``size`` events, from one statement for all of them (the upper nodes they share
        are read once).

        ``merkle.inclusion_ranges`` and ``_keys`` in one loop: this is what a proof server
        spends its time on. Each step down from the root takes the sibling subtree's key (a
        composite one only on the tree's right edge)."""
        all_plans: list[list[int | list[int]]] = []
        wanted: list[int] = []
        for index in indexes:
            plans: list[int | list[int]] = []
            lo, hi, m = 0, size, index
            while hi - lo > 1:
                k = 1 << (hi - lo - 1).bit_length() - 1
                if m < k:
                    a, b, hi = lo + k, hi, lo + k
                else:
                    a, b, lo, m = lo, lo + k, lo + k, m - k
                n = b - a
                plan = LEVELS * b + n.bit_length() - 1 if n & (n - 1) == 0 else _keys(a, b)
                plans.append(plan)
                if isinstance(plan, list):
                    wanted += plan
                else:
                    wanted.append(plan)
            plans.reverse()
            all_plans.append(plans)
            wanted.append(LEVELS * (index + 1))
        root = self._roots.get(size)
        edge = None
        if root is None:
            edge = _keys(0, size)
            wanted += edge if isinstance(edge, list) else (edge,)
        found = self.read(cur, wanted)
        if edge is not None:
            root = self._value(found, edge)
            self._remember_root(size, root)
        assert root is not None
        value = self._value
        return [
            (found[LEVELS * (index + 1)], [value(found, plan) for plan in plans])
            for index, plans in zip(indexes, all_plans, strict=True)
        ], root

    def consistency_proof(
        self, cur: Any, old_size: int, size: int
    ) -> tuple[list[bytes], bytes, bytes]:
        """(proof, old root, root): the tree of ``old_size`` events is a prefix of the tree
        of ``size``. One statement; ``merkle.consistency_ranges`` and ``_keys`` in one loop,
        as for inclusion proofs."""
        if old_size == size:
            same = self.root(cur, size)
            return [], same, same
        plans: list[int | list[int]] = []
        lo, hi, m, complete = 0, size, old_size, True
        while hi - lo != m:
            k = 1 << (hi - lo - 1).bit_length() - 1
            if m <= k:
                a, b, hi = lo + k, hi, lo + k
            else:
                a, b, lo, m, complete = lo, lo + k, lo + k, m - k, False
            n = b - a
            plans.append(LEVELS * b + n.bit_length() - 1 if n & (n - 1) == 0 else _keys(a, b))
        if not complete:
            n = hi - lo
            plans.append(LEVELS * hi + n.bit_length() - 1 if n & (n - 1) == 0 else _keys(lo, hi))
        plans.reverse()
        wanted = [k for plan in plans for k in (plan if isinstance(plan, list) else (plan,))]
        # The old root: known, a node of the new tree (a power of two), or what the proof
        # leads to (merkle.consistency_old_root) — never read for itself.
        old_root = self._roots.get(old_size)
        old_key = None
        if old_root is None and old_size & (old_size - 1) == 0:
            old_key = LEVELS * old_size + old_size.bit_length() - 1
            wanted.append(old_key)
        root = self._roots.get(size)
        edge = None
        if root is None:
            edge = _keys(0, size)
            wanted += edge if isinstance(edge, list) else (edge,)
        found = self.read(cur, wanted)
        value = self._value
        hashes = [value(found, plan) for plan in plans]
        if edge is not None:
            root = value(found, edge)
            self._remember_root(size, root)
        if old_root is None:
            old_root = (
                value(found, old_key)
                if old_key is not None
                else consistency_old_root(old_size, size, hashes)
            )
        assert root is not None
        return hashes, old_root, root


def _keys(lo: int, hi: int) -> int | list[int]:
    """The keys of the perfect subtrees that make up leaves ``lo`` to ``hi`` (exclusive),
    largest first (merkle.perfect_parts): one key when the range is itself a perfect
    subtree, as most ranges of a proof are."""
    n = hi - lo
    if n & (n - 1) == 0:
        return LEVELS * hi + n.bit_length() - 1
    keys = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        lo += 1 << level
        keys.append(LEVELS * lo + level)
    return keys


def _key_list(lo: int, hi: int) -> list[int]:
    """``_keys`` as a list always (none for an empty range)."""
    if lo == hi:
        return []
    keys = _keys(lo, hi)
    return keys if isinstance(keys, list) else [keys]


def build_rows(
    rows: Iterable[tuple[int, bytes]], damaged: type[LedgerError] = LedgerCorrupted
) -> Iterable[list[NodeRow]]:
    """The whole tree of a ledger's events, from its (position, event hash) rows in position
    order, in chunks of tree rows: what a migration inserts for a ledger that has none.
    Positions must be 1, 2, 3, ...: a tree over a ledger with a gap would prove a sequence
    that is not the ledger's (``damaged`` says so)."""
    tree = Frontier()
    chunk: list[NodeRow] = []
    for position, event_hash in rows:
        if position != tree.size + 1:
            raise damaged(
                f"cannot build the ledger's tree: position {position} follows {tree.size}; "
                "the ledger is damaged — run verify"
            )
        chunk.extend(grow(tree, (bytes(event_hash),)))
        if len(chunk) >= 10_000:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProofError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProofError(f"{what} is not base64") from None


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"{what} is not a whole number")
    return value


def _json(kind: str, ledger_id: str, hashes: Sequence[bytes], **fields: Any) -> dict[str, Any]:
    encoded = {k: _b64(v) if isinstance(v, bytes) else v for k, v in fields.items()}
    head = {"proof": kind, "hash": "blake3", "ledger_id": ledger_id}
    return {**head, **encoded, "hashes": [_b64(h) for h in hashes]}


def _from_json(data: Any, kind: str) -> tuple[dict[str, Any], tuple[bytes, ...]]:
    """``data`` checked to be a ``kind`` proof with BLAKE3 hashes; it and its hashes."""
    if not isinstance(data, dict) or data.get("proof") != kind:
        raise ProofError(f"not {kind} proof (its 'proof' is not '{kind}')")
    if data.get("hash") != "blake3":
        raise ProofError(f"a proof over {data.get('hash')!r} hashes; a ledger's are 'blake3'")
    hashes = data.get("hashes")
    if not isinstance(hashes, list):
        raise ProofError(f"{kind} proof's 'hashes' is a list")
    return data, tuple(_unb64(h, f"hashes[{i}]") for i, h in enumerate(hashes))


@dataclass(frozen=True)
class InclusionProof:
    """That the event at ``position``, whose hash is ``event_hash``, is in the ledger's tree of
    ``size`` events, whose root is ``root`` (RFC 9162 §2.1.3 with BLAKE3)."""

    ledger_id: str
    position: int
    size: int
    event_hash: bytes
    root: bytes
    hashes: tuple[bytes, ...]

    def check(self) -> None:
        """``ProofError`` unless the proof leads from the event to the root."""
        verify_inclusion(
            self.position - 1, self.size, leaf_hash(self.event_hash), self.hashes, self.root
        )

    def to_json(self) -> dict[str, Any]:
        return _json(
            "inclusion", self.ledger_id, self.hashes, position=self.position,
            tree_size=self.size, event_hash=self.event_hash, root=self.root,
        )  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> InclusionProof:
        data, hashes = _from_json(data, "inclusion")
        return cls(
            str(data.get("ledger_id", "")),
            _count(data.get("position"), "position"),
            _count(data.get("tree_size"), "tree_size"),
            _unb64(data.get("event_hash"), "event_hash"),
            _unb64(data.get("root"), "root"),
            hashes,
        )


@dataclass(frozen=True)
class ConsistencyProof:
    """That the ledger's tree of ``old_size`` events (root ``old_root``) is a prefix of its
    tree of ``size`` events (root ``root``): nothing of the first was changed or removed."""

    ledger_id: str
    old_size: int
    size: int
    old_root: bytes
    root: bytes
    hashes: tuple[bytes, ...]

    def check(self) -> None:
        verify_consistency(self.old_size, self.size, self.old_root, self.root, self.hashes)

    def to_json(self) -> dict[str, Any]:
        return _json(
            "consistency", self.ledger_id, self.hashes, old_size=self.old_size,
            tree_size=self.size, old_root=self.old_root, root=self.root,
        )  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> ConsistencyProof:
        data, hashes = _from_json(data, "consistency")
        return cls(
            str(data.get("ledger_id", "")),
            _count(data.get("old_size"), "old_size"),
            _count(data.get("tree_size"), "tree_size"),
            _unb64(data.get("old_root"), "old_root"),
            _unb64(data.get("root"), "root"),
            hashes,
        )
