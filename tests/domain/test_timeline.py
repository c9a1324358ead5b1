"""The session timeline (decision 9): wall-clock based, monotonic within a process."""

from __future__ import annotations

from l2_session.infrastructure.clock import ManualClock, SessionTimeline


def test_timeline_starts_at_wall_time_and_ignores_wall_clock_steps() -> None:
    clock = ManualClock()
    timeline = SessionTimeline(clock)
    start = clock.wall_us()
    assert timeline.now_us() == start
    clock.advance(1.5)
    clock.set_wall_us(start - 3_600_000_000)  # the wall clock steps back an hour
    assert timeline.now_us() == start + 1_500_000
    clock.advance(0.25)
    assert timeline.now_us() == start + 1_750_000
