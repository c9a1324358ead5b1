"""How the CLI shows things: JSON for programs, rich tables and progress bars for people.

A progress bar is drawn on stderr only when stderr is a terminal, so that pipes and log files
get the result alone; tables go to stdout, in colour only on a terminal (rich decides, and
honours NO_COLOR).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

Progress = Callable[[int, int], None]


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


@contextmanager
def progress_bar(what: str) -> Iterator[Progress | None]:
    """A ``progress(done, total)`` callback drawing a bar on a terminal's stderr; None (no
    callback) when stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        f"[bold]{what}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    file: TextIO | None = None,
) -> None:
    """A table on stdout: boxed on a terminal, in ASCII and never wrapped in a pipe. Cells are
    text, never markup: what a ledger holds is shown as it is (control characters escaped)."""
    from l2_session.infrastructure.ledger.verify_report import printable
    from rich import box
    from rich.table import Table
    from rich.text import Text

    out = file if file is not None else sys.stdout
    terminal = out.isatty()
    console = _console(file=out, width=None if terminal else 100_000, highlight=False)
    if title:
        console.print(Text(title))
    table = Table(*columns, box=box.SIMPLE_HEAD if terminal else box.ASCII2)
    for row in rows:
        table.add_row(*(Text(printable("" if v is None else str(v))) for v in row))
    console.print(table)


@functools.cache
def _console_class() -> Any:
    from rich.console import Console

    class QuietConsole(Console):
        """rich's Console, but a reader that went away (`| head`) is a ``BrokenPipeError``
        for main() to handle as for any output (exit 141, quietly), not rich's own exit."""

        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return QuietConsole


def _console(**kwargs: Any) -> Any:
    """A rich Console (``QuietConsole``); rich is imported only when a table is printed."""
    return _console_class()(**kwargs)
