"""How a command of the CLI fails: its exit code, and the one line that says what was wrong.

main() (cli.py) runs every command inside one handler, which hands whatever a command raised
to ``explain``; commands raise and never print their own errors. A traceback is shown only
with ``--debug``. The codes are documented in ``l2-session --help`` and docs/cli.md.
"""

from __future__ import annotations

import sqlite3
import sys
from enum import IntEnum

from eventsourcing.persistence import PersistenceError
from l2_session.infrastructure.ledger import LedgerCorrupted, LedgerError


class ExitCode(IntEnum):
    OK = 0
    NOT_INTACT = 1  # the ledger (or a checkpoint of it) is not intact
    BAD_INPUT = 2  # usage, or input that cannot be read or used
    INTERNAL = 3  # a bug in l2-session
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)
    OUTPUT_CLOSED = 141  # the reader of stdout went away (128 + SIGPIPE, as shells report it)


EPILOG = """\
\b
exit codes:
0    ok
1    the ledger is not intact: verify found problems, a checkpoint does not match,
     or its database is damaged (a SQLite file) or incomplete (a PostgreSQL schema)
2    usage or unreadable input: a wrong argument, a missing or unreadable file, a file
     that is not a ledger, a bad postgresql:// URL, a server that cannot be reached
3    internal error (a bug): rerun with --debug and report the traceback
130  interrupted (Ctrl-C)
141  standard output was closed early (as by `| head`)

\b
On failure, one line on stderr says what was wrong; --debug adds the traceback."""
"""The exit codes, as ``l2-session --help`` ends (``\\b``: click keeps those lines as they are)."""


class UsageError(Exception):
    """An argument or input the CLI itself found wrong; the message names it and says what
    was expected."""


def explain(error: BaseException, sqlite_files: list[str]) -> tuple[ExitCode, str]:
    """The exit code and message for ``error``, raised by a command. ``sqlite_files``: the
    SQLite files named on the command line (SQLite's own errors do not say which)."""
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted"
    if isinstance(error, UsageError):
        return ExitCode.BAD_INPUT, str(error)
    if isinstance(error, LedgerError):  # not found, not a ledger, bad URL, unreachable, refused
        damaged = isinstance(error, LedgerCorrupted) or _sqlite_corrupt(error.__cause__)
        return ExitCode.NOT_INTACT if damaged else ExitCode.BAD_INPUT, str(error)
    if isinstance(error, PersistenceError) and error.__cause__ is not None:
        error = error.__cause__  # eventsourcing wraps the driver's error: say what it said
    if isinstance(error, sqlite3.Error):
        where = " or ".join(sqlite_files) or "the SQLite database"
        if _sqlite_corrupt(error):
            return ExitCode.NOT_INTACT, (
                f"{where} is damaged (SQLite: {error}) — `l2-session verify` reports where; "
                "restore the ledger from a backup"
            )
        return ExitCode.BAD_INPUT, f"SQLite cannot use {where}: {error}"
    psycopg = sys.modules.get("psycopg")  # loaded only when a command used PostgreSQL
    if psycopg is not None and isinstance(error, psycopg.Error):
        said = str(error).strip().split("\n")[0]  # its first line; the rest quotes the SQL
        if isinstance(error, psycopg.errors.UndefinedTable):  # the schema's meta was checked
            return ExitCode.NOT_INTACT, f"the ledger schema is incomplete (PostgreSQL: {said})"
        return ExitCode.BAD_INPUT, f"PostgreSQL: {said}"
    if isinstance(error, PersistenceError):
        return ExitCode.BAD_INPUT, f"the database refused: {error}"
    if isinstance(error, OSError):
        if error.filename is not None:
            return ExitCode.BAD_INPUT, f"cannot use {error.filename}: {error.strerror}"
        return ExitCode.BAD_INPUT, str(error)
    return ExitCode.INTERNAL, (
        f"internal error: {type(error).__name__}: {error} — rerun with --debug for the "
        "traceback, and report it"
    )


def _sqlite_corrupt(error: BaseException | None) -> bool:
    """Whether SQLite found the file damaged (a ledger once, but not intact now), rather than
    not a database at all, unreadable or locked."""
    return getattr(error, "sqlite_errorname", None) == "SQLITE_CORRUPT"
