"""Commands for running the ledger on PostgreSQL (docs/deployment.md):

l2-session pg-migrate --ledger URL          create or upgrade the ledger schema (as its owner)
l2-session pg-import --from FILE --ledger URL   move a SQLite ledger to PostgreSQL, row for row
l2-session project --ledger URL --view URL --projection module:Class
                                             run a projection process following the ledger
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from l2_session.tools.ledger_option import add_ledger_argument


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


def _pg_import(args: argparse.Namespace) -> int:
    from l2_session.infrastructure.ledger import LedgerError
    from l2_session.infrastructure.ledger.pg_import import import_sqlite_ledger
    from l2_session.infrastructure.ledger.pg_url import redact

    try:
        copied = import_sqlite_ledger(args.source, args.ledger)
    except LedgerError as e:
        print(f"l2-session pg-import: {e}", file=sys.stderr)
        return 1
    print(f"{copied} events copied from {args.source} to {redact(args.ledger)}; run verify")
    return 0


def _project(args: argparse.Namespace) -> int:
    from eventsourcing.utils import TopicError, resolve_topic
    from l2_session.infrastructure.ledger import LedgerError, SessionLedger
    from l2_session.projections.runner import Lag, ProjectionRunner

    try:
        projection: Any = resolve_topic(args.projection)()
    except (TopicError, TypeError) as e:
        print(
            f"l2-session project: cannot load projection {args.projection!r}: {e}", file=sys.stderr
        )
        return 1

    def report(lag: Lag) -> None:
        print(f"position {lag.position} head {lag.head} behind {lag.events} lag {lag.seconds:.3f}s")
        sys.stdout.flush()

    try:
        ledger = SessionLedger(args.ledger, create=False)  # read-only: no identity, no key
        runner = ProjectionRunner(
            ledger, args.view, projection, batch_size=args.batch_size,
            poll_interval=args.poll_interval, on_batch=report,
        )  # fmt: skip
    except LedgerError as e:
        print(f"l2-session project: {e}", file=sys.stderr)
        return 1
    try:
        if args.catch_up:
            while runner.run_once():
                pass
        else:
            runner.run_forever()
    except KeyboardInterrupt:  # Ctrl-C or SIGINT: the last committed batch is the position
        pass
    finally:
        runner.close()
        ledger.close()
    return 0


def register(commands: Any) -> None:
    """Add the PostgreSQL commands to the CLI's subcommands."""
    migrate = commands.add_parser(
        "pg-migrate",
        help="create or upgrade a PostgreSQL ledger's schema (as its owner); grant the node role",
    )
    add_ledger_argument(migrate)
    migrate.add_argument(
        "--node-role", default="l2s_node", help="role the nodes' logins are members of"
    )
    migrate.set_defaults(run=_pg_migrate)

    move = commands.add_parser(
        "pg-import", help="copy a SQLite ledger into a new PostgreSQL ledger, row for row"
    )
    move.add_argument("--from", dest="source", required=True, metavar="FILE")
    add_ledger_argument(move)
    move.set_defaults(run=_pg_import)

    project = commands.add_parser(
        "project", help="run a projection process: follow the ledger, keep a read model in PG"
    )
    add_ledger_argument(project)
    project.add_argument(
        "--view",
        required=True,
        metavar="URL",
        help="postgresql:// URL of the read model (its schema= is used)",
    )
    project.add_argument(
        "--projection",
        required=True,
        metavar="MODULE:CLASS",
        help="e.g. l2_session.projections.session_counts:SessionEventCounts",
    )
    project.add_argument("--batch-size", type=int, default=500)
    project.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between polls when no NOTIFY arrives",
    )
    project.add_argument(
        "--catch-up", action="store_true", help="apply what the ledger holds now, then exit"
    )
    project.set_defaults(run=_project)  # fmt: skip
