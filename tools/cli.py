"""The ``l2-session`` command line, on click: ``audit …`` groups what an auditor asks of a
ledger; ``verify`` stays as the alias of ``audit verify``.

Commands raise; they never print their own errors. main() runs the command line inside one
handler that turns what was raised — a usage error found by click included — into one line on
stderr and a documented exit code (errors.py), with the traceback only under ``--debug``.
A command's body takes its parameters as one namespace (``args``), so that it reads the same
whichever command runs it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import click
from l2_session.tools import audit, node_control, pg_commands
from l2_session.tools.arguments import whole_number
from l2_session.tools.commands import SETTINGS, called, debug_option, json_option, run_body
from l2_session.tools.errors import EPILOG, ExitCode, explain
from l2_session.tools.ledger_option import ledger_option


class NodeGroup(click.Group):
    """``node``: its options run a node; its commands ask one. Commands listed in order."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


class Group(click.Group):
    """Commands listed in the order they were added; no command is a usage error."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or all(a == "--debug" for a in args):
            raise click.UsageError("give a COMMAND", ctx)
        return super().parse_args(ctx, args)


def _version() -> str:
    try:
        return importlib.metadata.version("l2-session")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


@click.group(
    cls=Group,
    context_settings=SETTINGS,
    subcommand_metavar="COMMAND [ARGS]...",
    epilog=EPILOG,
    help="SPEC-018 sessions on a signed, event-sourced ledger",
)
@click.version_option(_version(), "--version", message="l2-session %(version)s")
@debug_option
def cli() -> None:
    pass


# -- the state machine, and the demo ---------------------------------------------------------
def _diagram(args: Any) -> int:
    from l2_session.domain.session.diagram import render_mermaid

    sys.stdout.write(render_mermaid())
    return ExitCode.OK


@cli.command("diagram", help="print the session state machine as a mermaid stateDiagram-v2")
@debug_option
def diagram_command(**params: Any) -> int:
    return run_body(_diagram, params)


def _simulate(args: Any) -> int:
    from l2_session.tools.simulate import print_summary, run_simulation

    result = run_simulation(
        args.ledger, sessions=args.sessions, checkpoint_file=args.save_checkpoint
    )
    print_summary(result, as_json=args.as_json)
    return ExitCode.OK if result.ok else ExitCode.NOT_INTACT


SIMULATION_LEDGER = "l2-session-simulation.sqlite3"


@cli.command(
    "simulate",
    help="sessions driven through SPEC-018 on a manual clock into a new signed ledger "
    "(a ledger to try the audit commands on, in a second), verified and summarised",
)
@ledger_option(default=SIMULATION_LEDGER)
@click.option(
    "--sessions", type=whole_number(1, 10_000), default=6, show_default=True,
    help="how many sessions (1 to 10000)",
)  # fmt: skip
@click.option(
    "--save-checkpoint", metavar="FILE",
    help="where to save the ledger's checkpoint (default: the ledger file's name + "
    "'.checkpoint'; for a PostgreSQL ledger, l2-session-simulation-<schema>.checkpoint)",
)  # fmt: skip
@json_option
@debug_option
def simulate_command(**params: Any) -> int:
    return run_body(_simulate, params, ledger=SIMULATION_LEDGER)


def _demo(args: Any) -> int:
    from l2_session.tools.demo import run_demo

    return ExitCode.OK if run_demo(Path(args.dir)) else ExitCode.NOT_INTACT


@cli.command(
    "demo",
    help="two node processes over QUIC: a post-quantum session, messages, a partition, a key "
    "rotation, a fallback to TCP and back, and a SIGKILL, then both ledgers verified and "
    "witnessed",
)
@click.option(
    "--dir", default=".demo", show_default=True, metavar="DIR",
    help="where the two nodes keep their keys and ledgers (created; never reused)",
)  # fmt: skip
@debug_option
def demo_command(**params: Any) -> int:
    return run_body(_demo, params)


# -- verify, audit, the node, PostgreSQL ------------------------------------------------------
@cli.command("verify", help=audit.VERIFY_HELP)
@audit.verify_options
def verify_command(**params: Any) -> int:
    return run_body(audit._verify, params, ledger=None)


cli.add_command(audit.audit)


def _export(args: Any) -> int:
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.infrastructure.ledger.export import ExportError, export_bundle
    from l2_session.projections.history import HistoryError, parse_time
    from l2_session.tools.errors import UsageError
    from l2_session.tools.show import print_json, progress_bar

    if args.sqlite and os.path.lexists(args.sqlite):
        raise UsageError(f"{args.sqlite} already exists; --sqlite writes a new file")
    times = {}
    for option, text in (("--from", args.since), ("--until", args.until)):
        try:
            times[option] = None if text is None else parse_time(text)
        except HistoryError as e:
            raise UsageError(f"{option}: {e}") from e
    since, until = times["--from"], times["--until"]
    folder = Path(args.out).parent
    if not folder.is_dir():
        raise UsageError(f"cannot create {args.out}: {folder} is not a folder")
    identity = None
    if args.keys:
        from l2_session.infrastructure.keystore import KeyStore, KeyStoreError

        try:
            identity = KeyStore.load(args.keys).identity
        except KeyStoreError as e:
            raise UsageError(f"--keys {args.keys}: {e}") from e
    ledger = SessionLedger(args.ledger, create=False)  # read-only; the bundle, then the tables
    try:
        try:
            with progress_bar("exporting") as progress:
                done = export_bundle(
                    ledger, args.out, sessions=args.session, since_us=since, until_us=until,
                    identity=identity, proofs=args.proofs, progress=progress,
                )  # fmt: skip
        except (ExportError, ValueError) as e:
            raise UsageError(str(e)) from e
        facts: dict[str, Any] = {
            "bundle": str(done.out),
            "tree_size": done.tree_size,
            "events": done.events,
            "sessions": done.sessions,
            "after_the_checkpoint": done.left_out,
        }
        if args.sqlite:
            from l2_session.tools.sqlite_export import write_tables

            rows = write_tables(ledger, Path(done.out), Path(args.sqlite))
            facts["sqlite"] = {"file": args.sqlite, "rows": rows}
    finally:
        ledger.close()
    if args.as_json:
        print_json(facts)
    else:
        print(
            f"exported {done.events} events of {done.sessions} session(s) to {done.out}, "
            f"proven against the checkpoint of {done.tree_size} events"
        )
        if done.left_out:
            print(f"  {done.left_out} later events are not in it: no checkpoint covers them yet")
        if args.sqlite:
            counted = ", ".join(f"{n} {t}" for t, n in facts["sqlite"]["rows"].items())
            print(f"  and as tables in {args.sqlite} ({counted}): `datasette {args.sqlite}`")
    return ExitCode.OK


@cli.command(
    "export", help="write a verifiable bundle of a ledger's events (docs/forensic-export.md)"
)
@ledger_option(positional=True)
@click.option("--out", required=True, metavar="BUNDLE", help="the bundle's directory (new)")
@click.option("--session", multiple=True, metavar="ID", help="a session to export (repeat)")
@click.option("--from", "since", metavar="TIME", help="ISO 8601: events appended from then")
@click.option("--until", metavar="TIME", help="ISO 8601: events appended until then")
@click.option(
    "--keys",
    metavar="FILE",
    help="the node's key store: a partial bundle then carries the session heads it signs, "
    "which prove where each live session ends",
)
@click.option(
    "--proofs",
    is_flag=True,
    help="a whole export carries each event's inclusion proof too (a partial one always does; "
    "a whole one's leaves are its tree): to hand single events on",
)
@click.option(
    "--sqlite",
    metavar="OUT.db",
    help="also write the bundle's events, sessions, transitions and peers as SQLite tables "
    "(new file; for Datasette)",
)
@json_option
@debug_option
def export_command(**params: Any) -> int:
    return run_body(_export, params, ledger=None)


def _status(args: Any) -> int:
    import sqlite3

    from eventsourcing.persistence import PersistenceError
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.infrastructure.ledger.pg_url import is_postgres_url
    from l2_session.projections.history import iso
    from l2_session.projections.session_view import SessionView
    from l2_session.tools.errors import UsageError
    from l2_session.tools.show import print_json, print_table, progress_bar

    if args.view is None and is_postgres_url(args.ledger):
        raise UsageError("a PostgreSQL ledger's read model needs --view FILE (a SQLite file)")
    ledger = SessionLedger(args.ledger, create=False)  # read-only: no identity, no key
    try:
        where = args.view or f"{args.ledger}.view"
        try:
            view = SessionView(where)
        except (sqlite3.Error, PersistenceError) as e:
            raise UsageError(
                f"the read model {where} cannot be used ({e}): give --view a new file, or one "
                "that status made"
            ) from e
        behind = view.lag(ledger)
        if not args.no_catch_up:
            with progress_bar("catching up") as progress:
                view.catch_up(ledger, progress=progress)
        lag = view.lag(ledger)
        sessions, peers, moves = view.sessions(), view.peers(), view.transitions()
        counts = view.state_counts()
    finally:
        ledger.close()
    if args.as_json:
        print_json({
            "view": str(view.path), "position": lag.position, "head": lag.head,
            "behind": lag.events, "behind_before_catch_up": behind.events,
            "states": counts, "sessions": sessions, "peers": peers, "transitions": moves,
        })  # fmt: skip
        return ExitCode.OK
    print(f"read model {view.path}: position {lag.position} of {lag.head} "
          f"({lag.events} events behind; {behind.events} before this catch-up)")  # fmt: skip
    print("sessions by state: " + (", ".join(f"{s} {n}" for s, n in counts.items()) or "none"))
    shown = sessions[-args.limit :] if args.limit else sessions
    print_table(
        f"sessions (the {len(shown)} most recently active of {len(sessions)})",
        ("id", "peer", "state", "since", "transport", "reason", "events"),
        [(r["id"], r["peer"], r["state"], iso(r["since_us"]) if r["since_us"] else "",
          r["transport"], r["failure_reason"] or r["close_reason"] or "", r["events"])
         for r in shown],
    )  # fmt: skip
    if peers:
        print_table(
            "peers", ("peer", "failed attempts", "quarantined until", "retry at", "transport"),
            [(p["did"], p["failed_attempts"],
              iso(p["quarantined_until_us"]) if p["quarantined_until_us"] else "",
              iso(p["retry_at_us"]) if p["retry_at_us"] else "", p["transport"] or "")
             for p in peers],
        )  # fmt: skip
    print_table(
        "transitions", ("from", "to", "count", "mean time in 'from'"),
        [(m["from_state"], m["to_state"], m["count"],
          f"{m['total_us'] / m['count'] / 1e6:.3f} s") for m in moves],
    )  # fmt: skip
    return ExitCode.OK


@cli.command("status", help="sessions, peers and transitions from the ledger's read model")
@ledger_option(positional=True)
@click.option(
    "--view", metavar="FILE",
    help="the read model, a SQLite file made on first use (default: LEDGER.view beside a "
    "SQLite ledger)",
)  # fmt: skip
@click.option("--no-catch-up", is_flag=True, help="show the view as it is, without reading on")
@click.option("--limit", type=whole_number(0), default=50, show_default=True,
              help="sessions listed, the most recently active (0: all)")  # fmt: skip
@json_option
@debug_option
def status_command(**params: Any) -> int:
    return run_body(_status, params, ledger=None)


def _node(args: Any) -> int:
    from l2_session.tools.node import main as run_node

    return run_node(args)


@cli.group(
    "node",
    cls=NodeGroup,
    invoke_without_command=True,
    subcommand_metavar="[COMMAND [ARGS]...]",
    help="run a node: QUIC and μTCP listeners, driven through a control socket; or, with a "
    "COMMAND, ask a running node over that socket",
)
@click.option("--config", metavar="FILE", help="a TOML file with any of these options, and [peers]")
@click.option("--keys", metavar="FILE", help="its key store (made if it does not exist)")
@click.option("--ledger", metavar="PATH_OR_URL", help="its ledger (default: $L2S_LEDGER)")
@click.option("--quic", metavar="HOST:PORT", help="listen for QUIC (UDP; STUN too)")
@click.option("--tcp", metavar="HOST:PORT", help="listen for μTCP")
@click.option("--control", metavar="PATH", help="the control socket (a Unix socket)")
@click.option(
    "--durability",
    type=click.Choice(["full", "normal"]),
    help="when a save returns: on disk (full, default) or in the OS (normal)",
)
@click.option(
    "--peer",
    multiple=True,
    metavar="DID=quic:HOST:PORT,tcp:HOST:PORT",
    help="a peer's addresses, for the address book (repeat)",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="stderr logs: text (default), JSON lines",
)
@debug_option
@click.pass_context
def node_command(ctx: click.Context, /, **params: Any) -> int | None:
    if ctx.invoked_subcommand is None:
        return run_body(_node, params)
    given = [name for name, value in params.items() if value]
    if given:
        raise click.UsageError(
            f"--{given[0].replace('_', '-')} runs a node; give the options of "
            f"`node {ctx.invoked_subcommand}` after it",
            ctx,
        )
    return None


for _command in node_control.COMMANDS:  # status, sessions, witnessed, checkpoint, stop
    node_command.add_command(_command)

for _command in pg_commands.COMMANDS:  # pg-migrate, pg-import, project
    cli.add_command(_command)


def _sqlite_files(args: Any) -> list[str]:
    """The SQLite files named on the command line, for errors that do not name theirs."""
    from l2_session.infrastructure.ledger.pg_url import is_postgres_url

    named = (getattr(args, option, None) for option in ("source", "ledger"))
    return [v for v in named if isinstance(v, str) and v and not is_postgres_url(v)]


def _wants_debug(argv: list[str]) -> bool:
    return "--debug" in (argv[: argv.index("--")] if "--" in argv else argv)


def main(argv: list[str] | None = None) -> int:
    from l2_session.infrastructure.ledger.verify_report import printable

    argv = list(sys.argv[1:] if argv is None else argv)
    prog = _command_path(argv)
    try:
        with cli.make_context("l2-session", list(argv)) as ctx:
            return int(cli.invoke(ctx) or 0)
    except click.exceptions.Exit as e:  # --help, --version
        return int(e.exit_code)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, as other Unix tools do, and
        # keep Python from failing again when it flushes stdout on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OUTPUT_CLOSED
    except BaseException as e:
        if isinstance(e, click.UsageError):
            where = e.ctx.command_path if e.ctx is not None else prog
            code, message = ExitCode.BAD_INPUT, f"{e.format_message()} (see `{where} --help`)"
            prog = where
        elif isinstance(e, click.Abort | KeyboardInterrupt):
            code, message = ExitCode.INTERRUPTED, "interrupted"
        else:
            code, message = explain(e, _sqlite_files(called.args))
        if _wants_debug(argv):
            traceback.print_exc()
        one_line = re.sub(r"\s*\n\s*", " ", message.strip())  # a driver's message may wrap
        print(f"{prog}: {printable(one_line)}", file=sys.stderr)
        return code


def _command_path(argv: list[str]) -> str:
    """``l2-session COMMAND [SUBCOMMAND]`` as given, for the error line."""
    path: list[str] = ["l2-session"]
    command: click.Command = cli
    for word in argv:
        if word.startswith("-"):
            continue
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        path.append(word)
        command = command.commands[word]
    return " ".join(path)


if __name__ == "__main__":
    raise SystemExit(main())
