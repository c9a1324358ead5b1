"""The ``l2-session`` command line (argparse, one subcommand per tool).

Commands raise; they never print their own errors. main() runs each inside one handler that
turns what was raised into one line on stderr and a documented exit code (errors.py), with
the traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import sys
import traceback

from l2_session.tools.arguments import (
    ArgumentsRejected,
    Parser,
    did_key,
    non_empty,
    whole_number,
)
from l2_session.tools.checkpoint_file import read_checkpoint
from l2_session.tools.errors import EPILOG, ExitCode, explain


def _diagram(args: argparse.Namespace) -> int:
    from l2_session.domain.session.diagram import render_mermaid

    sys.stdout.write(render_mermaid())
    return ExitCode.OK


def _demo(args: argparse.Namespace) -> int:
    from l2_session.tools.demo import print_summary, run_demo

    result = run_demo(args.ledger, sessions=args.sessions, checkpoint_file=args.save_checkpoint)
    print_summary(result)
    return ExitCode.OK if result.ok else ExitCode.NOT_INTACT


def _node(args: argparse.Namespace) -> int:
    from l2_session.tools.node import main as run_node

    return run_node(args)


def _verify(args: argparse.Namespace) -> int:
    from l2_session.infrastructure.ledger.verify import verify

    checkpoint = read_checkpoint(args.checkpoint) if args.checkpoint else None
    report = verify(
        args.ledger,
        checkpoint,
        trusted_signers=args.trust or None,
        workers=args.workers,
        witnesses=args.witness or (),
    )
    print(report.summary())
    return ExitCode.OK if report.ok else ExitCode.NOT_INTACT


def _version() -> str:
    try:
        return importlib.metadata.version("l2-session")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _add_debug(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--debug", action="store_true", default=default, help="on failure, show the traceback"
    )


def _verify_options(check: argparse.ArgumentParser) -> None:
    from l2_session.tools.ledger_option import add_ledger_argument

    add_ledger_argument(check)
    check.add_argument(
        "--checkpoint", metavar="FILE", help="a checkpoint seen earlier (truncation, rewrite)"
    )
    check.add_argument(
        "--trust",
        action="append",
        type=did_key,
        metavar="DID",
        help="a node did:key allowed to sign (repeat); default: the signers the ledger "
        "registers, reported as unanchored",
    )
    check.add_argument(
        "--witness",
        action="append",
        type=non_empty("a SQLite file or a postgresql:// URL"),
        metavar="PATH_OR_URL",
        help="another node's ledger: check every checkpoint of this ledger it witnessed, and "
        "report every conflict it recorded about this ledger (repeat)",
    )
    most = 4 * (os.cpu_count() or 1)  # more processes than that are never faster
    check.add_argument(
        "--workers",
        type=whole_number(1, most),
        help=f"processes to use, 1 to {most} (default: one per core)",
    )
    check.set_defaults(run=_verify)


def build_parser() -> argparse.ArgumentParser:
    from l2_session.tools import audit, pg_commands
    from l2_session.tools.ledger_option import add_ledger_argument

    parser = Parser(
        prog="l2-session",
        description="SPEC-018 sessions on a signed, event-sourced ledger",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"l2-session {_version()}")
    _add_debug(parser, False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help)
        # SUPPRESS: given after the command, --debug must not be reset by the command's default.
        _add_debug(sub, argparse.SUPPRESS)
        return sub

    diagram = command("diagram", "print the session state machine as a mermaid stateDiagram-v2")
    diagram.set_defaults(run=_diagram)
    demo = command(
        "demo", "drive sessions through SPEC-018 on a new signed ledger, verify, summarise"
    )
    add_ledger_argument(demo, default="l2-session-demo.sqlite3")
    demo.add_argument(
        "--sessions",
        type=whole_number(1, 10_000),
        default=6,
        help="how many sessions (1 to 10000, default 6)",
    )
    demo.add_argument(
        "--save-checkpoint",
        metavar="FILE",
        help="where to save the ledger's checkpoint (default: the ledger file's name + "
        "'.checkpoint'; for a PostgreSQL ledger, l2-session-demo-<schema>.checkpoint)",
    )
    demo.set_defaults(run=_demo)
    _verify_options(
        command("verify", "recheck every hash, signature, chain link and tree node of a ledger")
    )
    audit.register(command, _verify_options)  # audit verify, prove, check-proof (audit.py)
    pg_commands.register(command)  # pg-migrate, pg-import, project (tools/pg_commands.py)
    node = command("node", "run a node: QUIC and μTCP listeners, driven through a control socket")
    node.add_argument(
        "--config", metavar="FILE", help="a TOML file with any of these options, and [peers]"
    )
    node.add_argument("--keys", metavar="FILE", help="its key store (made if it does not exist)")
    node.add_argument("--ledger", metavar="PATH_OR_URL", help="its ledger (default: $L2S_LEDGER)")
    node.add_argument("--quic", metavar="HOST:PORT", help="listen for QUIC (UDP; STUN too)")
    node.add_argument("--tcp", metavar="HOST:PORT", help="listen for μTCP")
    node.add_argument("--control", metavar="PATH", help="the control socket (a Unix socket)")
    node.add_argument(
        "--durability", choices=("full", "normal"),
        help="when a save returns: on disk (full, default) or in the OS (normal)",
    )  # fmt: skip
    node.add_argument(
        "--peer", action="append", metavar="DID=quic:HOST:PORT,tcp:HOST:PORT",
        help="a peer's addresses, for the address book (repeat)",
    )  # fmt: skip
    node.add_argument(
        "--log-format", choices=("text", "json"), help="stderr logs: text (default), JSON lines"
    )
    node.set_defaults(run=_node)
    return parser


def _sqlite_files(args: argparse.Namespace | None) -> list[str]:
    """The SQLite files named on the command line, for errors that do not name theirs."""
    from l2_session.infrastructure.ledger.pg_url import is_postgres_url

    named = (getattr(args, option, None) for option in ("source", "ledger"))
    return [v for v in named if isinstance(v, str) and v and not is_postgres_url(v)]


def main(argv: list[str] | None = None) -> int:
    from l2_session.infrastructure.ledger.verify_report import printable

    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        return int(args.run(args))
    except SystemExit:  # --help, --version
        raise
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, as other Unix tools do, and
        # keep Python from failing again when it flushes stdout on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OUTPUT_CLOSED
    except BaseException as e:
        if isinstance(e, ArgumentsRejected):
            prog = e.prog
        else:
            prog = "l2-session" + (f" {args.command}" if args is not None else "")
        code, message = explain(e, _sqlite_files(args))
        if getattr(args, "debug", False):
            traceback.print_exc()
        one_line = re.sub(r"\s*\n\s*", " ", message.strip())  # a driver's message may wrap
        print(f"{prog}: {printable(one_line)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
