"""``l2-session node status | sessions | witnessed | checkpoint | stop | dial | establish |
send | receive | delivered | close``: ask a running node over its control socket
(docs/cli.md, "node") and print the answer — tables, lines, or ``--json``.

The socket is ``--control PATH``, or the ``control`` setting of the node's ``--config`` file.
A node that cannot be reached, or that refuses the request, is a usage error (exit 2) that
says why.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from l2_session.tools.commands import debug_option, json_option, options, run_body
from l2_session.tools.errors import ExitCode, UsageError

MAX_ANSWER = 16 * 1024 * 1024  # an answer is one line; a node's witnessed list is the longest


def ask(control: Path, op: str, wait_s: float, **arguments: Any) -> dict[str, Any]:
    """The node's answer to ``{"op": op, **arguments}`` (without its ``ok``), waited for at
    most ``wait_s`` seconds."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(wait_s)
            s.connect(str(control))
            s.sendall(json.dumps({"op": op, **arguments}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_ANSWER:
                    raise UsageError(f"the node's answer on {control} is over {MAX_ANSWER} bytes")
    except FileNotFoundError:
        raise UsageError(
            f"no control socket at {control}: is the node running (l2-session node --control "
            f"{control})?"
        ) from None
    except ConnectionRefusedError:
        raise UsageError(f"nothing listens on {control}: the node that made it stopped") from None
    except TimeoutError:
        raise UsageError(f"the node on {control} did not answer within {wait_s:g} s") from None
    except OSError as e:
        raise UsageError(f"cannot ask the node on {control}: {e.strerror or e}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise UsageError(f"{control} answered with something that is not a node's answer")
    if not answer.pop("ok", False):
        raise UsageError(f"the node refused {op!r}: {answer.get('error', 'no reason given')}")
    return answer


def _control(args: Any) -> Path:
    if args.control:
        return Path(args.control)
    if args.config:
        from l2_session.tools.node import _read_config

        control = _read_config(args.config).get("control")
        if isinstance(control, str) and control:
            return Path(control)
        raise UsageError(f"{args.config} has no control setting: give --control PATH")
    raise UsageError("give the node's control socket: --control PATH, or --config FILE")


def _asked(op: str) -> Any:
    def body(args: Any) -> int:
        from l2_session.tools.show import print_json, print_table

        control = _control(args)
        answer = ask(control, op, args.timeout + 1, **_arguments(op, args))
        if op == "establish" and args.wait:
            ask(control, "wait", args.timeout + 1, session=answer["session"],
                state="established", timeout=args.timeout)  # fmt: skip
        if args.as_json:
            print_json(answer)
        elif op == "status":
            witnessing = answer.get("witnessing") or {}
            print(f"node {answer['did']}, ledger {answer['ledger_id']}")
            print(f"sessions in memory: {answer['sessions']}; connections: "
                  f"{', '.join(answer['connections']) or 'none'}")  # fmt: skip
            print("witnessing: " + (", ".join(f"{k} {v}" for k, v in witnessing.items()) or "none"))
        elif op == "sessions":
            sessions = answer["sessions"]
            rows = [(s["id"], s["peer"], s["state"], s["transport"]) for s in sessions]
            print_table(f"sessions ({len(rows)})", ("id", "peer", "state", "transport"), rows)
        elif op == "witnessed":
            print_table(
                f"ledgers witnessed ({len(answer['witnessed'])})",
                ("origin", "size", "signer", "witnessed", "conflicts", "last conflict"),
                [(w.get("origin"), w.get("size"), w.get("signer"), w.get("witnessed"),
                  w.get("conflicts"), w.get("last_conflict") or "") for w in answer["witnessed"]],
            )  # fmt: skip
        elif op == "checkpoint":
            print(answer["checkpoint"], end="" if answer["checkpoint"].endswith("\n") else "\n")
        elif op == "dial":
            print(f"connected over {answer['transport']}")
        elif op == "establish":
            print(answer["session"])
        elif op == "receive":
            from l2_session.infrastructure.ledger.verify_report import printable

            data = base64.b64decode(answer["data"])
            text = data.decode("utf-8", "replace")
            print(f"{answer['session']} {answer['seq']} {printable(text)}")
        elif op == "delivered":
            from l2_session.infrastructure.ledger.verify_report import printable

            for message in answer["messages"]:
                text = base64.b64decode(message["data"]).decode("utf-8", "replace")
                print(f"{answer['session']} {message['seq']} {printable(text)}")
        elif op == "stop":
            print("the node is stopping")
        else:  # send, close: done once the node says so (saved first)
            print("saved" if op == "send" else "closed")
        return ExitCode.OK

    return body


def _arguments(op: str, args: Any) -> dict[str, Any]:
    """The request's arguments, from the command's (docs/cli.md's table of ops)."""
    if op == "dial":
        from l2_session.tools.node import Address

        found: dict[str, Any] = {"did": args.did}
        for kind in ("quic", "tcp"):
            if getattr(args, kind):
                address = Address.parse(getattr(args, kind), f"--{kind}")
                found[kind] = [address.host, address.port]
        return found
    if op == "establish":
        return {"did": args.did}
    if op == "send":
        data = args.data.encode() if args.file is None else _read(args.file)
        return {"session": args.session, "data": base64.b64encode(data).decode()}
    if op == "receive":
        return {"timeout": args.timeout}
    if op == "delivered":
        return {"session": args.session, "after": args.after, "limit": args.limit}
    if op == "close":
        return {"session": args.session}
    return {}


def _read(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


client_options = options(
    click.option("--control", metavar="PATH", help="the node's control socket"),
    click.option("--config", metavar="FILE", help="the node's TOML file (its control setting)"),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=10.0,
        show_default=True,
        help="seconds to wait for the answer",
    ),
    json_option,
    debug_option,
)

HELP = {
    "status": "ask a running node: its DID, ledger, sessions, connections, witnessing counts",
    "sessions": "ask a running node: its sessions in memory, their states and transports",
    "witnessed": "ask a running node: the ledgers it witnesses, and conflicts found in them",
    "checkpoint": "ask a running node to sign and record a checkpoint of its ledger; print it",
    "stop": "ask a running node to stop (as SIGTERM does: its sessions stay resumable)",
}


HELP |= {
    "dial": "ask a running node to connect to a peer: QUIC first, μTCP raced beside it",
    "establish": "ask a running node to open a session with a peer; print the session's id",
    "send": "ask a running node to send a message on a session; returns once it is saved",
    "receive": "wait for the next message a running node delivers; print it",
    "delivered": "print a session's messages saved in a running node's ledger after a seq "
    "(what a restart does not hand again)",
    "close": "ask a running node to close a session (saved, then sent to the peer)",
}
ARGUMENTS: dict[str, list[Callable[[Any], Any]]] = {
    "dial": [
        click.argument("did"),
        click.option("--quic", metavar="HOST:PORT", help="the peer's QUIC address"),
        click.option("--tcp", metavar="HOST:PORT", help="the peer's μTCP address"),
    ],
    "establish": [
        click.argument("did"),
        click.option("--wait", is_flag=True, help="return once the session is established"),
    ],
    "send": [
        click.argument("session"),
        click.argument("data", required=False, default=""),
        click.option("--file", metavar="FILE", help="send this file's bytes instead (- : stdin)"),
    ],
    "close": [click.argument("session")],
    "delivered": [
        click.argument("session"),
        click.option(
            "--after",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="the seq of the last message already handled",
        ),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            default=1000,
            show_default=True,
            help="at most this many messages",
        ),
    ],
}


def _command(op: str) -> click.Command:
    body = _asked(op)

    @click.command(op, help=HELP[op])
    @options(*ARGUMENTS.get(op, []))
    @client_options
    def command(**params: Any) -> int:
        return run_body(body, params)

    return command


COMMANDS = [_command(op) for op in HELP]
