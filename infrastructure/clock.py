"""Time sources (SPEC-018 §6.3 "Injectable TimeSource").

The domain never reads a clock: time arrives as a value in each command. Adapters read one of
these and pass the value on. Two readings are kept apart on purpose:

* ``monotonic()`` — seconds, only ever moves forward; used for deadlines (heartbeats, timeouts).
* ``wall_us()``   — microseconds since the Unix epoch (UTC); used for ledger timestamps.
"""

from __future__ import annotations

import time
from typing import Protocol


class TimeSource(Protocol):
    def monotonic(self) -> float: ...

    def wall_us(self) -> int: ...


class SystemClock:
    """The real clock: ``time.monotonic`` for deadlines, ``time.time_ns`` for timestamps."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_us(self) -> int:
        return time.time_ns() // 1000


class ManualClock:
    """A clock that moves only when told to, for deterministic tests and simulations.

    ``set_wall_us`` may move the wall clock backwards (to test what the ledger does when a
    clock steps back); the monotonic reading can only advance.
    """

    def __init__(self, *, monotonic: float = 0.0, wall_us: int = 1_767_225_600_000_000) -> None:
        # Default wall time: 2026-01-01T00:00:00Z.
        self._monotonic = monotonic
        self._wall_us = wall_us

    def monotonic(self) -> float:
        return self._monotonic

    def wall_us(self) -> int:
        return self._wall_us

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"ManualClock.advance: seconds must be >= 0, got {seconds!r}")
        self._monotonic += seconds
        self._wall_us += round(seconds * 1_000_000)

    def set_wall_us(self, wall_us: int) -> None:
        self._wall_us = wall_us


class SessionTimeline:
    """The timeline the session core runs on (docs/spec-decisions.md, decision 9).

    Wall-clock microseconds, so that deadlines stored in the ledger still mean something
    after a restart, but advanced by the monotonic clock, so that a wall clock stepped back
    (NTP, a VM resumed) never makes time run backwards for the sessions of this process.
    """

    def __init__(self, source: TimeSource) -> None:
        self._source = source
        self._wall0 = source.wall_us()
        self._mono0 = source.monotonic()

    def now_us(self) -> int:
        return self._wall0 + round((self._source.monotonic() - self._mono0) * 1_000_000)
