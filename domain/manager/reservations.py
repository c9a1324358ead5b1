"""Send counters reserved ahead of need, so that sealing a frame never waits for a save.

A session's channel (channel.py) may seal under counter ``n`` only once a ``CountersReserved``
event covering ``n`` is in the ledger: a restarted process starts after every counter ever
reserved, so no (key, nonce) pair repeats, even across SIGKILL. Two rules keep those saves off
the path of a message:

- The first block of a new key is recorded by the manager in the same save that records the
  key (``Established``: a handshake, a resumption, a rotation), with ``reserve_with_keys``.
- The next block is recorded by the channel when half of the current one is used, without a
  save of its own: the event waits among the session's pending events and rides with the
  session's next save (the next batch's). The channel takes it up once that save returned.

Only a channel that outruns both (a block sealed between two saves of its session) saves a
reservation itself before sealing, as every frame did before.

Where a channel starts is the subtle part. A channel made from a session replayed from the
ledger must assume that every counter reserved so far may have been used by a process that
died: it starts after the last reservation. A channel made by the process that recorded the
first block with the keys, from the very session object that recorded it, knows that no
counter of that block was used: no channel could exist for keys that did not exist. That
knowledge is memory only (``FRESH_BLOCKS``): it is taken by the first channel made from that
object, and lost with the object (a reload after a failed save, a restart), after which a
channel starts after the reservations again. A block nobody takes stays at most
``FRESH_CAPACITY`` offers long; a later channel then starts after it (one save, never a
repeated nonce).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

from l2_session.domain.session.session import Session

RESERVATION_BLOCK = 1024  # counters per reservation (2^60 per key: skipped ones cost nothing)
FRESH_CAPACITY = 4096  # first blocks remembered for a channel to take; beyond, the oldest go


def reserve_with_keys(s: Session, now_us: int, block: int = RESERVATION_BLOCK) -> None:
    """Record the first block of ``s``'s new keys, to be saved with the event that brought
    them; offer it to the first channel made from ``s``."""
    start = s.counters_reserved()
    s.reserve_counters(now_us, start + block)
    FRESH_BLOCKS.offer(s, start)


def reservation_pending(s: Session) -> bool:
    """A reservation recorded on ``s`` and not yet saved (it may not be used yet)."""
    return any(type(e).__name__ == "CountersReserved" for e in s.pending_events)


class FreshBlocks:
    """First blocks of new keys that this process reserved and no channel has taken yet,
    keyed by the session object that recorded them."""

    def __init__(self, capacity: int = FRESH_CAPACITY) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, tuple[weakref.ref[Session], str | None, int, int]] = (
            OrderedDict()
        )

    def offer(self, s: Session, start: int) -> None:
        self._blocks[id(s)] = (weakref.ref(s), s.key_id, start, s.counters_reserved())
        self._blocks.move_to_end(id(s))
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def take(self, s: Session) -> tuple[int, int] | None:
        """``(start, until)`` of the block offered by ``s`` itself, if it is still the newest
        reservation of its current keys; else None. Either way it is gone after this call."""
        entry = self._blocks.pop(id(s), None)
        if entry is None:
            return None
        ref, key_id, start, until = entry
        if ref() is not s or s.key_id != key_id or s.counters_reserved() != until:
            return None
        return start, until


FRESH_BLOCKS = FreshBlocks()
