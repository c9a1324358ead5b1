"""A chat between two terminals: each line typed is sent; each line received is printed.

    terminal 1:  python examples/chat.py --name bob --listen 127.0.0.1:4433
    terminal 2:  python examples/chat.py --name alice --connect BOB_DID@127.0.0.1:4433

Bob prints the ``--connect`` argument to give Alice when he starts. Each side keeps its key
store and ledger in the current directory (``NAME.keys``, ``NAME.sqlite3``): run it again
and it is the same node, with its history; ``l2-session audit timeline NAME.sqlite3`` shows
it. End a side with Ctrl-D (its session is closed, the peer told) or Ctrl-C (left resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from l2_session import Node, Session


async def type_lines(session: Session) -> None:
    """Lines from stdin to the peer, until end of input; then the session is closed."""
    stdin = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := await stdin.readline():
        await session.send(line.rstrip(b"\n"))
    await session.close()


async def print_lines(session: Session, name: str) -> None:
    async for message in session:
        print(f"{name}> {message.data.decode(errors='replace')}", flush=True)
    print("* the session is closed", flush=True)


async def chat(args: argparse.Namespace) -> None:
    files = {"identity": f"{args.name}.keys", "ledger": f"{args.name}.sqlite3"}
    async with Node.open(**files, listen=args.listen) as node:
        if args.connect:
            did, _, address = args.connect.partition("@")
            session = await node.establish(did, addresses=address)
        else:
            host, port = node.addresses.quic or ("?", 0)
            print(f"* waiting: connect with --connect {node.did}@{host}:{port}", flush=True)
            session = await node.accept()
        print(
            f"* session {session.id} with {session.peer_did} over {session.transport}", flush=True
        )
        typing = asyncio.ensure_future(type_lines(session))
        await print_lines(session, session.peer_did[-6:])
        typing.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="this side's files: NAME.keys, NAME.sqlite3")
    parser.add_argument("--listen", help="HOST:PORT to listen on (QUIC and TCP)")
    parser.add_argument(
        "--connect", metavar="DID@HOST:PORT", help="the peer to open a session with"
    )
    args = parser.parse_args()
    if not args.listen and not args.connect:
        parser.error("give --listen HOST:PORT (to wait for a peer) or --connect DID@HOST:PORT")
    try:
        asyncio.run(chat(args))
    except KeyboardInterrupt:
        print("* stopped; the session is left resumable", file=sys.stderr)


if __name__ == "__main__":
    main()
