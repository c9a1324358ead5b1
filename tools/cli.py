"""The ``l2-session`` command line (argparse, one subcommand per tool)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _diagram(args: argparse.Namespace) -> int:
    from l2_session.domain.diagram import render_mermaid

    sys.stdout.write(render_mermaid())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2-session", description="SPEC-018 sessions on a signed, event-sourced ledger"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    diagram = commands.add_parser(
        "diagram", help="print the session state machine as a mermaid stateDiagram-v2"
    )
    diagram.set_defaults(run=_diagram)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
