"""Messages over a session, side by side with py-libp2p 0.8.1: our ``TcpNode`` (real PQxdh keys,
signed SQLite ledgers at durability ``normal`` and ``full`` over the node's TCP (μTCP), and at
``normal`` over QUIC links) against py-libp2p over TCP with its
default security (Noise) and muxer (yamux), on loopback, a server process and a client process
for each, fresh for every run.

Each round runs the four contenders one after the other, in an order that rotates from round
to round (``SIZES``: 5 rounds; ``--quick``, 1 and fewer of everything); each run measures:
- connect → authenticated session, 50 times: ours, a new ``TcpNode`` (made before the clock
  starts, on the client's one identity and ledger) connects and ``establish``es until both
  ends are ``established`` (the server notes when its save returned), then closes the session;
  py-libp2p, ``connect`` (dial, Noise, yamux) and ``new_stream`` until the stream is
  negotiated at both ends, then disconnects. Times come from ``time.monotonic`` in both
  processes (one clock for the machine); the later end counts;
- a 64 B echo round trip, 200 one after the other: the client sends, the server's application
  gets the message and sends it back, the client's application gets it; for ours, also 200
  answered by the server node's ``answer`` (decision 23: on its worker, in the save of the
  delivery) instead of its application;
- 1 MiB as 1,024 messages of 1 KiB: from the client's first send until the server's
  application has the last one, as MiB/s. Ours sends through ``TcpNode.send``, which waits
  while ``WINDOW`` messages are unacknowledged (the session's send window,
  ``SessionConfig.send_window``); py-libp2p writes them to one stream.
For ours the processes also count, per phase: Data frames sent per message delivered (both
ends), ledger appends per message delivered (both ends), and the longest event-loop stall (a
task sleeping 1 ms over and over; the longest it overslept, either end; py-libp2p's, under
trio, for contrast). The probe sees the process's own work and the other processes that
share the cores alike.

Figures are medians over rounds; ratios are medians of the per-round ratios (each pairs runs
seconds apart). py-libp2p is not a dependency of l2-session: the first run makes a venv for it
(``benchmarks/.work/libp2p-0.8.1-venv``, gitignored, reused after) with ``pip install
libp2p==0.8.1``. If that fails, the suite says why and reports our figures alone.

Run alone with ``python -m benchmarks.bench_messages [--quick]``, or as the "messages" suite.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from l2_session.domain.session.config import DEFAULT_CONFIG

from benchmarks.common import PACKAGE_DIR, WORK_DIR, figure, scratch_dir

LIBP2P = "libp2p==0.8.1"
LIBP2P_VENV = WORK_DIR / "libp2p-0.8.1-venv"
REPO_DIR = PACKAGE_DIR.parent
CONTENDERS = ("ours-normal", "ours-full", "ours-quic", "libp2p")
# Ours: (durability, transport). ``ours-quic``: a session over QUIC links (decision 24), at
# ``normal``, beside the same over μTCP (``ours-normal``).
OURS = {
    "ours-normal": ("normal", "utcp"),
    "ours-full": ("full", "utcp"),
    "ours-quic": ("normal", "quic"),
}
ECHO_BYTES, BULK_BYTES = 64, 1024
# Messages a session keeps unacknowledged (ours): the default SessionConfig.send_window.
WINDOW = DEFAULT_CONFIG.send_window
# rounds, connects per run, echoes per run, bulk messages per run; by --quick
SIZES = {False: (5, 50, 200, 1024), True: (1, 10, 50, 256)}
RUN_TIMEOUT_S = 900.0  # a run that takes longer is killed and reported as failed
INSTALL_TIMEOUT_S = 1800.0

# Targets (the bench only reports them; no test asserts on time).
ECHO_VS_LIBP2P = 2.0  # echo p50, ours at normal / libp2p, at most
BULK_VS_LIBP2P = {"normal": 1.0, "full": 0.5}  # throughput, ours / libp2p, at least
CONNECT_VS_LIBP2P = 0.8  # connect p50, ours / libp2p, at most
FRAMES_PER_MESSAGE = 1.0  # Data frames sent per message delivered, at most (goal)
STALL_MS = 5.0  # longest event-loop stall at normal, at most (goal)


# ---------------------------------------------------------------------------- py-libp2p venv
def libp2p_python() -> tuple[Path | None, str]:
    """The python of the venv holding py-libp2p, made on first use; or None and why not."""
    python = LIBP2P_VENV / "bin" / "python"
    marker = LIBP2P_VENV / ".installed"
    if marker.exists() and python.exists():
        return python, f"{LIBP2P} from the venv made earlier"
    shutil.rmtree(LIBP2P_VENV, ignore_errors=True)
    log = LIBP2P_VENV.parent / "libp2p-install.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"messages: making a venv for {LIBP2P} (first run only; log in {log.name})", flush=True)
    steps = (
        ("making the venv", [sys.executable, "-m", "venv", str(LIBP2P_VENV)]),
        (f"pip install {LIBP2P}", [str(python), "-m", "pip", "install", LIBP2P]),
        ("importing it", [str(python), "-I", "-c", "import libp2p, trio, multiaddr"]),
    )
    with log.open("w") as out:
        for what, step in steps:
            out.write(f"$ {' '.join(step)}\n")
            out.flush()
            try:
                done = subprocess.run(
                    step, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S
                )
            except (OSError, subprocess.SubprocessError) as error:
                return None, f"{what} failed: {error}"
            if done.returncode != 0:
                return None, f"{what} failed: {_last_error(log)}"
    marker.write_text(LIBP2P + "\n")
    return python, f"{LIBP2P}, installed in a venv of its own"


def _last_error(log: Path) -> str:
    """The last line of the install log that says something (pip repeats warnings a lot)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    said = [line for line in lines if line and not line.startswith(("WARNING", "$"))]
    return said[-1] if said else f"see {log}"


