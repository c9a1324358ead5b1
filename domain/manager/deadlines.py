"""The manager's timing structure: one binary heap of (deadline, generation, session).

Each session has at most one live entry: its earliest deadline (``timers.next_deadline``).
Re-arming a session pushes a new entry with a new generation; the old one stays in the heap
and is skipped when it surfaces (lazy deletion), and the heap is compacted when stale entries
outnumber live ones. So ``arm`` and popping one due entry cost O(log n), and a tick costs
O(due · log n) whatever the number of sessions registered (SPEC-018 §5.2 ``tick``).
"""

from __future__ import annotations

import heapq
import itertools
from uuid import UUID


class DeadlineHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, UUID]] = []
        self._live: dict[UUID, int] = {}  # session -> generation of its live entry
        self._generation = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def arm(self, session_id: UUID, at_us: int | None) -> None:
        """Wake ``session_id`` at ``at_us`` (replacing any earlier arming); None disarms."""
        if at_us is None:
            self._live.pop(session_id, None)
            return
        generation = next(self._generation)
        self._live[session_id] = generation
        heapq.heappush(self._heap, (at_us, generation, session_id))
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._live):
            self._heap = [e for e in self._heap if self._live.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    def pop_due(self, now_us: int) -> list[UUID]:
        """The sessions due at ``now_us``, disarmed. Collected before anything fires, so a
        session re-armed while firing waits for the next call and one tick always ends."""
        due: list[UUID] = []
        while self._heap and self._heap[0][0] <= now_us:
            _, generation, session_id = heapq.heappop(self._heap)
            if self._live.get(session_id) == generation:
                del self._live[session_id]
                due.append(session_id)
        return due

    def next_at(self) -> int | None:
        while self._heap and self._live.get(self._heap[0][2]) != self._heap[0][1]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None
