"""The ledger's Merkle tree as it is stored beside the events (docs/ledger-format.md §13).

Leaf i of the tree is the event hash at position i + 1; the tree is RFC 9162's with BLAKE3
(merkle.py). The tree keeps the hash of every perfect subtree of two or more leaves, named by
the position of its last leaf and its level in one integer, its *key*::

    node = 64 * position + level: the 2**level events ending at ``position`` (level < 64)

so merkle.py's node (level, index) is the key 64 * ((index + 1) * 2**level) + level, a
position p completes the nodes of levels 1 to the number of trailing zero bits of p, and keys
in order are in (position, level) order. Where the hashes are depends on the ledger's format
(``tree_layout``):

* format 4 (``inline``): in the events' rows. The ``tree`` column of the event at p holds the
  nodes p completes, levels 1, 2, ... concatenated (NULL at an odd p): an append writes its
  tree in the rows it inserts anyway, and no table of the tree's own gets a page dirty at
  its commit. ``ledger_tree`` stays empty.
* format 3 (``tiles``): ``ledger_tree(node, hash)``, the nodes of levels 1 to 3 in *tiles*:
  the row of a node of level 3 (8 events) holds the 7 nodes inside it, in the order they were
  completed — (2, 1), (4, 1), (4, 2), (6, 1), (8, 1), (8, 2), (8, 3) counted from the block's
  start — and levels 1 and 2 have no rows of their own; nodes of level 4 and above are a row
  each. Until its 8th event, a block's nodes are folded from its events when asked for.
* format 2 (``nodes``): a row of ``ledger_tree`` per node.

Level 0 is not stored: a leaf hash is H(0x00 || event hash), from the events table, under the
same key (64 * position). The nodes are written in the transaction that inserts the events
completing them and never changed (append-only, like the events). Any root or proof is the
fold of O(log n) stored hashes, read in one statement (and the tree's edge at that size,
once: ``_Edge``).

Nodes never change once written, so each ``TreeSQL`` keeps the upper levels it read (tens of
thousands of nodes for a million events: every proof passes through them), the edges of the
sizes it served (``_Edge``: the root, and the path above each perfect part), and per block of
leaves that share it the path through the kept levels (``_paths``: at most 2**15 lists, about
9 MB at a million events, more once the kept nodes they share have been dropped); a proof
then reads only the levels below the kept ones, one B-tree lookup per level, and looks up the
rest as one list.

Both backends use this code; they differ in the placeholder and the table names only.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from blake3 import blake3
from l2_session.infrastructure.ledger.errors import LedgerCorrupted, LedgerError
from l2_session.infrastructure.ledger.format import FORMAT_VERSION
from l2_session.infrastructure.ledger.merkle import (
    Frontier,
    ProofError,
    blake3_hash,
    consistency_old_root,
    leaf_hash,
    node_hash,
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
MAX_ROOTS = 256  # edges (roots) of tree sizes kept at most
MAX_PATHS = 1 << 15  # upper paths kept at most (a block's climb through the kept levels)
EMPTY_ROOT = blake3_hash(b"")
MAX_SELECTS = 256  # statements kept, by the shape of their read (TreeSQL._selects)
MAX_RUNS = 64  # runs of positions read as range scans in one statement, at most (_runs)
# format 4: a consistency proof reads the positions it needs as one range scan when they lie
# within this many (they lie in the aligned block of 32 below the kept levels at a million
# events): 8-10 % more proofs a second than as parts of their own; an inclusion proof's, read
# so, lost 7-10 % (docs/benchmarks.md, "Merkle tree")
SPAN = 40
SINGLE_PARTS = 16  # format 4: positions read as parts of their own, at most (_select_inline)
TILE_LEVEL = 3  # format 3: a row of this level holds the nodes of levels 1 to 3 of its block
TILE = 1 << TILE_LEVEL  # events per tile
TILE_NODES = TILE - 1  # hashes per tile row
# (position in the block, level) -> the node's place in its tile row
TILE_INDEX = {(2, 1): 0, (4, 1): 1, (4, 2): 2, (6, 1): 3, (8, 1): 4, (8, 2): 5, (8, 3): 6}
TILE_OFFSET = {at: 32 * i for at, i in TILE_INDEX.items()}  # the same in bytes
# How a ledger's format lays out its stored tree: format 1 has none; format 2 a row per node;
# format 3 tiles; format 4 the nodes in the row of the event that completes them.
LAYOUTS = {"2": "nodes", "3": "tiles", "4": "inline"}
assert str(FORMAT_VERSION) in LAYOUTS
# A format-1 ledger gets its tree in format 3: format 4's lives in the events' rows, which are
# never changed once written; a table of its own can be added beside them.
MIGRATED_VERSION = "3"


def tree_layout(format_version: str) -> str | None:
    """``"inline"`` (format 4), ``"tiles"`` (format 3), ``"nodes"`` (format 2) or None (format
    1: no stored tree)."""
    if format_version == "1":
        return None
    try:
        return LAYOUTS[format_version]
    except KeyError:
        raise LedgerError(f"ledger format version {format_version!r} is not supported") from None


def tile_nodes(position: int, tile: bytes) -> list[tuple[int, int, bytes]]:
    """(position, level, hash) of the 7 nodes of the tile row that ends at ``position``, in
    (position, level) order; [] if the value is not 7 hashes (a damaged row)."""
    if len(tile) != 32 * TILE_NODES:
        return []
    base = position - TILE
    return [(base + p, lv, tile[32 * i : 32 * i + 32]) for (p, lv), i in TILE_INDEX.items()]


def inline_nodes(position: int, column: bytes) -> list[tuple[int, int, bytes]]:
    """(position, level, hash) of the nodes in the ``tree`` column of the event at ``position``
    (format 4): levels 1, 2, ... in order, as many as its whole 32-byte hashes."""
    return [(position, i + 1, column[32 * i : 32 * i + 32]) for i in range(len(column) // 32)]


class TreeMissing(LedgerError):
    """The ledger has no stored tree (format 1, not migrated), or a size it does not hold."""


def position_level(node: int) -> tuple[int, int]:
    """(position, level) of a ledger_tree key."""
    return node // LEVELS, node % LEVELS


def grow(
    tree: Frontier, event_hashes: Iterable[bytes], tile: list[bytes] | None = None
) -> list[NodeRow]:
    """Append the events' hashes (in position order) to ``tree``; the rows they complete.
    ``tile`` is None for a row per node (format 2); in format 3, the nodes of levels 1 and 2
    completed so far in the tree's last, unfinished block of 8, which a node of level 3 takes
    into its row (and ``tile`` starts over). ``Frontier.append`` with BLAKE3 written out: this
    runs in every append's transaction."""
    pending = tile if tile is not None else []
    top = TILE_LEVEL if tile is not None else 0  # levels up to it go into tiles
    rows: list[NodeRow] = []
    if tree.h is not blake3_hash:
        for event_hash in event_hashes:
            for level, index, value in tree.append(leaf_hash(event_hash)):
                key = LEVELS * ((index + 1) << level) + level
                if level > top:
                    rows.append((key, value))
                else:
                    pending.append(value)
                    if level == top:
                        rows.append((key, b"".join(pending)))
                        pending.clear()
        return rows
    edge, size, b3 = tree.hashes, tree.size, blake3
    for event_hash in event_hashes:
        found = b3(b"\x00" + event_hash).digest()
        level = 0
        while size >> level & 1:
            found = b3(b"\x01" + edge.pop() + found).digest()
            level += 1
            if level > top:
                rows.append((LEVELS * (((size >> level) + 1) << level) + level, found))
            else:
                pending.append(found)
                if level == top:
                    key = LEVELS * (((size >> level) + 1) << level) + level
                    rows.append((key, b"".join(pending)))
                    pending.clear()
        edge.append(found)
        size += 1
    tree.size = size
    return rows


