"""What every command of the CLI shares: its body takes its parameters as one namespace
(``args``), ``--debug`` and ``--json`` are declared alike, and main() (cli.py) can name the
files the command was given when an error does not."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import click
from l2_session.tools.ledger_option import resolve_ledger

Body = Callable[[Any], int]
SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100, "terminal_width": 100}


class _Called:
    """What the command being run was given."""

    args: Any = None


called = _Called()


def run_body(body: Body, params: dict[str, Any], *, ledger: str | bool | None = False) -> int:
    """Run a command's body with its parameters as ``args``. ``ledger``: False if the command
    takes none, else its default (None: there is none, the ledger must be given)."""
    if ledger is not False:
        params["ledger"] = resolve_ledger(params, ledger if isinstance(ledger, str) else None)
    called.args = args = SimpleNamespace(**params)
    return body(args)


def debug_option(f: Any) -> Any:
    """``--debug`` on every command (main() reads it from the command line itself, so that it
    counts even when parsing fails)."""
    return click.option(
        "--debug", is_flag=True, expose_value=False, help="on failure, show the traceback"
    )(f)


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="print JSON")(f)


def options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Several click decorators as one, applied in the order written (top first)."""

    def apply(f: Any) -> Any:
        for decorate in reversed(decorators):
            f = decorate(f)
        return f

    return apply
