"""DeadlineHeap: one live deadline per session; stale entries never fire nor pile up."""

from __future__ import annotations

from uuid import uuid4

from l2_session.domain.manager.deadlines import DeadlineHeap


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


def test_next_deadline_is_the_earliest_pending_one_with_ties_to_the_timer_listed_first() -> None:
    from l2_session.domain.session import timers
    from session_helpers import degraded, established, failed_by_timeout, miss_heartbeat

    partitioned = established()
    partitioned.connectivity_lost(partitioned.last_activity_us)
    missed = established()
    miss_heartbeat(missed)
    cases = [established(), established("responder"), partitioned, missed, degraded(established()),
             failed_by_timeout(), failed_by_timeout(retry_at_us=1)]  # fmt: skip
    for s in cases:
        pending = timers.deadlines(s)
        earliest = min(pending.values())
        first = next(t for t in timers.DEADLINES if pending.get(t) == earliest)
        assert timers.next_deadline(s) == (earliest, first)
    # A tie: the partition deadline and the next heartbeat fall at the same instant.
    pending = timers.deadlines(partitioned)
    assert pending[timers.Timer.PARTITION] == pending[timers.Timer.SEND_HEARTBEAT]
    assert timers.next_deadline(partitioned) == (
        pending[timers.Timer.SEND_HEARTBEAT],
        timers.Timer.SEND_HEARTBEAT,
    )