# ---------------------------------------------------------------------------- one run
def _command(contender: str, python: Path | None) -> list[str]:
    if contender == "libp2p":
        # -I: the venv's own packages only, and not this directory on sys.path.
        return [str(python), "-I", str(PACKAGE_DIR / "messages_libp2p.py")]
    return [sys.executable, "-m", "benchmarks.messages_ours"]


def _said(process: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"a benchmark process ended early: {' | '.join(tail)}")
    said: dict[str, Any] = json.loads(line)
    return said


def _tell(process: subprocess.Popen[str], line: str) -> None:
    stdin: IO[str] | None = process.stdin
    assert stdin is not None
    stdin.write(line + "\n")
    stdin.flush()


def run_pair(contender: str, python: Path | None, config: dict[str, Any], work: Path) -> Any:
    """One server and one client process; the client's result and, per phase, the server's."""
    command = _command(contender, python)
    logs = {role: work / f"{role}.log" for role in ("server", "client")}
    processes: list[subprocess.Popen[str]] = []

    def start(role: str, settings: dict[str, Any]) -> subprocess.Popen[str]:
        with logs[role].open("w") as errors:
            process = subprocess.Popen(
                [*command, role, json.dumps(settings)], cwd=REPO_DIR, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
            )  # fmt: skip
        processes.append(process)
        return process

    def kill() -> None:
        for process in processes:
            process.kill()

    watchdog = threading.Timer(RUN_TIMEOUT_S, kill)
    watchdog.start()
    try:
        server = start("server", config)
        ready = _said(server, logs["server"])
        client = start("client", {**config, **ready})
        server_phases: dict[str, Any] = {}
        current = "setup"
        while "result" not in (said := _said(client, logs["client"])):
            _tell(server, f"phase {said['phase']}")  # the server's count up to here ...
            server_phases[current] = _said(server, logs["server"])
            current = said["phase"]
            _tell(client, "go")  # ... and the client's next phase begins
        _tell(server, "end")
        server_phases[current] = _said(server, logs["server"])
        for process in processes:
            process.wait(timeout=60)
        return said["result"], server_phases
    finally:
        watchdog.cancel()
        kill()


