"""verify()'s Merkle tree: recomputed from the event hashes, range by range, and checked against
the stored tree (the events' tree column in format 4, ledger_tree before) and against every
checkpoint's root.

A verify worker sees one range of positions. It builds the perfect subtrees that lie wholly in
its range (``RangeTree``): each node it completes is compared with the stored one, and what is
left at the end is the range as a run of aligned blocks. Stored nodes that reach back before
the range are handed up. The parent pushes every range's blocks, in order, onto one frontier
(``TreeStitch``): that creates exactly the nodes that span ranges, which it compares with those
handed up, and gives the root of any prefix — each checkpoint's size — from the blocks a worker
kept at that position.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from l2_session.infrastructure.ledger.merkle import blake3_hash, fold, leaf_hash, node_hash
from l2_session.infrastructure.ledger.tree import LEVELS, TILE, TILE_LEVEL, inline_nodes, tile_nodes
from l2_session.infrastructure.ledger.verify_report import Problem, ProblemKind

Block = tuple[int, int, bytes]  # (level, index, hash) of a perfect subtree
NodeRow = tuple[int, int, bytes]  # (position, level, hash) as ledger_tree stores it


def _problem(position: int, level: int, detail: str) -> Problem:
    return Problem(
        ProblemKind.TREE_MISMATCH, position, None, f"tree node of level {level}: {detail}"
    )


@dataclass
class RangeTree:
    """The tree work of one verify range; ``stored`` streams its stored nodes in (position,
    level) order (``stored_rows``), or is None for a ledger without a stored tree, and in
    format 4 (``inline``), where ``column`` is the tree column of the event ``add`` is given
    next (``with_columns`` sets it as the rows are read)."""

    stored: Iterator[NodeRow] | None
    pins: frozenset[int] = frozenset()
    tiles_end: int | None = None  # format 3: nodes of levels 1, 2 after it have no tile yet
    inline: bool = False
    column: object = None
    blocks: list[Block] = field(default_factory=list)
    at_pins: dict[int, list[Block]] = field(default_factory=dict)
    spanning: list[NodeRow] = field(default_factory=list)  # stored nodes reaching before the range
    problems: list[Problem] = field(default_factory=list)
    first: int | None = None  # first position of the range
    next_position: int | None = None
    broken: bool = False  # positions did not follow each other: no tree to speak of
    _ahead: NodeRow | None = None

    def add(self, position: int, event_hash: bytes) -> None:
        if self.broken:
            return
        if self.first is None:
            self.first = position
        elif position != self.next_position:
            self.broken = True  # verify reports the gap; a tree over it would prove nothing
            return
        self.next_position = position + 1
        level, index, value = 0, position - 1, leaf_hash(event_hash)
        blocks = self.blocks
        made: list[bytes] = []
        while index & 1 and blocks and blocks[-1][0] == level and blocks[-1][1] == index - 1:
            value = node_hash(blocks.pop()[2], value)
            level, index = level + 1, index >> 1
            if self.inline:
                made.append(value)
            else:
                self._compare(position, level, value)
        if self.inline:
            self._compare_column(position, made)
        blocks.append((level, index, value))
        if position in self.pins:
            self.at_pins[position] = list(blocks)

    def _compare_column(self, position: int, made: list[bytes]) -> None:
        """Format 4: the nodes ``position`` completes within the range (levels 1 up) against
        its event's tree column. Stored nodes past them reach before the range (up to the
        parent) or are not the tree's."""
        column = self.column
        stored = inline_nodes(position, column) if isinstance(column, bytes) else []
        for level, value in enumerate(made, start=1):
            if level > len(stored):
                self.problems.append(_problem(position, level, "missing from the stored tree"))
            elif stored[level - 1][2] != value:
                self.problems.append(
                    _problem(position, level, "the stored hash differs from the recomputed one")
                )
        for row in stored[len(made) :]:
            self._set_aside(row)

    def _next_stored(self) -> NodeRow | None:
        if self._ahead is None and self.stored is not None:
            self._ahead = next(self.stored, None)
        return self._ahead

    def _compare(self, position: int, level: int, value: bytes) -> None:
        if self.stored is None or untiled(self.tiles_end, position, level):
            return
        while (ahead := self._next_stored()) is not None and ahead[:2] < (position, level):
            self._set_aside(ahead)
        if ahead is None or ahead[:2] != (position, level):
            self.problems.append(_problem(position, level, "missing from the stored tree"))
            return
        self._ahead = None
        if ahead[2] != value:
            self.problems.append(
                _problem(position, level, "the stored hash differs from the recomputed one")
            )

    def _set_aside(self, row: NodeRow) -> None:
        """A stored node this range did not compute: one reaching before the range goes up to
        the parent; any other is not a node of the ledger's tree."""
        self._ahead = None
        position, level, _ = row
        if self.first is not None and position - (1 << level) + 1 < self.first:
            self.spanning.append(row)
        else:
            self.problems.append(_problem(position, level, "stored, but not a node of the tree"))

    def finish(self) -> None:
        """Hand up, or report, the stored nodes left after the range's last event."""
        if self.stored is None:
            return
        while (ahead := self._next_stored()) is not None:
            if self.broken:
                self._ahead = None
                continue
            self._set_aside(ahead)


