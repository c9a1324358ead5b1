"""The ``--ledger`` option every command that opens a ledger takes, and its L2S_LEDGER default.

``--ledger`` is a SQLite file path or a ``postgresql://`` URL (docs/deployment.md); when it is
not given, the environment variable ``L2S_LEDGER`` is used, so a node's configuration can name
its PostgreSQL ledger once (and keep a password out of the process list). SQLite stays the
default of commands that have one.
"""

from __future__ import annotations

import argparse
import os

from l2_session.infrastructure.ledger.pg_url import redact
from l2_session.tools.arguments import non_empty

ENV_VAR = "L2S_LEDGER"


def add_ledger_argument(
    parser: argparse.ArgumentParser, *, default: str | None = None
) -> argparse.Action:
    """Add ``--ledger``; its default is $L2S_LEDGER, then ``default`` (else it is required)."""
    fallback = os.environ.get(ENV_VAR) or default
    return parser.add_argument(
        "--ledger",
        default=fallback,
        required=fallback is None,
        type=non_empty("a SQLite file or a postgresql:// URL"),
        metavar="PATH_OR_URL",
        help=(
            "ledger: a SQLite file or postgresql://user@host:port/dbname?schema=NAME "
            f"(default: ${ENV_VAR}"
            + (f", currently {redact(fallback)}" if fallback else "")
            + (f", else {default}" if default else "")
            + ")"
        ),
    )