# ---------------------------------------------------------------------------- figures of a run
def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(
    contender: str, config: dict[str, Any], result: dict[str, Any], server: dict[str, Any]
) -> dict[str, Any]:
    """The figures of one run, in ms, MiB/s, and counts per message."""
    if contender == "libp2p":  # the server notes its streams in the order they come
        pairs = result["connect"]
        ends = server["connect"]["connected"]
        if len(ends) != len(pairs):
            ends = [end for _, end, _ in pairs]
        both = zip(pairs, ends, strict=True)
        connect = [max(end, theirs) - start for (start, end, _), theirs in both]
        dialled = [dialled - start for start, _, dialled in pairs]
    else:
        ends = server["connect"]["established"]
        connect = [max(end, ends.get(conv, end)) - start for conv, start, end in result["connect"]]
    bulk_s = server["bulk"]["bulk_done"] - result["bulk_start"]
    bulk_mib = config["bulk_messages"] * config["bulk_bytes"] / 2**20
    figures: dict[str, Any] = {
        "connect_p50_ms": percentile(connect, 50) * 1e3,
        "connect_p99_ms": percentile(connect, 99) * 1e3,
        "echo_p50_ms": percentile(result["echo_s"], 50) * 1e3,
        "echo_p99_ms": percentile(result["echo_s"], 99) * 1e3,
        "bulk_seconds": bulk_s,
        "bulk_mib_s": bulk_mib / bulk_s,
    }
    if contender == "libp2p":
        figures["dial_p50_ms"] = percentile(dialled, 50) * 1e3
        stalls = [result["stall_s"][p] for p in ("echo", "bulk")]
        stalls += [server[p]["stall_s"] for p in ("echo", "bulk")]
        figures["stall_ms"] = max(stalls) * 1e3
        return figures
    figures["answer_p50_ms"] = percentile(result["answer_s"], 50) * 1e3
    figures["answer_p99_ms"] = percentile(result["answer_s"], 99) * 1e3
    for name in ("echo", "answer", "bulk"):
        mine, theirs = result["phases"][name], server[name]
        sent = {k: mine["sent"].get(k, 0) + theirs["sent"].get(k, 0) for k in
                set(mine["sent"]) | set(theirs["sent"])}  # fmt: skip
        delivered = sent.get("Deliver", 0)
        figures[name] = {
            "delivered": delivered,
            "sent": sent,
            "data_frames_per_message": sent.get("Data", 0) / max(1, delivered),
            "ack_frames_per_message": sent.get("DataAck", 0) / max(1, delivered),
            "appends_per_message": (mine["appends"] + theirs["appends"]) / max(1, delivered),
            "commits_per_message": (mine["commits"] + theirs["commits"]) / max(1, delivered),
            "stall_ms": max(mine["stall_s"], theirs["stall_s"]) * 1e3,
            "stall_ms_client": mine["stall_s"] * 1e3,
            "stall_ms_server": theirs["stall_s"] * 1e3,
        }
    for key in ("stall_ms", "stall_ms_client", "stall_ms_server"):
        figures[key] = max(figures[name][key] for name in ("echo", "answer", "bulk"))
    return figures