@dataclass
class TreeStitch:
    """The parent's side: ranges' blocks pushed in order onto the frontier of the whole tree."""

    checked: bool  # the ledger has a stored tree (format 2, 3 or 4)
    tiles_end: int | None = None  # as RangeTree's
    blocks: list[Block] = field(default_factory=list)
    spanning: dict[tuple[int, int], bytes] = field(default_factory=dict)
    roots: dict[int, bytes] = field(default_factory=dict)  # size -> root, at checkpoint sizes
    problems: list[Problem] = field(default_factory=list)
    broken: bool = False

    def add_range(self, tree: RangeTree) -> None:
        if self.broken or tree.broken:
            self.broken = True
            return
        for row in tree.spanning:
            self.spanning[(row[0], row[1])] = row[2]
        for pin, blocks in tree.at_pins.items():
            edge = list(self.blocks)
            for block in blocks:
                _push(edge, block, None)
            self.roots[pin] = fold([b[2] for b in edge])
        for block in tree.blocks:
            _push(self.blocks, block, self._compare)

    def _compare(self, position: int, level: int, value: bytes) -> None:
        if not self.checked or untiled(self.tiles_end, position, level):
            return
        stored = self.spanning.pop((position, level), None)
        if stored is None:
            self.problems.append(_problem(position, level, "missing from the stored tree"))
        elif stored != value:
            self.problems.append(
                _problem(position, level, "the stored hash differs from the recomputed one")
            )

    def root(self) -> bytes:
        return fold([b[2] for b in self.blocks]) if self.blocks else blake3_hash(b"")

    def finish(self) -> list[Problem]:
        for (position, level), _ in sorted(self.spanning.items()):
            self.problems.append(_problem(position, level, "stored, but not a node of the tree"))
        return self.problems


def _push(blocks: list[Block], block: Block, created: object) -> None:
    """Push an aligned block that follows ``blocks``; merge while it is a right sibling."""
    level, index, value = block
    while index & 1 and blocks and blocks[-1][0] == level and blocks[-1][1] == index - 1:
        value = node_hash(blocks.pop()[2], value)
        level, index = level + 1, index >> 1
        if callable(created):
            created((index + 1) << level, level, value)
    blocks.append((level, index, value))


def stored_rows(
    rows: Iterable[tuple[object, object]],
    layout: str = "nodes",
    lo: int = 1,
    hi: int | None = None,
) -> Iterator[NodeRow]:
    """ledger_tree's rows (node, hash) as read (``range_nodes``; any types a damaged file holds)
    as (position, level, hash) of the range ``lo`` to ``hi``, in (position, level) order; a
    row that is not an integer and bytes is skipped here, and reported as missing where the
    tree needs it. A tile row of format 3 (``layout`` "tiles") is its 7 nodes, of which those
    at positions in the range: the range that holds the tile's first nodes and not its row
    reads the row too (``tile_bound``), and a tile of the wrong length is one node of level 3
    that will not match. A tile's nodes reach 6 positions back, before rows read ahead of it:
    they are put in order in a heap, and each node leaves it once no later row can come
    before it. (Format 4's tree comes with the events: ``RangeTree.column``.)"""
    tiled = layout == "tiles"
    waiting: list[NodeRow] = []
    for node, value in rows:
        if type(node) is not int or not isinstance(value, bytes):
            continue
        position, level = divmod(node, LEVELS)
        if tiled and level == TILE_LEVEL and (nodes := tile_nodes(position, value)):
            for p, lv, h in nodes:
                if lo <= p and (hi is None or p <= hi):
                    heapq.heappush(waiting, (p, lv, h))
        elif hi is None or position <= hi:
            heapq.heappush(waiting, (position, level, value))
        while waiting and waiting[0][0] <= position - TILE:
            yield heapq.heappop(waiting)
    while waiting:
        yield heapq.heappop(waiting)


def with_columns(rows: Iterable[Sequence[Any]], tree: RangeTree) -> Iterator[Sequence[Any]]:
    """Format 4's rows (the event's columns, then ``tree``) as the event's columns alone, each
    one's tree column handed to ``tree`` as it is read."""
    for row in rows:
        tree.column = row[-1]
        yield row[:-1]


def untiled(tiles_end: int | None, position: int, level: int) -> bool:
    """Whether a node is one format 3 does not store yet: of level 1 or 2, in the ledger's
    last block of 8, which has no tile until its 8th event (``tiles_end``: the ledger's last
    position rounded down to a multiple of 8; None in format 2)."""
    return tiles_end is not None and position > tiles_end and level < TILE_LEVEL


def tile_bound(hi: int) -> int:
    """The largest ledger_tree key a verify range ending at ``hi`` reads in format 3: up to
    the tile row of the block of 8 that holds ``hi``."""
    return max(LEVELS * hi + LEVELS - 1, LEVELS * (-(-hi // TILE) * TILE) + TILE_LEVEL)
