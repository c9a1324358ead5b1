"""The ``l2-session`` command line (argparse, one subcommand per tool)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _diagram(args: argparse.Namespace) -> int:
    from l2_session.domain.diagram import render_mermaid

    sys.stdout.write(render_mermaid())
    return 0


def _pg_migrate(args: argparse.Namespace) -> int:
    from l2_session.infrastructure.clock import SystemClock
    from l2_session.infrastructure.ledger import LedgerError
    from l2_session.infrastructure.ledger.pg_schema import SCHEMA_VERSION, migrate
    from l2_session.infrastructure.ledger.pg_url import PostgresLocation

    try:
        location = PostgresLocation.parse(args.ledger)
        meta = migrate(location, created_at_us=SystemClock().wall_us(), node_role=args.node_role)
    except LedgerError as e:
        print(f"l2-session pg-migrate: {e}", file=sys.stderr)
        return 1
    print(
        f"ledger {meta['ledger_id']} at {location.redacted()}: schema version {SCHEMA_VERSION}, "
        f"nodes connect as members of role {args.node_role}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from l2_session.tools.ledger_option import add_ledger_argument

    parser = argparse.ArgumentParser(
        prog="l2-session", description="SPEC-018 sessions on a signed, event-sourced ledger"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    diagram = commands.add_parser(
        "diagram", help="print the session state machine as a mermaid stateDiagram-v2"
    )
    diagram.set_defaults(run=_diagram)
    pg_migrate = commands.add_parser(
        "pg-migrate",
        help="create or upgrade a PostgreSQL ledger's schema (as its owner); grant the node role",
    )
    add_ledger_argument(pg_migrate)
    pg_migrate.add_argument(
        "--node-role", default="l2s_node", help="role the nodes' logins are members of"
    )
    pg_migrate.set_defaults(run=_pg_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
