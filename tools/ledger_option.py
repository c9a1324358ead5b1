"""How a command is told its ledger: ``LEDGER`` (for the commands that read one: ``verify``,
``audit …``), ``--ledger``, or the environment variable ``L2S_LEDGER``.

A ledger is a SQLite file path or a ``postgresql://`` URL (docs/deployment.md). ``L2S_LEDGER``
lets a node's configuration name its PostgreSQL ledger once (and keep a password out of the
process list). SQLite stays the default of commands that have one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
from l2_session.infrastructure.ledger.pg_url import redact
from l2_session.tools.arguments import non_empty

ENV_VAR = "L2S_LEDGER"
WHAT = "a SQLite file or a postgresql:// URL"
F = TypeVar("F", bound=Callable[..., Any])


def ledger_option(*, positional: bool = False, default: str | None = None) -> Callable[[F], F]:
    """Add ``--ledger`` (and the argument ``LEDGER`` if ``positional``) to a command; the
    command gets the one given, else $L2S_LEDGER, else ``default`` (``resolve_ledger``)."""
    fallback = os.environ.get(ENV_VAR)
    said = f"default: ${ENV_VAR}" + (f", currently {redact(fallback)}" if fallback else "")
    said += f", else {default}" if default else ""

    def decorate(f: F) -> F:
        f = click.option(
            "--ledger",
            "ledger_option",
            metavar="PATH_OR_URL",
            type=non_empty(WHAT),
            help=f"the ledger: {WHAT} such as postgresql://user@host:port/dbname?schema=NAME "
            f"({said})",
        )(f)
        if positional:
            f = click.argument("ledger", required=False, metavar="[LEDGER]", type=non_empty(WHAT))(
                f
            )
        return f

    return decorate


def resolve_ledger(params: dict[str, Any], default: str | None) -> str:
    """The ledger of a command's parameters (``ledger_option``), or a usage error."""
    positional = "ledger" in params
    given = params.pop("ledger", None)
    option = params.pop("ledger_option", None)
    if given is not None and option is not None and given != option:
        raise click.UsageError(f"two ledgers given: {given} and --ledger {option}; give one")
    found = given or option or os.environ.get(ENV_VAR) or default
    if not found:
        how = "LEDGER or --ledger PATH_OR_URL" if positional else "--ledger PATH_OR_URL"
        raise click.UsageError(f"give the ledger: {how} ({WHAT}), or set {ENV_VAR}")
    return found
