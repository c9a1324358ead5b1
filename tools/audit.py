"""``l2-session audit``: what an auditor asks of a ledger. ``audit verify`` is ``verify``;
``audit prove`` prints a Merkle inclusion or consistency proof as JSON, with the stored
checkpoint that signs its root when there is one; ``audit check-proof`` checks such a JSON
proof offline, against a checkpoint if given (docs/cli.md, docs/ledger-format.md §13)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from l2_session.tools.arguments import whole_number
from l2_session.tools.errors import ExitCode, UsageError

PROOF_MAX_BYTES = 1024 * 1024  # a proof of a tree of 2**63 events is under 4 KiB


def _prove(args: argparse.Namespace) -> int:
    from l2_session.infrastructure.ledger import SessionLedger

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
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return ExitCode.OK


def _check_proof(args: argparse.Namespace) -> int:
    from l2_session.infrastructure.ledger.checkpoint import Checkpoint, CheckpointError
    from l2_session.infrastructure.ledger.merkle import ProofError
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
    try:
        proof = parse[kind](data)
        proof.check()
    except ProofError as e:
        print(f"proof: DOES NOT CHECK — {e}")
        return ExitCode.NOT_INTACT
    print(f"proof: checks ({kind}, tree of {proof.size} events)")
    if checkpoint is None:
        print("  root: not signed — no checkpoint given or included; pass --checkpoint FILE")
        return ExitCode.OK
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
    if args.trust and checkpoint.signer not in args.trust:
        problems.append(f"the checkpoint is signed by {checkpoint.signer}, not a --trust key")
    if problems:
        print("  checkpoint: DOES NOT MATCH — " + "; ".join(problems))
        return ExitCode.NOT_INTACT
    print(f"  root signed by {checkpoint.signer} at time {checkpoint.timestamp_us} µs")
    return ExitCode.OK


def register(command: Callable[[str, str], argparse.ArgumentParser], verify_options: Any) -> None:
    from l2_session.tools.arguments import did_key
    from l2_session.tools.ledger_option import add_ledger_argument

    audit = command("audit", "audit a ledger: verify it, prove events in it, check proofs")
    subcommands = audit.add_subparsers(dest="audit_command", metavar="AUDIT_COMMAND", required=True)

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subcommands.add_parser(name, help=help)
        parser.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="on failure, show the traceback",
        )
        return parser

    verify_options(sub("verify", "the same as `l2-session verify`"))
    prove = sub("prove", "print a Merkle inclusion or consistency proof as JSON")
    add_ledger_argument(prove)
    prove.add_argument(
        "--inclusion", type=whole_number(1, 2**63 - 1), metavar="POSITION",
        help="prove that the event at POSITION is in the tree (of --size events)",
    )  # fmt: skip
    prove.add_argument(
        "--size", type=whole_number(1, 2**63 - 1), metavar="N",
        help="the tree size of an inclusion proof (default: every event)",
    )  # fmt: skip
    prove.add_argument(
        "--consistency", type=whole_number(1, 2**63 - 1), nargs=2, metavar=("OLD", "NEW"),
        help="prove that the tree of OLD events is a prefix of the tree of NEW",
    )  # fmt: skip
    prove.set_defaults(run=_prove)
    check = sub("check-proof", "check a proof that `audit prove` printed, offline")
    check.add_argument("proof", metavar="PROOF_JSON", help="the file `audit prove` wrote")
    check.add_argument(
        "--checkpoint", metavar="FILE",
        help="a checkpoint that signs the proof's root (default: the one in the proof, if any)",
    )  # fmt: skip
    check.add_argument(
        "--trust", action="append", type=did_key, metavar="DID",
        help="a did:key the checkpoint must be signed by (repeat)",
    )  # fmt: skip
    check.set_defaults(run=_check_proof)
