"""A session that outlives its process: each run of ``send`` is a new process, and from the
second on it resumes the session the last one left — same session, fresh keys, messages
numbered on — instead of opening a new one.

    terminal 1:  python examples/resume.py serve --name bob --listen 127.0.0.1:4434
    terminal 2:  python examples/resume.py send --name alice --to BOB_DID@127.0.0.1:4434 hello
                 python examples/resume.py send --name alice --to BOB_DID@127.0.0.1:4434 again

``serve`` prints the ``--to`` argument when it starts, and echoes every message back. Each
node keeps its key store and ledger in the current directory (NAME.keys, NAME.sqlite3): the
ledger is what the next process resumes from. Kill ``send`` at any point (even with
SIGKILL): the next run resumes, and a message whose save had returned is delivered once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from l2_session import Node, NothingToResume, Session


async def serve(args: argparse.Namespace) -> None:
    async with Node.open(**files(args.name), listen=args.listen) as node:
        host, port = node.addresses.quic or ("?", 0)
        print(f"serving: --to {node.did}@{host}:{port}", flush=True)
        echoes = set()
        while True:
            session = await node.accept()
            print(f"session {session.id} from {session.peer_did}", flush=True)
            echoes.add(asyncio.ensure_future(echo(session)))


async def echo(session: Session) -> None:
    async for message in session:
        await session.send(message.data)


async def send(args: argparse.Namespace) -> None:
    peer, _, address = args.to.partition("@")
    async with Node.open(**files(args.name)) as node:
        try:
            # Up to 30 s: if the last process died between taking new keys and the peer's
            # hearing it did, the peer refuses them, and a full handshake follows its timeout.
            session = await node.resume(peer, addresses=address, timeout=30)
            how = "resumed"
        except NothingToResume:  # the first run: no session with the peer yet
            session = await node.establish(peer, addresses=address, timeout=30)
            how = "established"
        print(f"{how} session {session.id}", flush=True)
        await session.send(args.text.encode())
        answer = await session.receive(timeout=10)
        print(f"echo #{answer.seq}: {answer.data.decode()}", flush=True)
    # Leaving the block stops the node and leaves the session live in both ledgers.


def files(name: str) -> dict[str, str]:
    return {"identity": f"{name}.keys", "ledger": f"{name}.sqlite3"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="a node that echoes every message")
    serving.add_argument("--name", required=True)
    serving.add_argument("--listen", required=True, metavar="HOST:PORT")
    sending = commands.add_parser("send", help="open or resume the session, send, read the echo")
    sending.add_argument("--name", required=True)
    sending.add_argument("--to", required=True, metavar="DID@HOST:PORT")
    sending.add_argument("text")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args) if args.command == "serve" else send(args))


if __name__ == "__main__":
    main()
