"""DeadlineHeap: one live deadline per session; stale entries never fire nor pile up."""

from __future__ import annotations

from uuid import uuid4

from l2_session.domain.deadlines import DeadlineHeap


def test_rearming_replaces_the_deadline_and_disarming_removes_it() -> None:
    heap = DeadlineHeap()
    a, b, c = uuid4(), uuid4(), uuid4()
    heap.arm(a, 10)
    heap.arm(b, 20)
    heap.arm(c, 30)
    heap.arm(a, 25)  # later: the entry at 10 is stale now
    heap.arm(c, None)
    assert heap.next_at() == 20
    assert heap.pop_due(19) == []
    assert heap.pop_due(25) == [b, a]
    assert heap.pop_due(10**9) == [] and heap.next_at() is None and len(heap) == 0


def test_stale_entries_are_compacted_so_the_heap_stays_proportional() -> None:
    heap = DeadlineHeap()
    ids = [uuid4() for _ in range(100)]
    for round_ in range(50):
        for n, sid in enumerate(ids):
            heap.arm(sid, 1_000 * round_ + n)
    assert len(heap) == 100
    assert len(heap._heap) <= 2 * 100 + 1
    assert heap.pop_due(49_000 + 99) == ids
