"""``python -m benchmarks [--quick] [--only NAME ...]``: run the suites, print a table, and
write every figure to benchmarks/results/latest.json (see docs/benchmarks.md).

A suite is a module of this package with ``run(quick: bool) -> dict``; register it in SUITES
with one line. Modules are imported only when their suite runs, so a suite whose service or
dependency is missing (postgres, say) fails alone, and the others still report.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import platform
import sqlite3
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from benchmarks.common import RESULTS_DIR, cores, load_average

SUITES: dict[str, str] = {
    "append": "benchmarks.bench_append",
    "verify": "benchmarks.bench_verify",
    "replay": "benchmarks.bench_replay",
    "postgres": "benchmarks.bench_postgres",
    "handshake": "benchmarks.bench_handshake",
    "tick": "benchmarks.bench_tick",
    "tcp": "benchmarks.bench_tcp",
    "attack": "benchmarks.bench_attack",
    "recover": "benchmarks.bench_recover",
    "messages": "benchmarks.bench_messages",
    "quic_link": "benchmarks.bench_quic_link",
    "transports": "benchmarks.bench_transports",
    "floors": "benchmarks.bench_floors",
    "tree": "benchmarks.bench_tree",
    "forensics": "benchmarks.bench_forensics",
}

_PACKAGES = ("eventsourcing", "cryptography", "blake3", "sqlite-utils")


def source_state() -> dict[str, Any]:
    """The commit measured, and files changed since it (the working tree is shared)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    changed = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "--short", "HEAD"), "changed": (changed or "").splitlines()}


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cores": cores(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": versions,
    }


def _format_value(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.3f}"


def print_table(name: str, result: dict[str, Any]) -> None:
    print(f"\n== {name} ==")
    if "error" in result:
        print(f"  FAILED: {result['error'].splitlines()[-1]}")
        return
    for f in result.get("figures", []):
        verdict = "" if f["ok"] is None else ("  ok" if f["ok"] else "  MISSED")
        target = f"  target {f['target']}" if f["target"] else ""
        note = f"  ({f['note']})" if f["note"] else ""
        value = _format_value(f["value"])
        print(f"  {f['name']:<52} {value:>12} {f['unit']}{target}{verdict}{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small data sets, few repetitions")
    parser.add_argument(
        "--only", action="append", choices=sorted(SUITES), metavar="NAME",
        help=f"run only this suite (repeatable): {', '.join(SUITES)}",
    )  # fmt: skip
    args = parser.parse_args(argv)
    selected = args.only or list(SUITES)
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "source": source_state(),
        "suites": {},
    }
    out = RESULTS_DIR / "latest.json"
    if args.only and out.exists():
        # --only refreshes the chosen suites and keeps the others' last figures (each suite
        # carries its own start time, so figures from different runs are not confused).
        with contextlib.suppress(ValueError):
            report["suites"] = json.loads(out.read_text()).get("suites", {})
    failed = False
    for name in selected:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        load_before, start = load_average(), time.perf_counter()
        try:
            result = importlib.import_module(SUITES[name]).run(args.quick)
        except Exception:  # one broken suite must not hide the others' figures
            result = {"error": traceback.format_exc()}
            failed = True
            print(result["error"], file=sys.stderr)
        result["started"], result["quick"] = started, args.quick
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        result["load_average"] = {"before": load_before, "after": load_average()}
        report["suites"][name] = result
        print_table(name, result)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {out.relative_to(RESULTS_DIR.parent.parent)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
