"""The ledger's Merkle tree as it is stored beside the events (docs/ledger-format.md §8).

Leaf i of the tree is the event hash at position i + 1; the tree is RFC 9162's with BLAKE3
(merkle.py). The table ``ledger_tree`` keeps the hash of every perfect subtree of two or more
leaves, keyed by the position of its last leaf and its level::

    ledger_tree(position, level, hash)   the 2**level events ending at ``position``

so the node (level, index) of merkle.py is the row ((index + 1) * 2**level, level), and a
position p completes the nodes of levels 1 to the number of trailing zero bits of p. Level 0
is not stored: a leaf hash is H(0x00 || event hash), from the events table. Rows are inserted
in the transaction that inserts the events completing them, in (position, level) order, and
never changed (append-only, like the events). Any root or proof is the fold of O(log n)
stored hashes, read in two statements.

Both backends use this code; they differ in the placeholder and the table names only.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from l2_session.infrastructure.ledger.errors import LedgerCorrupted, LedgerError
from l2_session.infrastructure.ledger.merkle import (
    Frontier,
    ProofError,
    consistency_ranges,
    fold,
    inclusion_ranges,
    leaf_hash,
    perfect_parts,
    verify_consistency,
    verify_inclusion,
)

TREE_TABLE = "ledger_tree"
Part = tuple[int, int]  # (level, index) of a perfect subtree
NodeRow = tuple[int, int, bytes]  # (position, level, hash): a row of ledger_tree


class TreeMissing(LedgerError):
    """The ledger has no stored tree (format 1, not migrated), or a size it does not hold."""


def node_row(level: int, index: int, value: bytes) -> NodeRow:
    """The ledger_tree row of merkle.py's node (level, index)."""
    return (index + 1) << level, level, value


def grow(tree: Frontier, event_hashes: Iterable[bytes]) -> list[NodeRow]:
    """Append the events' hashes (in position order) to ``tree``; the rows they complete."""
    rows: list[NodeRow] = []
    for event_hash in event_hashes:
        for level, index, value in tree.append(leaf_hash(event_hash)):
            rows.append(((index + 1) << level, level, value))
    return rows


