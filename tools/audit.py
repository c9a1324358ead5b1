"""``l2-session audit``: what an auditor asks of a ledger (docs/cli.md).

- ``audit verify`` rechecks every hash, signature, link and tree node (``l2-session verify``
  is its alias);
- ``audit prove`` prints a Merkle inclusion or consistency proof as JSON, with the stored
  checkpoint that signs its root when there is one; ``audit check-proof`` checks such a
  proof offline, against a checkpoint if given (docs/ledger-format.md §13).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from l2_session.tools.arguments import did_key, non_empty, whole_number
from l2_session.tools.commands import SETTINGS, debug_option, json_option, options, run_body
from l2_session.tools.errors import ExitCode, UsageError
from l2_session.tools.ledger_option import ledger_option

PROOF_MAX_BYTES = 1024 * 1024  # a proof of a tree of 2**63 events is under 4 KiB


def _prove(args: Any) -> int:
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.tools.show import print_json

    if (args.inclusion is None) == (args.consistency is None):
        raise UsageError("audit prove: give one of --inclusion POSITION or --consistency OLD NEW")
    ledger = SessionLedger(args.ledger, create=False)
    try:
        if args.inclusion is not None:
            proof: Any = ledger.inclusion_proof(args.inclusion, args.size)
        else:
            old, new = args.consistency
            proof = ledger.consistency_proof(old, new)
        signed = [
            cp for cp in ledger.checkpoints() if cp.root is not None and cp.size == proof.size
        ]
    finally:
        ledger.close()
    out = proof.to_json()
    out["checkpoint"] = signed[-1].to_text() if signed else None
    print_json(out)
    return ExitCode.OK


def _check_proof(args: Any) -> int:
    from l2_session.infrastructure.ledger.checkpoint import Checkpoint, CheckpointError
    from l2_session.infrastructure.ledger.tree import ConsistencyProof, InclusionProof
    from l2_session.tools.checkpoint_file import read_checkpoint

    try:
        with open(args.proof, "rb") as f:
            raw = f.read(PROOF_MAX_BYTES + 1)
    except OSError as e:
        raise UsageError(f"{args.proof}: cannot read it ({e.strerror})") from e
    if len(raw) > PROOF_MAX_BYTES:
        raise UsageError(f"{args.proof} holds over {PROOF_MAX_BYTES} bytes: not a proof")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{args.proof} is not a JSON proof ({e})") from e
    kind = data.get("proof") if isinstance(data, dict) else None
    parse: dict[str, Callable[[Any], Any]] = {
        "inclusion": InclusionProof.from_json,
        "consistency": ConsistencyProof.from_json,
    }
    if kind not in parse:
        raise UsageError(f"{args.proof}: 'proof' is {kind!r}, not 'inclusion' or 'consistency'")
    if args.checkpoint:
        checkpoint = read_checkpoint(args.checkpoint)
    elif isinstance(data.get("checkpoint"), str):
        try:
            checkpoint = Checkpoint.parse(data["checkpoint"])
        except CheckpointError as e:
            raise UsageError(f"{args.proof}: its checkpoint: {e}") from e
    else:
        checkpoint = None
    result: dict[str, Any] = {"proof": kind, "checks": False, "problem": None, "signed": None}
    lines, code = _check(parse[kind], data, checkpoint, args.trust, result)
    if args.as_json:
        from l2_session.tools.show import print_json

        print_json(result)
    else:
        print("\n".join(lines))
    return code


def _check(
    parse: Callable[[Any], Any],
    data: Any,
    checkpoint: Any,
    trust: Sequence[str],
    result: dict[str, Any],
) -> tuple[list[str], int]:
    """Check a proof, and its root against ``checkpoint``: the lines to print, the exit code;
    ``result`` filled for --json."""
    from l2_session.infrastructure.ledger.merkle import ProofError

    try:
        proof = parse(data)
        proof.check()
    except ProofError as e:
        result["problem"] = str(e)
        return [f"proof: DOES NOT CHECK — {e}"], ExitCode.NOT_INTACT
    result |= {"checks": True, "tree_size": proof.size}
    lines = [f"proof: checks ({result['proof']}, tree of {proof.size} events)"]
    if checkpoint is None:
        lines.append("  root: not signed — no checkpoint given or included; pass --checkpoint FILE")
        return lines, ExitCode.OK
    problems = []
    if checkpoint.root is None:
        problems.append("the checkpoint is of format 1 and signs no Merkle root")
    elif (checkpoint.ledger_id, checkpoint.size, checkpoint.root) != (
        proof.ledger_id,
        proof.size,
        proof.root,
    ):
        problems.append("the checkpoint signs another ledger, size or root than the proof's")
    if not checkpoint.signature_valid():
        problems.append("the checkpoint's signature does not verify")
    if trust and checkpoint.signer not in trust:
        problems.append(f"the checkpoint is signed by {checkpoint.signer}, not a --trust key")
    result["signed"] = {
        "by": checkpoint.signer,
        "time_us": checkpoint.timestamp_us,
        "matches": not problems,
        "problems": problems,
    }
    if problems:
        lines.append("  checkpoint: DOES NOT MATCH — " + "; ".join(problems))
        return lines, ExitCode.NOT_INTACT
    lines.append(f"  root signed by {checkpoint.signer} at time {checkpoint.timestamp_us} µs")
    return lines, ExitCode.OK


@click.group(
    "audit",
    context_settings=SETTINGS,
    subcommand_metavar="COMMAND [ARGS]...",
    help="audit a ledger: verify it, replay it, prove events in it, check proofs",
)
@debug_option
def audit() -> None:
    pass


def _verify(args: Any) -> int:
    from l2_session.infrastructure.ledger.verify import verify
    from l2_session.tools.checkpoint_file import read_checkpoint
    from l2_session.tools.show import print_json, progress_bar

    checkpoint = read_checkpoint(args.checkpoint) if args.checkpoint else None
    with progress_bar("verifying") as progress:
        report = verify(
            args.ledger,
            checkpoint,
            trusted_signers=args.trust or None,
            workers=args.workers,
            witnesses=args.witness or (),
            progress=progress,
        )
    if args.as_json:
        print_json(report.to_json())
    else:
        print(report.summary())
    return ExitCode.OK if report.ok else ExitCode.NOT_INTACT


_MOST_WORKERS = 4 * (os.cpu_count() or 1)  # more processes than that are never faster
verify_options = options(
    ledger_option(positional=True),
    click.option(
        "--checkpoint", metavar="FILE", help="a checkpoint seen earlier (truncation, rewrite)"
    ),
    click.option(
        "--trust", multiple=True, type=did_key, metavar="DID",
        help="a node did:key allowed to sign (repeat); default: the signers the ledger "
        "registers, reported as unanchored",
    ),
    click.option(
        "--witness", multiple=True, metavar="PATH_OR_URL",
        type=non_empty("a SQLite file or a postgresql:// URL"),
        help="another node's ledger: check every checkpoint of this ledger it witnessed, and "
        "report every conflict it recorded about this ledger (repeat)",
    ),
    click.option(
        "--workers", type=whole_number(1, _MOST_WORKERS),
        help=f"processes to use, 1 to {_MOST_WORKERS} (default: one per core)",
    ),
    json_option,
    debug_option,
)  # fmt: skip
VERIFY_HELP = "recheck every hash, signature, chain link and tree node of a ledger"


@audit.command("verify", help=VERIFY_HELP)
@verify_options
def verify_command(**params: Any) -> int:
    return run_body(_verify, params, ledger=None)


@audit.command("prove", help="print a Merkle inclusion or consistency proof as JSON")
@ledger_option(positional=True)
@click.option(
    "--inclusion",
    type=whole_number(1, 2**63 - 1),
    metavar="POSITION",
    help="prove that the event at POSITION is in the tree (of --size events)",
)
@click.option(
    "--size",
    type=whole_number(1, 2**63 - 1),
    metavar="N",
    help="the tree size of an inclusion proof (default: every event)",
)
@click.option(
    "--consistency",
    type=whole_number(1, 2**63 - 1),
    nargs=2,
    metavar="OLD NEW",
    help="prove that the tree of OLD events is a prefix of the tree of NEW",
)
@debug_option
def prove_command(**params: Any) -> int:
    return run_body(_prove, params, ledger=None)


@audit.command("check-proof", help="check a proof that `audit prove` printed (PROOF_JSON), offline")
@click.argument("proof", metavar="PROOF_JSON")
@click.option(
    "--checkpoint",
    metavar="FILE",
    help="a checkpoint that signs the proof's root (default: the one in the proof, if any)",
)
@click.option(
    "--trust",
    multiple=True,
    type=did_key,
    metavar="DID",
    help="a did:key the checkpoint must be signed by (repeat)",
)
@json_option
@debug_option
def check_proof_command(**params: Any) -> int:
    return run_body(_check_proof, params)


def _history(args: Any) -> tuple[Any, Any]:
    from l2_session.infrastructure.ledger import SessionLedger
    from l2_session.projections.history import LedgerHistory

    ledger = SessionLedger(args.ledger, create=False)  # read-only: no identity, no key
    return ledger, LedgerHistory(ledger)


def _position(history: Any, at: str | None) -> int | None:
    """``--at``: a position (a whole number) or an ISO 8601 time."""
    from l2_session.projections.history import HistoryError, parse_time

    if at is None:
        return None
    if at.strip().isdigit():
        return int(at)
    try:
        when = parse_time(at.strip())
    except HistoryError:
        raise HistoryError(
            f"--at {at!r} is neither a position (a whole number) nor an ISO 8601 time such as "
            "2026-12-07T14:02:00Z"
        ) from None
    return int(history.position_at(when))


def _replay(args: Any) -> int:
    from l2_session.projections.history import HistoryError
    from l2_session.tools.show import print_json, print_table

    ledger, history = _history(args)
    try:
        position = _position(history, args.at)
        if args.session:
            states = [history.state_at(args.session, position)]
        else:
            states = history.states_at(position)
        point = position if position is not None else history.head()
    except HistoryError as e:
        raise UsageError(str(e)) from e
    finally:
        ledger.close()
    if args.as_json:
        print_json({"position": point, "aggregates": [s.summary() for s in states]})
        return ExitCode.OK
    columns = ("kind", "id", "state", "since", "peer", "transport", "unacked", "reason/until",
               "position")  # fmt: skip
    print_table(f"as of position {point}", columns, [_replay_row(s.summary()) for s in states])
    return ExitCode.OK


@audit.command(
    "replay", help="the state of every session (or one) as of any position or time, by replay"
)
@ledger_option(positional=True)
@click.option("--session", metavar="ID", help="one session (or peer) by its id")
@click.option(
    "--at", metavar="POSITION|TIME",
    help="a ledger position, or an ISO 8601 time such as 2026-12-07T14:02:00Z (UTC unless it "
    "names an offset): the state just after the last event appended by then (default: now)",
)  # fmt: skip
@json_option
@debug_option
def replay_command(**params: Any) -> int:
    return run_body(_replay, params, ledger=None)


def _replay_row(s: dict[str, Any]) -> tuple[Any, ...]:
    """One aggregate's line of ``audit replay``'s table, from its summary."""
    queue = s.get("queue")
    return (
        s["kind"], s["id"], s.get("state", ""), s.get("since", ""), s.get("peer", ""),
        s.get("transport", ""), "" if queue is None else queue["unacknowledged"],
        s.get("failure_reason") or s.get("quarantined_until") or "", s["position"],
    )  # fmt: skip


def _timeline(args: Any) -> int:
    from l2_session.projections.history import HistoryError
    from l2_session.tools.timeline import render

    fmt = "json" if args.as_json else args.format
    if args.out is None and fmt == "html":
        raise UsageError("--format html writes a page: give --out FILE.html")
    ledger, history = _history(args)
    title = f"l2-session timeline: {args.ledger}" + (
        f", session {args.session}" if args.session else ""
    )
    try:
        steps = history.timeline(args.session)
        if args.out is None:
            render(fmt, sys.stdout, steps, title=title)
        else:
            _write_whole(args.out, lambda out: render(fmt, out, steps, title=title))
    except HistoryError as e:
        raise UsageError(str(e)) from e
    finally:
        ledger.close()
    return ExitCode.OK


def _write_whole(path: str, write: Callable[[Any], None]) -> None:
    """Write a file whole or not at all: into a temporary file beside it, renamed over it."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".l2s-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            write(out)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as open() would have made it
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


