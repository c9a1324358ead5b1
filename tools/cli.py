"""The ``l2-session`` command line (argparse, one subcommand per tool)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def _diagram(args: argparse.Namespace) -> int:
    from l2_session.domain.diagram import render_mermaid

    sys.stdout.write(render_mermaid())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from l2_session.tools.demo import print_summary, run_demo

    result = run_demo(args.ledger, sessions=args.sessions)
    print_summary(result)
    return 0 if result.ok else 1


def _verify(args: argparse.Namespace) -> int:
    from l2_session.infrastructure.ledger import CheckpointError, LedgerError
    from l2_session.infrastructure.ledger.verify import verify

    try:
        checkpoint = Path(args.checkpoint).read_text(encoding="utf-8") if args.checkpoint else None
        report = verify(
            args.ledger, checkpoint, trusted_signers=args.trust or None, workers=args.workers
        )
    except (LedgerError, CheckpointError, OSError) as e:
        print(f"l2-session verify: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    from l2_session.tools import pg_commands
    from l2_session.tools.ledger_option import add_ledger_argument

    parser = argparse.ArgumentParser(
        prog="l2-session", description="SPEC-018 sessions on a signed, event-sourced ledger"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    diagram = commands.add_parser(
        "diagram", help="print the session state machine as a mermaid stateDiagram-v2"
    )
    diagram.set_defaults(run=_diagram)
    demo = commands.add_parser(
        "demo", help="drive sessions through SPEC-018 on a fresh signed ledger, verify, summarise"
    )
    add_ledger_argument(demo, default="l2-session-demo.sqlite3")
    demo.add_argument("--sessions", type=int, default=6, help="how many sessions (default 6)")
    demo.set_defaults(run=_demo)
    check = commands.add_parser(
        "verify", help="recheck every hash, signature and chain link of a ledger"
    )
    add_ledger_argument(check)
    check.add_argument("--checkpoint", help="a checkpoint file seen earlier (truncation, rewrite)")
    check.add_argument(
        "--trust", action="append", metavar="DID", help="a node did:key allowed to sign (repeat)"
    )
    check.add_argument("--workers", type=int, help="processes to use (default: all cores)")
    check.set_defaults(run=_verify)
    pg_commands.register(commands)  # pg-migrate, pg-import, project (tools/pg_commands.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