@dataclass(frozen=True)
class TreeSQL:
    """The statements of one backend: ``mark`` is its placeholder, the names its tables'."""

    mark: str
    events: str
    tree: str

    @property
    def insert(self) -> str:
        m = self.mark
        return f"INSERT INTO {self.tree} (position, level, hash) VALUES ({m},{m},{m})"

    def _leaves(self, n: int) -> str:
        marks = ",".join([self.mark] * n)
        return f"SELECT position, event_hash FROM {self.events} WHERE position IN ({marks})"

    def _nodes(self, n: int) -> str:
        pairs = ",".join([f"({self.mark},{self.mark})"] * n)
        return (
            f"SELECT position, level, hash FROM {self.tree} "
            f"WHERE (position, level) IN (VALUES {pairs})"
        )

    def read_parts(self, cur: Any, parts: Iterable[Part]) -> dict[Part, bytes]:
        """The hashes of the perfect subtrees ``parts`` in the open transaction; a part that is
        not stored is a damaged ledger (``LedgerCorrupted``)."""
        wanted = set(parts)
        leaves = [index + 1 for level, index in wanted if level == 0]
        nodes = [((index + 1) << level, level) for level, index in wanted if level]
        found: dict[Part, bytes] = {}
        if leaves:
            cur.execute(self._leaves(len(leaves)), leaves)
            for position, value in cur.fetchall():
                found[(0, position - 1)] = leaf_hash(bytes(value))
        if nodes:
            flat = [x for pair in nodes for x in pair]
            cur.execute(self._nodes(len(nodes)), flat)
            for position, level, value in cur.fetchall():
                found[(level, (position >> level) - 1)] = bytes(value)
        missing = wanted - found.keys()
        if missing:
            level, index = min(missing)
            raise LedgerCorrupted(
                f"the ledger's tree has no node of level {level} ending at position "
                f"{(index + 1) << level}: the tree is damaged; run verify"
            )
        return found

    def event_hash(self, cur: Any, position: int) -> bytes:
        cur.execute(f"SELECT event_hash FROM {self.events} WHERE position={self.mark}", (position,))
        row = cur.fetchone()
        if row is None:
            raise LedgerCorrupted(f"the ledger has no event at position {position}; run verify")
        return bytes(row[0])

    def frontier(self, cur: Any, size: int) -> Frontier:
        """The right edge of the tree of the first ``size`` events."""
        parts = perfect_parts(0, size)
        found = self.read_parts(cur, parts)
        return Frontier(size, [found[p] for p in parts])

    def _hashes(self, cur: Any, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        plans = [perfect_parts(a, b) for a, b in ranges]
        found = self.read_parts(cur, (p for plan in plans for p in plan))
        return [fold([found[p] for p in plan]) for plan in plans]

    def root(self, cur: Any, size: int) -> bytes:
        return self.frontier(cur, size).root()

    def inclusion_proof(self, cur: Any, index: int, size: int) -> list[bytes]:
        """The audit path of leaf ``index`` (the event at position index + 1) in the tree of
        the first ``size`` events: O(log size) stored hashes, read in two statements."""
        return self._hashes(cur, inclusion_ranges(index, size))

    def consistency_proof(self, cur: Any, old_size: int, size: int) -> list[bytes]:
        """That the tree of ``old_size`` events is a prefix of the tree of ``size``."""
        return self._hashes(cur, consistency_ranges(old_size, size))


def build_rows(event_hashes: Iterable[bytes]) -> Iterable[list[NodeRow]]:
    """The whole tree of a ledger's events (in position order), in chunks of rows: what a
    migration inserts for a ledger that has none."""
    tree = Frontier()
    chunk: list[NodeRow] = []
    for event_hash in event_hashes:
        chunk.extend(grow(tree, (event_hash,)))
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
        return {
            "proof": "inclusion",
            "hash": "blake3",
            "ledger_id": self.ledger_id,
            "position": self.position,
            "tree_size": self.size,
            "event_hash": _b64(self.event_hash),
            "root": _b64(self.root),
            "hashes": [_b64(h) for h in self.hashes],
        }

    @classmethod
    def from_json(cls, data: Any) -> InclusionProof:
        if not isinstance(data, dict) or data.get("proof") != "inclusion":
            raise ProofError("not an inclusion proof (its 'proof' is not 'inclusion')")
        hashes = data.get("hashes")
        if not isinstance(hashes, list):
            raise ProofError("an inclusion proof's 'hashes' is a list")
        return cls(
            str(data.get("ledger_id", "")),
            _count(data.get("position"), "position"),
            _count(data.get("tree_size"), "tree_size"),
            _unb64(data.get("event_hash"), "event_hash"),
            _unb64(data.get("root"), "root"),
            tuple(_unb64(h, f"hashes[{i}]") for i, h in enumerate(hashes)),
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
        return {
            "proof": "consistency",
            "hash": "blake3",
            "ledger_id": self.ledger_id,
            "old_size": self.old_size,
            "tree_size": self.size,
            "old_root": _b64(self.old_root),
            "root": _b64(self.root),
            "hashes": [_b64(h) for h in self.hashes],
        }

    @classmethod
    def from_json(cls, data: Any) -> ConsistencyProof:
        if not isinstance(data, dict) or data.get("proof") != "consistency":
            raise ProofError("not a consistency proof (its 'proof' is not 'consistency')")
        hashes = data.get("hashes")
        if not isinstance(hashes, list):
            raise ProofError("a consistency proof's 'hashes' is a list")
        return cls(
            str(data.get("ledger_id", "")),
            _count(data.get("old_size"), "old_size"),
            _count(data.get("tree_size"), "tree_size"),
            _unb64(data.get("old_root"), "old_root"),
            _unb64(data.get("root"), "root"),
            tuple(_unb64(h, f"hashes[{i}]") for i, h in enumerate(hashes)),
        )