# ---------------------------------------------------------------------------- the suite
def run(quick: bool) -> dict[str, Any]:
    rounds, connects, echoes, bulk = SIZES[quick]
    python, libp2p_setup = libp2p_python()
    contenders = CONTENDERS if python is not None else CONTENDERS[:-1]
    if python is None:
        print(f"messages: py-libp2p left out, our figures alone: {libp2p_setup}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    with scratch_dir("messages-") as work:
        for r in range(rounds):
            order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
            for contender in order:
                (where := work / f"{r}-{contender}").mkdir()
                config = {
                    "work": str(where), "durability": OURS.get(contender, ("", ""))[0],
                    "transport": OURS.get(contender, ("", ""))[1],
                    "connects": connects, "echoes": echoes, "echo_bytes": ECHO_BYTES,
                    "bulk_messages": bulk, "bulk_bytes": BULK_BYTES, "window": WINDOW,
                }  # fmt: skip
                try:
                    result, server = run_pair(contender, python, config, where)
                except (RuntimeError, ValueError, subprocess.SubprocessError) as error:
                    if contender != "libp2p":
                        raise
                    libp2p_setup = f"a py-libp2p run failed, left out: {error}"
                    print(f"messages: {libp2p_setup}", flush=True)
                    contenders = CONTENDERS[:-1]
                    del runs["libp2p"]
                    continue
                runs[contender].append(measure(contender, config, result, server))
    return {
        "figures": _figures(runs, connects, echoes, bulk),
        "libp2p": libp2p_setup,
        "runs": runs,
        "sizes": {"rounds": rounds, "connects": connects, "echoes": echoes,
                  "bulk_messages": bulk, "bulk_bytes": BULK_BYTES, "window": WINDOW},
    }  # fmt: skip


def _figures(
    runs: dict[str, list[dict[str, Any]]], connects: int, echoes: int, bulk: int
) -> list[dict[str, Any]]:
    def med(contender: str, *path: str) -> float:
        values = []
        for measured in runs[contender]:
            for key in path:
                measured = measured[key]
            values.append(float(measured))  # type: ignore[arg-type]
        return statistics.median(values)

    def ratio(a: str, b: str, key: str) -> float:
        return statistics.median(x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True))

    size = f"{bulk:,} x {BULK_BYTES} B"
    figures = []
    for contender in runs:
        label = contender.replace("-", " ")
        figures += [
            figure(f"connect -> session p50, {label}", med(contender, "connect_p50_ms"), "ms",
                   note=f"p99 {med(contender, 'connect_p99_ms'):.1f} ms; {connects} per round"
                   + ("" if contender != "libp2p" else
                      f"; connect() alone p50 {med(contender, 'dial_p50_ms'):.1f} ms")),
            figure(f"{ECHO_BYTES} B echo round trip p50, {label}", med(contender, "echo_p50_ms"),
                   "ms", note=f"p99 {med(contender, 'echo_p99_ms'):.2f} ms; {echoes} per round"
                   + ("" if contender == "libp2p" else "; the server's application sends it back")),
            *([] if contender == "libp2p" else [
                figure(f"{ECHO_BYTES} B echo answered p50, {label}",
                       med(contender, "answer_p50_ms"), "ms",
                       note=f"p99 {med(contender, 'answer_p99_ms'):.2f} ms; the server node's "
                       "answer (decision 23), in the delivery's save"),
            ]),
            figure(f"{size} messages, {label}", med(contender, "bulk_mib_s"), "MiB/s",
                   note=f"until the server has the last; window {WINDOW}"
                   if contender != "libp2p" else "until the server has the last; one stream"),
        ]  # fmt: skip
    if "libp2p" in runs:
        for durability in ("normal", "full"):
            ours = f"ours-{durability}"
            echo = ratio(ours, "libp2p", "echo_p50_ms")
            answered = statistics.median(
                x["answer_p50_ms"] / y["echo_p50_ms"]
                for x, y in zip(runs[ours], runs["libp2p"], strict=True)
            )
            mib = ratio(ours, "libp2p", "bulk_mib_s")
            connect = ratio(ours, "libp2p", "connect_p50_ms")
            echo_target = ECHO_VS_LIBP2P if durability == "normal" else None
            figures += [
                figure(f"  echo p50, answered, {durability} / libp2p", answered, "x",
                       target=None if echo_target is None else f"<= {echo_target}",
                       ok=None if echo_target is None else answered <= echo_target,
                       note="median of per-round ratios"),
                figure(f"  echo p50, application, {durability} / libp2p", echo, "x",
                       target=None if echo_target is None else f"<= {echo_target}",
                       ok=None if echo_target is None else echo <= echo_target,
                       note="median of per-round ratios"),
                figure(f"  bulk throughput, {durability} / libp2p", mib, "x",
                       target=f">= {BULK_VS_LIBP2P[durability]}",
                       ok=mib >= BULK_VS_LIBP2P[durability]),
                figure(f"  connect p50, {durability} / libp2p", connect, "x",
                       target=f"<= {CONNECT_VS_LIBP2P}", ok=connect <= CONNECT_VS_LIBP2P),
            ]  # fmt: skip
    if "ours-quic" in runs:
        quic_answered = statistics.median(
            x["answer_p50_ms"] / y["answer_p50_ms"]
            for x, y in zip(runs["ours-quic"], runs["ours-normal"], strict=True)
        )
        figures += [
            figure("  echo answered p50, QUIC / utcp (both normal)", quic_answered, "x",
                   note="a session over QUIC links against the same over the node's TCP"),
            figure("  bulk throughput, QUIC / utcp", ratio("ours-quic", "ours-normal",
                                                          "bulk_mib_s"), "x"),
            figure("  connect p50, QUIC / utcp", ratio("ours-quic", "ours-normal",
                                                      "connect_p50_ms"), "x",
                   note="a fresh QUIC endpoint per connect: full handshakes, no 0-RTT"),
        ]  # fmt: skip
        if "libp2p" in runs:
            figures += [
                figure("  bulk throughput, QUIC / libp2p", ratio("ours-quic", "libp2p",
                                                                "bulk_mib_s"), "x"),
            ]  # fmt: skip
    for contender in (c for c in runs if c != "libp2p"):
        label = contender.removeprefix("ours-")
        stall = med(contender, "stall_ms")
        worst = max(m["stall_ms"] for m in runs[contender])
        figures += [
            figure(f"Data frames / message delivered, echo, {label}",
                   med(contender, "echo", "data_frames_per_message"), "",
                   target=f"<= {FRAMES_PER_MESSAGE}",
                   ok=med(contender, "echo", "data_frames_per_message") <= FRAMES_PER_MESSAGE,
                   note=f"acks {med(contender, 'echo', 'ack_frames_per_message'):.2f}/message"),
            figure(f"Data frames / message delivered, bulk, {label}",
                   med(contender, "bulk", "data_frames_per_message"), "",
                   target=f"<= {FRAMES_PER_MESSAGE}",
                   ok=med(contender, "bulk", "data_frames_per_message") <= FRAMES_PER_MESSAGE,
                   note=f"acks {med(contender, 'bulk', 'ack_frames_per_message'):.2f}/message"),
            figure(f"ledger appends / message delivered, echo, {label}",
                   med(contender, "echo", "appends_per_message"), "",
                   note=f"answered {med(contender, 'answer', 'appends_per_message'):.2f}; "
                   f"bulk {med(contender, 'bulk', 'appends_per_message'):.2f}; both ends"),
            figure(f"longest event-loop stall, {label}", stall, "ms",
                   target=f"<= {STALL_MS}" if label == "normal" else None,
                   ok=stall <= STALL_MS if label == "normal" else None,
                   note=f"echo, answered and bulk, either end (the server's "
                        f"{med(contender, 'stall_ms_server'):.1f}); worst round {worst:.1f} ms"),
        ]  # fmt: skip
    if "libp2p" in runs:
        figures.append(
            figure("longest event-loop stall, libp2p (trio)", med("libp2p", "stall_ms"), "ms",
                   note="the same probe, for contrast")
        )  # fmt: skip
    return figures


if __name__ == "__main__":
    began = time.perf_counter()
    for f in run("--quick" in sys.argv)["figures"]:
        print(f"{f['name']:<52} {f['value']:>10,.2f} {f['unit']:<5} {f['note']}")
    print(f"({time.perf_counter() - began:.1f} s)")