def grow_inline(tree: Frontier, event_hashes: Iterable[bytes]) -> list[bytes | None]:
    """Append the events' hashes (in position order) to ``tree``; per event, its ``tree``
    column in format 4: the hashes of the nodes it completes, levels 1, 2, ... concatenated,
    or None (an event at an odd position completes none). BLAKE3 written out, as ``grow``."""
    if tree.h is not blake3_hash:
        raise ValueError("format 4 keeps a BLAKE3 tree")
    edge, size, b3 = tree.hashes, tree.size, blake3
    column: list[bytes | None] = []
    for event_hash in event_hashes:
        found = b3(b"\x00" + event_hash).digest()
        if size & 1:
            nodes = []
            level = 0
            while size >> level & 1:
                found = b3(b"\x01" + edge.pop() + found).digest()
                nodes.append(found)
                level += 1
            column.append(b"".join(nodes))
        else:
            column.append(None)
        edge.append(found)
        size += 1
    tree.size = size
    return column


class _Edge:
    """What a proof needs above the perfect part of the tree that holds its leaf, for one
    tree size: the parts' hashes (largest first, ``_key_list(0, size)``) and the folds of
    every run of parts to the right end (``right[0]`` is the root). The tree of n leaves is
    part 0 beside the tree of the rest, so above part j a path takes the fold of the parts
    after j (if any), then parts j-1 down to 0."""

    __slots__ = ("index", "parts", "right", "tails")

    def __init__(self, levels: list[int], parts: list[bytes]) -> None:
        right = parts[:]
        for j in range(len(parts) - 2, -1, -1):
            right[j] = node_hash(parts[j], right[j + 1])
        self.parts, self.right = parts, right
        self.index = {level: j for j, level in enumerate(levels)}
        self.tails: dict[int, list[bytes]] = {}

    @property
    def root(self) -> bytes:
        return self.right[0]

    def tail(self, level: int) -> list[bytes]:
        """The path from the root of the part of ``level`` to the tree's root."""
        found = self.tails.get(level)
        if found is None:
            j = self.index[level]
            found = self.parts[:j]
            found.reverse()
            if j + 1 < len(self.parts):
                found.insert(0, self.right[j + 1])
            self.tails[level] = found
        return found


