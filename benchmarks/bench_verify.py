"""Verification of a 1,000,000-event ledger with every core, against the Ed25519 verify rate.

Target: verify() events/s >= 0.9 x (single-core Ed25519 verify rate) x cores used, so that a
ledger's audit scales with the cores and costs little besides its signature checks.

What is timed: one ``verify(path)`` call, all of it — meta and signer checks, SQLite's
quick_check, starting the worker processes, reading and checking every row, stitching. The
single-core rate is cryptography's ``Ed25519PublicKey.verify`` of 32-byte hashes in a loop over
1,000 distinct signatures, measured just before every verify() run so both see the same machine
load. Distinct, because OpenSSL's verification is variable-time: one signature checked over and
over runs ~3% faster (its branches are learnt) than any real stream of signatures; that rate
is reported too, as a contrast. The ledger is built
once and cached (datasets.py); --quick uses 50,000 events.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from l2_session.infrastructure.ledger.verify import verify

from benchmarks.common import figure, median, rate_per_second, timed, timed_call
from benchmarks.datasets import many_sessions_ledger

TARGET_FRACTION = 0.9


def single_core_verify_rate(min_seconds: float, *, distinct: int = 1000) -> float:
    """Ed25519 verifications per second on one core, cycling over ``distinct`` signatures of
    random 32-byte hashes (``distinct=1``: the same one each time)."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    messages = [os.urandom(32) for _ in range(distinct)]
    pairs = [(key.sign(m), m) for m in messages] * max(1, 500 // distinct)

    def check(n: int) -> None:
        for signature, message in pairs:
            public.verify(signature, message)

    return rate_per_second(check, min_seconds=min_seconds, batch=len(pairs))


def parallel_verify_rate(processes: int, min_seconds: float) -> float:
    """The Ed25519 verify rate of ``processes`` processes at once: what the shared machine
    actually delivers to that many cores at this moment (the ideal verify() could reach)."""
    ctx = multiprocessing.get_context("forkserver")  # as verify() starts its workers
    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool:
        # A first round starts every process, so that the measured round is not start-up.
        list(pool.map(single_core_verify_rate, [0.05] * processes))
        return sum(pool.map(single_core_verify_rate, [min_seconds] * processes))


def run(quick: bool) -> dict[str, Any]:
    events = 50_000 if quick else 1_000_000
    repeat = 2 if quick else 3
    path = many_sessions_ledger(events)
    primitive: list[float] = []
    repeated: list[float] = []
    rates: list[float] = []
    efficiencies: list[float] = []
    ceilings: list[float] = []
    workers = 0
    for _ in range(repeat):
        single = single_core_verify_rate(min_seconds=2.0)
        seconds, report = timed_call(lambda: verify(path))
        if not report.ok or report.events_checked != events:
            raise AssertionError(f"benchmark ledger does not verify: {report.summary()}")
        workers = report.workers
        primitive.append(single)
        repeated.append(single_core_verify_rate(min_seconds=1.0, distinct=1))
        rates.append(events / seconds)
        efficiencies.append(events / seconds / (single * workers))
        ceilings.append(events / seconds / parallel_verify_rate(workers, min_seconds=2.0))
    # The one-process rate shows the per-event cost besides the signature check.
    one_process = []
    small = many_sessions_ledger(50_000)
    for _ in range(repeat):
        single = single_core_verify_rate(min_seconds=2.0)
        seconds = timed(lambda: verify(small, workers=1))
        one_process.append(50_000 / seconds / single)
    efficiency = median(efficiencies)
    figures = [
        figure(f"verify(), {events:,} events, {workers} workers", median(rates), "events/s",
               note=f"min {min(rates):.0f}, max {max(rates):.0f}"),
        figure("Ed25519 verify, 1 core (same run)", median(primitive), "verifications/s",
               note="1,000 distinct signatures"),
        figure("  (one signature over and over)", median(repeated), "verifications/s"),
        figure(f"  verify() / (1-core rate x {workers})", efficiency, "x",
               target=f">= {TARGET_FRACTION}", ok=efficiency >= TARGET_FRACTION),
        figure(f"  verify() / (rate of {workers} verifying processes at once)", median(ceilings),
               "x", note="what the shared machine gave that many cores"),
        figure("  verify(workers=1), 50k events / 1-core rate", median(one_process), "x",
               note="per-event cost other than the signature"),
    ]  # fmt: skip
    return {
        "figures": figures,
        "params": {"events": events, "repetitions": repeat, "cores_used": workers},
        "rates": rates,
        "single_core_rates": primitive,
        "single_core_rates_one_signature": repeated,
        "efficiencies": efficiencies,
        "vs_parallel_primitive": ceilings,
    }
