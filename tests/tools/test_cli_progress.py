"""Long work shows progress on a terminal and stays quiet in a pipe: ``verify``, ``export``,
``status`` (its catch-up) and ``project --catch-up``, run with stderr on a pseudo-terminal
and then on a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest
from clirun import CLI, DemoLedger, run


def on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal: (exit code, stdout, what the terminal
    got)."""
    main, tty = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "L2S_LEDGER"} | {"TERM": "xterm"}
    process = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=tty, env=env)
    os.close(tty)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    out, _ = process.communicate(timeout=120)
    return process.returncode, out.decode(), shown.decode(errors="replace")


@pytest.mark.parametrize(
    "command, label",
    [
        (("verify", "{ledger}"), "verifying"),
        (("export", "{ledger}", "--out", "{work}/bundle"), "exporting"),
        (("status", "{ledger}", "--view", "{work}/view.sqlite3"), "catching up"),
    ],
)
def test_a_progress_bar_on_a_terminal_and_nothing_in_a_pipe(
    ledger: DemoLedger, tmp_path: Path, command: tuple[str, ...], label: str
) -> None:
    def args(work: Path) -> list[str]:
        return [a.format(ledger=ledger.path, work=work) for a in command]

    (tmp_path / "tty").mkdir()
    (tmp_path / "pipe").mkdir()
    code, out, shown = on_a_terminal(*args(tmp_path / "tty"))
    assert code == 0, shown
    assert label in shown and "\x1b[" in shown  # the bar, drawn with terminal escapes
    piped = run(*args(tmp_path / "pipe"))
    assert piped.returncode == 0 and piped.stderr == ""
    same = piped.stdout.replace(str(tmp_path / "pipe"), str(tmp_path / "tty"))
    assert same == out  # the same result either way


@pytest.mark.postgres
def test_project_catching_up_draws_a_bar_then_one_line(ledger, tmp_path, pg_location):
    url = pg_location.url()
    assert run("pg-import", "--from", str(ledger.path), "--ledger", url).returncode == 0
    view = pg_location.with_schema(pg_location.schema + "_view").url()
    args = ["project", "--ledger", url, "--view", view, "--catch-up", "--batch-size", "5",
            "--projection", "l2_session.projections.session_counts:SessionEventCounts"]  # fmt: skip
    code, out, shown = on_a_terminal(*args)
    assert code == 0 and "projecting" in shown, shown
    lines = out.splitlines()
    assert len(lines) == 1 and " behind 0 " in lines[0], out  # the bar, not a line per batch
    again = pg_location.with_schema(pg_location.schema + "_piped").url()
    piped = run(*[again if a == view else a for a in args])
    assert piped.returncode == 0 and piped.stderr == ""
    assert len(piped.stdout.splitlines()) > 1  # in a pipe: a line per batch, as before