class TreeSQL:
    """The statements of one backend (``mark`` is its placeholder, the names its tables') and
    what it keeps of what it read."""

    def __init__(self, mark: str, events: str, tree: str, layout: str = "inline") -> None:
        self.mark, self.events, self.tree = mark, events, tree
        self.layout = layout  # tree_layout(): where the nodes are, by the ledger's format
        self.insert = f"INSERT INTO {tree} (node, hash) VALUES ({mark},{mark})"
        self.head_seen = 0  # the largest tree size known to be stored (the ledger only grows)
        self.cache_from = CACHED_LEVEL  # the lowest level kept
        self._nodes: dict[int, bytes] = {}
        self._paths: dict[tuple[int, int, int], list[bytes]] = {}
        self._edges: dict[int, _Edge] = {}
        self._selects: dict[tuple[int, int, int], str] = {}

    @property
    def layout(self) -> str:
        return self._layout

    @layout.setter
    def layout(self, layout: str) -> None:
        if layout not in LAYOUTS.values():
            raise ValueError(f"no tree layout {layout!r}")
        self._layout = layout
        self.tiled = layout == "tiles"  # levels 1 to 3 in tiles (format 3)
        self.inline = layout == "inline"  # in the events' rows (format 4)

    def seen(self, head: int) -> None:
        """The ledger holds ``head`` events: sizes up to it need no check, and the levels
        kept rise with the tree (the nodes of level L and above are about head / 2**(L-1))."""
        if head > self.head_seen:
            self.head_seen = head
            self.cache_from = max(CACHED_LEVEL, head.bit_length() + 1 - CACHED_NODES_BITS)

    def _select(self, n_nodes: int, n_leaves: int, n_runs: int = 0) -> str:
        """Rows (key, hash) of ``n_nodes`` stored nodes, of the event hashes at ``n_leaves``
        positions and of ``n_runs`` runs of positions (first, last) — a run is one range
        scan, where as many single positions are a B-tree search each."""
        found = self._selects.get((n_nodes, n_leaves, n_runs))
        if found is None:
            m, parts = self.mark, []
            if n_nodes:
                marks = ",".join([m] * n_nodes)
                parts.append(f"SELECT node, hash FROM {self.tree} WHERE node IN ({marks})")
            leaves = f"SELECT {LEVELS} * position, event_hash FROM {self.events} WHERE position"
            if n_leaves:
                parts.append(f"{leaves} IN ({','.join([m] * n_leaves)})")
            parts += [f"{leaves} BETWEEN {m} AND {m}"] * n_runs
            found = " UNION ALL ".join(parts)
            self._keep_select((n_nodes, n_leaves, n_runs), found)
        return found

    def read(self, cur: Any, keys: Iterable[int]) -> dict[int, bytes]:
        """The stored values of ``keys`` — a node's hash, or for a level-0 key the event hash
        at that position — in one statement (kept upper nodes are not read again). A key not
        stored is a damaged ledger (``LedgerCorrupted``)."""
        cached = self._nodes
        found: dict[int, bytes] = {}
        ask: list[int] = []
        for key in keys:
            if key & LEVEL_MASK and (value := cached.get(key)) is not None:
                found[key] = value
            else:
                ask.append(key)
        if ask:
            found.update(self._fetch(cur, ask))
        return found

    def _keep_select(self, shape: tuple[int, int, int], statement: str) -> None:
        """Keep a statement made for one shape of read; proofs asked together come in many
        shapes, so the kept ones start over past ``MAX_SELECTS``."""
        if len(self._selects) >= MAX_SELECTS:
            self._selects.clear()
        self._selects[shape] = statement

    def _select_inline(self, n_positions: int, n_runs: int) -> str:
        """Format 4: (position, event hash, tree column) of the events at ``n_positions``
        positions and in ``n_runs`` runs of them, as ``_select``. The few positions of one
        proof are a part each (``position = ?``): on SQLite an ``IN`` list of them cost 8-12 %
        of the proof rate (docs/benchmarks.md, "Merkle tree"); more (proofs asked together)
        are one ``IN`` list, as SQLite allows at most 500 parts to a compound statement."""
        found = self._selects.get((-1, n_positions, n_runs))
        if found is None:
            m = self.mark
            rows = f"SELECT position, event_hash, tree FROM {self.events} WHERE position"
            if n_positions <= SINGLE_PARTS:
                parts = [f"{rows} = {m}"] * n_positions
            else:
                parts = [f"{rows} IN ({','.join([m] * n_positions)})"]
            parts += [f"{rows} BETWEEN {m} AND {m}"] * n_runs
            found = " UNION ALL ".join(parts)
            self._keep_select((-1, n_positions, n_runs), found)
        return found

    def _fetch_inline(self, cur: Any, keys: list[int], span: bool = False) -> dict[int, bytes]:
        """``_fetch`` in format 4: every key is read from the row of the event at its position
        — a node of level L is the L-th hash of that row's tree column. ``span``: positions
        within ``SPAN`` of each other are read as one range."""
        positions = sorted({key >> LEVEL_BITS for key in keys})
        if span and positions[-1] - positions[0] < SPAN:
            singles: list[int] = []
            runs = [positions[0], positions[-1]]
        else:
            singles, runs = _runs(positions)
        cur.execute(self._select_inline(len(singles), len(runs) // 2), [*singles, *runs])
        rows = {position: (event_hash, column) for position, event_hash, column in cur.fetchall()}
        found: dict[int, bytes] = {}
        for key in keys:
            position, level = key >> LEVEL_BITS, key & LEVEL_MASK
            row = rows.get(position)
            if row is None:
                raise LedgerCorrupted(
                    f"the ledger's tree has no event at position {position}: the tree is "
                    "damaged; run verify"
                )
            if not level:
                found[key] = row[0]
                continue
            column = row[1]
            if column is None or len(column) < 32 * level:
                raise LedgerCorrupted(
                    f"the ledger's tree has no node of level {level} ending at position "
                    f"{position} (the event's tree column holds "
                    f"{0 if column is None else len(column)} bytes): the tree is damaged; "
                    "run verify"
                )
            found[key] = column[32 * level - 32 : 32 * level]
        self._keep_upper(found, keys)
        return found

    def _fetch(self, cur: Any, keys: list[int], span: bool = False) -> dict[int, bytes]:
        """``read`` of keys none of which is kept; what it reads of the kept levels is kept.
        In format 3 a node of level 1 to 3 is cut from its tile, or, in the last block, which
        has no tile yet, folded from the block's events: both read in the same statement."""
        if self.inline:
            return self._fetch_inline(cur, keys, span)
        nodes: list[int] = []
        positions: list[int] = []
        tiled: list[tuple[int, int, int]] = []  # (key, its tile's key, its offset there)
        folded: list[int] = []
        top, head = (TILE_LEVEL if self.tiled else 0), self.head_seen
        for key in keys:
            level = key & LEVEL_MASK
            if level > top:
                nodes.append(key)
            elif not level:
                positions.append(key >> LEVEL_BITS)
            else:
                end = key >> LEVEL_BITS
                block_end = (end + TILE - 1) & -TILE
                if block_end <= head:
                    tile = LEVELS * block_end + TILE_LEVEL
                    tiled.append((key, tile, TILE_OFFSET[end - block_end + TILE, level]))
                    nodes.append(tile)
                else:
                    folded.append(key)
                    positions.extend(range(end - (1 << level) + 1, end + 1))
        nodes = list(dict.fromkeys(nodes))
        if len(positions) > 1:
            positions = sorted(set(positions))
        singles, runs = _runs(positions)
        cur.execute(
            self._select(len(nodes), len(singles), len(runs) // 2), [*nodes, *singles, *runs]
        )
        found: dict[int, bytes] = dict(cur.fetchall())
        if len(found) < len(nodes) + len(positions):
            missing = [k for k in nodes + [LEVELS * p for p in positions] if k not in found]
            position, level = position_level(min(missing))
            what = (
                f"no event at position {position}"
                if level == 0
                else f"no node of level {level} ending at position {position}"
            )
            raise LedgerCorrupted(f"the ledger's tree has {what}: the tree is damaged; run verify")
        if tiled:  # a tile's key is its level-3 node's: cut every node asked for from it
            rows: dict[int, bytes] = {}
            for key, tile, at in tiled:
                row = rows.get(tile)
                if row is None:
                    row = rows[tile] = _tile_row(tile, found[tile])
                found[key] = row[at : at + 32]
            for tile, row in rows.items():
                found[tile] = row[-32:]
        for key in folded:
            found[key] = _fold_leaves(found, key)
        self._keep_upper(found, nodes)
        return found

    def _keep_upper(self, found: dict[int, bytes], keys: Iterable[int]) -> None:
        """Keep what ``found`` holds of ``keys`` in the kept levels (nodes never change)."""
        cache_from, cached = self.cache_from, self._nodes
        for key in keys:
            if key & LEVEL_MASK >= cache_from:
                if len(cached) >= MAX_CACHED:
                    cached.clear()
                cached[key] = found[key]

    def _climb(
        self, cur: Any, index: int, low: int, top: int, extra: int, span: bool = False
    ) -> tuple[list[bytes], bytes]:
        """The path of leaf ``index`` from level ``low`` to the top of its part (level
        ``top``): its ancestors' siblings (``_siblings``; one of level 0 as its leaf hash);
        and the stored value of key ``extra``. One statement for the levels below the kept
        ones (and any kept one not read yet; ``span``: as ``_fetch_inline``). Proofs of one
        leaf come here.

        Above the last level never kept (``split``), the siblings are the same for every leaf
        of the aligned block of 2**split leaves that holds this one: that part of the path is
        kept per block (``_paths``), so a proof through a block climbed before reads its
        lower levels and looks up one list."""
        # levels [low, split) are never kept (level 0, event hashes, never is)
        split = max(min(max(self.cache_from, 1), top), low)
        lower = _siblings(index, low, split)
        block = (index >> split, split, top)
        upper = self._paths.get(block) if split < top else []
        if upper is None:
            keys = _siblings(index, split, top)
            cached = self._nodes
            kept = [cached.get(k) for k in keys]
            ask = lower + [k for k, v in zip(keys, kept, strict=True) if v is None]
            ask.append(extra)
            found = self._fetch(cur, ask)
            upper = [found[k] if v is None else v for k, v in zip(keys, kept, strict=True)]
            if len(self._paths) >= MAX_PATHS:
                self._paths.clear()
            self._paths[block] = upper
        else:
            found = self._fetch(cur, [*lower, extra], span)
        hashes = [found[k] for k in lower]
        if hashes and low == 0:
            hashes[0] = leaf_hash(hashes[0])
        return hashes + upper, found[extra]

    def event_hash(self, cur: Any, position: int) -> bytes:
        return self.read(cur, (LEVELS * position,))[LEVELS * position]

    def frontier(self, cur: Any, size: int) -> tuple[Frontier, list[bytes] | None]:
        """The right edge of the tree of the first ``size`` events, and what ``grow`` needs
        beside it: in format 3, the nodes of levels 1 and 2 of the last block so far (None in
        formats 2 and 4)."""
        edge = Frontier(size, self._edge(cur, size).parts if size else ())
        if not self.tiled:  # format 2 and 4: every node completed so far is stored
            return edge, None
        start = size - size % TILE
        keys = [
            LEVELS * p + level
            for p in range(start + 1, size + 1)
            for level in range(1, (p & -p).bit_length())
        ]
        found = self.read(cur, keys) if keys else {}
        return edge, [found[k] for k in keys]

    def root(self, cur: Any, size: int) -> bytes:
        return self._edge(cur, size).root if size else EMPTY_ROOT

    def _edge(self, cur: Any, size: int) -> _Edge:
        """The edge of the tree of ``size`` events, kept once read."""
        edge = self._edges.get(size)
        if edge is None:
            parts = _key_list(0, size)
            found = self.read(cur, parts)
            edge = _Edge([k & LEVEL_MASK for k in parts], [_hash(found, k) for k in parts])
            if len(self._edges) >= MAX_ROOTS:
                self._edges.clear()
            self._edges[size] = edge
        return edge

    def inclusion_proof(self, cur: Any, index: int, size: int) -> tuple[bytes, list[bytes], bytes]:
        """(event hash, audit path, root) of leaf ``index`` (the event at position index + 1)
        in the tree of the first ``size`` events: O(log size) hashes, one statement."""
        edge = self._edge(cur, size)
        top = (index ^ size).bit_length() - 1  # the level of the part holding the leaf
        hashes, event = self._climb(cur, index, 0, top, LEVELS * (index + 1))
        hashes += edge.tail(top)
        return event, hashes, edge.root

    def inclusion_proofs(
        self, cur: Any, indexes: Sequence[int], size: int
    ) -> tuple[list[tuple[bytes, list[bytes]]], bytes]:
        """((event hash, audit path) of each leaf of ``indexes``, root) in the tree of the
        first ``size`` events, from one statement for all of them (the upper nodes they share
        are read once).

        A leaf lies in one perfect part of the tree (``_Edge``): its path climbs that part,
        one sibling per level (``_siblings``), then takes the part's tail, kept per size."""
        climbs = []
        wanted: list[int] = []
        for index in indexes:
            top = (index ^ size).bit_length() - 1  # the level of the part holding the leaf
            keys = _siblings(index, 0, top)
            climbs.append((index, top, keys))
            wanted += keys
            wanted.append(LEVELS * (index + 1))
        edge = self._edge(cur, size)
        found = self.read(cur, wanted)
        proofs = []
        for index, top, keys in climbs:
            hashes = [found[k] for k in keys]
            if hashes:
                hashes[0] = leaf_hash(hashes[0])  # the level-0 sibling is an event hash
            hashes += edge.tail(top)
            proofs.append((found[LEVELS * (index + 1)], hashes))
        return proofs, edge.root

    def consistency_proof(
        self, cur: Any, old_size: int, size: int
    ) -> tuple[list[bytes], bytes, bytes]:
        """(proof, old root, root): the tree of ``old_size`` events is a prefix of the tree
        of ``size``. One statement, as for an inclusion proof.

        As transparency-dev/merkle builds it: the largest perfect subtree that ends at
        ``old_size`` (the old tree's last part), unless it is the whole old tree, then that
        subtree's path in the new tree — the climb of its last leaf from its level."""
        if old_size == size:
            same = self.root(cur, size)
            return [], same, same
        last, level = old_size - 1, (old_size & -old_size).bit_length() - 1
        top = (last ^ size).bit_length() - 1
        edge = self._edge(cur, size)
        hashes, first = self._climb(cur, last, level, top, LEVELS * old_size + level, span=True)
        if level == 0:  # the old tree's last part is a leaf
            first = leaf_hash(first)
        hashes += edge.tail(top)
        if old_size & last == 0:  # a power of two: the part is the old tree, its root
            return hashes, first, edge.root
        hashes.insert(0, first)
        known = self._edges.get(old_size)
        old_root = known.root if known else consistency_old_root(old_size, size, hashes)
        return hashes, old_root, edge.root


def _siblings(index: int, low: int, top: int) -> list[int]:
    """The keys of the siblings of leaf ``index``'s ancestors at levels ``low`` to ``top`` - 1
    (at level 0 the leaf's own sibling): the aligned block of 2**level beside the one holding
    the leaf, keyed by its end."""
    return [LEVELS * (((index >> lv ^ 1) + 1) << lv) + lv for lv in range(low, top)]


def _runs(positions: list[int]) -> tuple[list[int], list[int]]:
    """Sorted ``positions`` as (the single ones, first and last of each run of two or more);
    past ``MAX_RUNS`` runs, the positions of the rest are single ones (a run is a part of the
    statement, and SQLite allows 500 parts to one)."""
    singles: list[int] = []
    runs: list[int] = []
    i, n = 0, len(positions)
    while i < n:
        j = i
        while j + 1 < n and positions[j + 1] == positions[j] + 1:
            j += 1
        if j == i or len(runs) >= 2 * MAX_RUNS:
            singles += positions[i : j + 1]
        else:
            runs += (positions[i], positions[j])
        i = j + 1
    return singles, runs


def _tile_row(key: int, row: bytes) -> bytes:
    """The tile row of ``key``, checked to hold its 7 hashes."""
    if len(row) != 32 * TILE_NODES:
        raise LedgerCorrupted(
            f"the ledger's tree has a tile ending at position {key >> LEVEL_BITS} of {len(row)} "
            f"bytes, not {32 * TILE_NODES}: the tree is damaged; run verify"
        )
    return row


def _fold_leaves(found: dict[int, bytes], key: int) -> bytes:
    """The hash of the node ``key`` from the event hashes of its leaves in ``found`` (BLAKE3
    written out: only a block without its tile yet, the last, is folded)."""
    level, end, b3 = key & LEVEL_MASK, key >> LEVEL_BITS, blake3
    layer = [
        b3(b"\x00" + found[LEVELS * p]).digest() for p in range(end - (1 << level) + 1, end + 1)
    ]
    while level:
        it = iter(layer)
        layer = [b3(b"\x01" + left + right).digest() for left, right in zip(it, it, strict=True)]
        level -= 1
    return layer[0]


def _hash(found: dict[int, bytes], key: int) -> bytes:
    """The tree hash of the range a key stands for: a stored node, or a leaf's hash."""
    value = found[key]
    return value if key & LEVEL_MASK else leaf_hash(value)


def _key_list(lo: int, hi: int) -> list[int]:
    """The keys of the perfect subtrees that make up leaves ``lo`` to ``hi`` (exclusive),
    largest first (merkle.perfect_parts)."""
    keys = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        lo += 1 << level
        keys.append(LEVELS * lo + level)
    return keys


def build_rows(
    rows: Iterable[tuple[int, bytes]],
    damaged: type[LedgerError] = LedgerCorrupted,
    tiled: bool = True,
) -> Iterable[list[NodeRow]]:
    """The whole tree of a ledger's events, from its (position, event hash) rows in position
    order, in chunks of tree rows (format 3's tiles, or a row per node: ``tiled``): what a
    migration inserts for a ledger that has none.
    Positions must be 1, 2, 3, ...: a tree over a ledger with a gap would prove a sequence
    that is not the ledger's (``damaged`` says so)."""
    tree = Frontier()
    tile: list[bytes] | None = [] if tiled else None
    chunk: list[NodeRow] = []
    for position, event_hash in rows:
        if position != tree.size + 1:
            raise damaged(
                f"cannot build the ledger's tree: position {position} follows {tree.size}; "
                "the ledger is damaged — run verify"
            )
        chunk.extend(grow(tree, (bytes(event_hash),), tile))
        if len(chunk) >= 10_000:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def with_tree_column(
    rows: Iterable[Sequence[Any]], damaged: type[LedgerError] = LedgerCorrupted
) -> Iterator[tuple[Any, ...]]:
    """Event rows (position first, event hash tenth: ``ROW_COLUMNS``) in position order, each
    with its format-4 tree column after them: what an import writes. Positions must be 1, 2,
    3, ... (``damaged`` says where they are not), as for ``build_rows``."""
    tree = Frontier()
    for row in rows:
        if row[0] != tree.size + 1:
            raise damaged(
                f"cannot build the ledger's tree: position {row[0]} follows {tree.size}; "
                "the ledger is damaged — run verify"
            )
        (column,) = grow_inline(tree, (bytes(row[9]),))
        yield (*row, column)


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
