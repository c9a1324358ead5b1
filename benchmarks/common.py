"""What every suite shares: timing, figures with targets, scratch and cache directories.

A suite's ``run(quick)`` returns a dict; the runner prints its ``figures`` as a table and
writes the whole dict to results/latest.json. A figure is made by ``figure()``: a name, a
value with its unit, and optionally a target and whether it was met.
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PACKAGE_DIR = Path(__file__).resolve().parent
# Built data sets (the 1M-event ledger, the 100k-event session) are kept here between runs;
# gitignored. Scratch files also go here so that they sit on the same disk as the repository.
WORK_DIR = PACKAGE_DIR / ".work"
RESULTS_DIR = PACKAGE_DIR / "results"

# Bump when the workload (benchmarks/workload.py) changes what cached data sets contain.
WORKLOAD_VERSION = 1


def figure(
    name: str,
    value: float,
    unit: str,
    *,
    target: str | None = None,
    ok: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], object]) -> float:
    """Seconds taken by one call of ``fn``; garbage from earlier runs is collected first."""
    return timed_call(fn)[0]


def timed_call(fn: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of one call of ``fn``."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def rate_per_second(fn: Callable[[int], object], *, min_seconds: float, batch: int) -> float:
    """Operations per second of ``fn(batch)`` (which does ``batch`` operations), run for
    at least ``min_seconds``, so that a short hiccup on the shared machine counts for little."""
    done = 0
    start = time.perf_counter()
    while True:
        fn(batch)
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory for one suite's files, removed afterwards."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=WORK_DIR))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def load_average() -> list[float]:
    """The machine is shared: the load average is recorded next to every suite's figures."""
    return [round(x, 2) for x in os.getloadavg()]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
