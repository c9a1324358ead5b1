"""A session's bulk throughput against bare transports carrying the same bytes, side by side
in one run: 1,024 messages of 1 KiB, two processes, from the client's first write until the
server has the last.

- ours over QUIC and over μTCP at durability ``normal``: the messages suite's bulk phase
  (benchmarks/messages_ours.py: ``TcpNode.send`` with the session's window of 64, every
  batch a signed ledger save at each end, acknowledgements, real PQxdh session keys);
- bare aioquic: one aioquic stream carrying the same length-prefixed frames
  (benchmarks/floor_stream.py);
- asyncio TCP with each frame's body sealed with ChaCha20-Poly1305 and opened at the server:
  the transport and the per-message cryptography of a session over μTCP, nothing else.

Targets (the transports issue): ours ≥ 0.8 × each floor. Rounds alternate the four; ratios
are medians of the per-round ratios. Run alone with ``python -m benchmarks.bench_floors``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

from benchmarks.bench_messages import WINDOW, run_pair
from benchmarks.common import PACKAGE_DIR, figure, scratch_dir

COUNT, SIZE = 1024, 1024
SIZES = {False: 5, True: 1}  # rounds
FLOOR_RATIO = 0.8
TIMEOUT_S = 120.0


def _floor(kind: str) -> float:
    """Seconds for COUNT frames of SIZE over ``kind`` (floor_stream.py)."""
    command = [sys.executable, "-m", "benchmarks.floor_stream"]
    server = subprocess.Popen(
        [*command, "server", kind, str(COUNT), str(SIZE)], cwd=PACKAGE_DIR.parent,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = None
    try:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["port"]
        client = subprocess.Popen(
            [*command, "client", kind, str(port), str(COUNT), str(SIZE)],
            cwd=PACKAGE_DIR.parent, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert client.stdout is not None
        start = json.loads(client.stdout.readline())["start"]
        done = json.loads(server.stdout.readline())["done"]
        return float(done - start)
    finally:
        for process in (client, server):
            if process is not None:
                process.kill()
                process.wait(TIMEOUT_S)


def _ours(transport: str, work: Any) -> float:
    config = {
        "work": str(work), "durability": "normal", "transport": transport, "connects": 1,
        "echoes": 1, "echo_bytes": 64, "bulk_messages": COUNT, "bulk_bytes": SIZE,
        "window": WINDOW,
    }  # fmt: skip
    result, server = run_pair(f"ours-{transport}", None, config, work)
    return float(server["bulk"]["bulk_done"] - result["bulk_start"])


def run(quick: bool) -> dict[str, Any]:
    rounds = SIZES[quick]
    kinds = ("ours-quic", "ours-utcp", "aioquic", "tcp-sealed")
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    with scratch_dir("floors-") as work:
        for r in range(rounds):
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                if kind.startswith("ours-"):
                    (where := work / f"{r}-{kind}").mkdir()
                    seconds[kind].append(_ours(kind.removeprefix("ours-"), where))
                else:
                    seconds[kind].append(_floor(kind))
    mib = COUNT * SIZE / 2**20

    def rate(kind: str) -> float:
        return mib / statistics.median(seconds[kind])

    def ratio(ours: str, floor: str) -> float:
        return statistics.median(f / o for o, f in zip(seconds[ours], seconds[floor], strict=True))

    figures = [figure(f"{COUNT:,} x {SIZE} B, {kind}", rate(kind), "MiB/s") for kind in kinds]
    for ours, floor in (("ours-quic", "aioquic"), ("ours-utcp", "tcp-sealed")):
        value = ratio(ours, floor)
        figures.append(figure(
            f"  {ours} / {floor}", value, "x", target=f">= {FLOOR_RATIO}",
            ok=value >= FLOOR_RATIO, note="median of per-round ratios",
        ))  # fmt: skip
    return {"figures": figures, "seconds": seconds, "rounds": rounds}


if __name__ == "__main__":
    for f in run("--quick" in sys.argv)["figures"]:
        print(f)