@audit.command("timeline", help="every transition with its time, trigger, reason and position")
@ledger_option(positional=True)
@click.option("--session", metavar="ID", help="one session (or peer) by its id")
@click.option(
    "--format", "format", type=click.Choice(["table", "json", "mermaid", "html"]),
    default="table", show_default=True,
    help="html: one self-contained page (works offline), with --out",
)  # fmt: skip
@click.option("--out", metavar="FILE", help="write to FILE (whole, or not at all)")
@json_option
@debug_option
def timeline_command(**params: Any) -> int:
    return run_body(_timeline, params, ledger=None)


def _verify_bundle(args: Any) -> int:
    from l2_session.tools.show import print_json
    from l2_session.tools.verify_bundle import Unreadable, summary, verify_bundle

    try:
        report = verify_bundle(Path(args.bundle), list(args.trust) or None)
    except Unreadable as e:
        raise UsageError(str(e)) from e
    if args.as_json:
        print_json(report.to_json())
    else:
        print(summary(report))
    return ExitCode.OK if report.ok else ExitCode.NOT_INTACT


@audit.command(
    "verify-bundle", help="verify a bundle that `l2-session export` wrote, without its ledger"
)
@click.argument("bundle", metavar="BUNDLE")
@click.option(
    "--trust",
    multiple=True,
    type=did_key,
    metavar="DID",
    help="the did:key that must sign the bundle's checkpoint (repeat)",
)
@json_option
@debug_option
def verify_bundle_command(**params: Any) -> int:
    return run_body(_verify_bundle, params)
