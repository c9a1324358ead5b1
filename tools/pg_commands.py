"""Commands for running the ledger on PostgreSQL (docs/deployment.md):

l2-session pg-migrate --ledger URL          create or upgrade the ledger schema (as its owner)
l2-session pg-import --from FILE --ledger URL   move a SQLite ledger to PostgreSQL, row for row
l2-session project --ledger URL --view URL --projection module:Class
                                             run a projection process following the ledger

Like every command, these raise and let main() (cli.py) say what went wrong.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from l2_session.infrastructure.ledger.verify_report import printable
from l2_session.tools.arguments import positive_seconds, whole_number
from l2_session.tools.commands import SETTINGS, debug_option, json_option, run_body
from l2_session.tools.errors import ExitCode, UsageError
from l2_session.tools.ledger_option import ledger_option
from l2_session.tools.show import print_json


def _pg_migrate(args: Any) -> int:
    from l2_session.infrastructure.clock import SystemClock
    from l2_session.infrastructure.ledger.pg_schema import SCHEMA_VERSION, migrate
    from l2_session.infrastructure.ledger.pg_url import PostgresLocation

    location = PostgresLocation.parse(args.ledger)
    meta = migrate(location, created_at_us=SystemClock().wall_us(), node_role=args.node_role)
    if args.as_json:
        print_json({"ledger_id": meta["ledger_id"], "ledger": location.redacted(),
                    "schema_version": SCHEMA_VERSION, "node_role": args.node_role})  # fmt: skip
        return ExitCode.OK
    print(
        printable(
            f"ledger {meta['ledger_id']} at {location.redacted()}: schema version "
            f"{SCHEMA_VERSION}, nodes connect as members of role {args.node_role}"
        )
    )
    return ExitCode.OK


def _check_import_source(source: str) -> None:
    """Refuse a source that is not a ledger, or is damaged, before the target is touched: a
    failure half way would leave the target schema holding a ledger with none of the rows."""
    from l2_session.infrastructure.ledger import LedgerCorrupted
    from l2_session.infrastructure.ledger.schema import check_sqlite_ledger_file
    from l2_session.infrastructure.ledger.verify_sources import sqlite_integrity_problems

    check_sqlite_ledger_file(Path(source), create=False)
    damage = sqlite_integrity_problems(source)
    if damage:
        raise LedgerCorrupted(
            f"{source} is damaged ({damage[0].detail}); nothing was imported — run "
            f"`l2-session verify --ledger {source}`, and import an intact copy"
        )


def _pg_import(args: Any) -> int:
    from l2_session.infrastructure.ledger.pg_import import import_sqlite_ledger
    from l2_session.infrastructure.ledger.pg_url import PostgresLocation, redact

    PostgresLocation.parse(args.ledger)  # a bad URL is named before the source is read
    _check_import_source(args.source)
    copied = import_sqlite_ledger(args.source, args.ledger)
    if args.as_json:
        print_json({"events_copied": copied, "from": args.source, "to": redact(args.ledger)})
        return ExitCode.OK
    print(
        printable(f"{copied} events copied from {args.source} to {redact(args.ledger)}; run verify")
    )
    return ExitCode.OK


def _load_projection(topic: str) -> Any:
    """An instance of the projection class ``module:Class``, or UsageError saying why not."""
    from eventsourcing.utils import TopicError, resolve_topic

    expected = (
        "expected module:Class of a projection (a class with a name and methods "
        "create_statements(schema) and apply(cur, schema, event, position)), such as "
        "l2_session.projections.session_counts:SessionEventCounts"
    )
    try:
        found = resolve_topic(topic)
    except TopicError as e:
        raise UsageError(f"cannot load projection {topic!r} ({e}); {expected}") from e
    if not isinstance(found, type):
        raise UsageError(
            f"--projection {topic} is a {type(found).__name__}, not a class; {expected}"
        )
    try:
        projection = found()
    except TypeError as e:
        raise UsageError(f"--projection {topic}: cannot make one ({e}); {expected}") from e
    missing = [
        m for m in ("create_statements", "apply") if not callable(getattr(projection, m, None))
    ]
    if not isinstance(getattr(projection, "name", None), str):
        missing.insert(0, "name")
    if missing:
        raise UsageError(f"--projection {topic} has no {', '.join(missing)}; {expected}")
    return projection


def _project(args: Any) -> int:
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.infrastructure.ledger.pg_url import PostgresLocation, is_postgres_url
    from l2_session.projections.runner import Lag, ProjectionRunner
    from l2_session.tools.show import progress_bar

    projection = _load_projection(args.projection)
    view = PostgresLocation.parse(args.view)
    if is_postgres_url(args.ledger):
        ledger_at = PostgresLocation.parse(args.ledger)
        if (view.host, view.port, view.dbname, view.schema) == (
            ledger_at.host, ledger_at.port, ledger_at.dbname, ledger_at.schema,
        ):  # fmt: skip
            # A read model is rebuilt by dropping its schema (docs/deployment.md): never the
            # ledger's.
            raise UsageError(
                f"--view {view.redacted()} is the ledger's own schema; give the read model a "
                "schema of its own (?schema=NAME)"
            )

    def line(lag: Lag) -> None:
        if args.as_json:  # one JSON object a line, as batches commit
            print(json.dumps({"position": lag.position, "head": lag.head,
                              "behind": lag.events, "lag_s": round(lag.seconds, 6)}))  # fmt: skip
        else:
            print(
                f"position {lag.position} head {lag.head} behind {lag.events} "
                f"lag {lag.seconds:.3f}s"
            )
        sys.stdout.flush()

    # --catch-up on a terminal: a progress bar on stderr while behind, then the last line.
    shown = progress_bar("projecting") if args.catch_up and not args.as_json else nullcontext()
    ledger = SessionLedger(args.ledger, create=False)  # read-only: no identity, no key
    try:
        with shown as progress:
            last: list[Lag] = []

            def report(lag: Lag) -> None:
                if progress is None:
                    line(lag)
                else:
                    progress(lag.position, max(lag.head, lag.position))
                    last[:] = [lag]

            runner = ProjectionRunner(
                ledger, view, projection, batch_size=args.batch_size,
                poll_interval=args.poll_interval, on_batch=report,
            )  # fmt: skip
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
        if last:
            line(last[0])
    finally:
        ledger.close()
    return ExitCode.OK


@click.command(
    "pg-migrate",
    context_settings=SETTINGS,
    help="create or upgrade a PostgreSQL ledger's schema (as its owner); grant the node role",
)
@ledger_option()
@click.option(
    "--node-role",
    default="l2s_node",
    show_default=True,
    help="role the nodes' logins are members of",
)
@json_option
@debug_option
def pg_migrate(**params: Any) -> int:
    return run_body(_pg_migrate, params, ledger=None)


@click.command(
    "pg-import",
    context_settings=SETTINGS,
    help="copy a SQLite ledger into a new PostgreSQL ledger, row for row",
)
@click.option("--from", "source", required=True, metavar="FILE", help="the SQLite ledger")
@ledger_option()
@json_option
@debug_option
def pg_import(**params: Any) -> int:
    return run_body(_pg_import, params, ledger=None)


@click.command(
    "project",
    context_settings=SETTINGS,
    help="run a projection process: follow the ledger, keep a read model in PostgreSQL",
)
@ledger_option()
@click.option(
    "--view",
    required=True,
    metavar="URL",
    help="postgresql:// URL of the read model (its schema= is used)",
)
@click.option(
    "--projection",
    required=True,
    metavar="MODULE:CLASS",
    help="e.g. l2_session.projections.session_counts:SessionEventCounts",
)
@click.option("--batch-size", type=whole_number(1), default=500, show_default=True)
@click.option(
    "--poll-interval",
    type=positive_seconds,
    default=1.0,
    show_default=True,
    help="seconds between polls when no NOTIFY arrives",
)
@click.option("--catch-up", is_flag=True, help="apply what the ledger holds now, then exit")
@click.option("--json", "as_json", is_flag=True, help="print each batch's lag as a JSON line")
@debug_option
def project(**params: Any) -> int:
    return run_body(_project, params, ledger=None)


COMMANDS = (pg_migrate, pg_import, project)
