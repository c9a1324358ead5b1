"""Prekey bundles over a node's connections (transports/bundles.py): a node that knows a peer's
DID and address but not its bundle asks the peer's node for it, and opens a session with it;
a node answers only for itself and once per connection; a bundle is taken only for the DID
the connection is with and only if it is that DID's (its signatures checked). Real keys,
signed SQLite ledgers, loopback TCP and QUIC."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from l2_session.domain.handshake.bundle import PrekeyBundle, create_prekeys
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.bundles import BundleRequest, BundleResponse
from l2_session.transports.frames import decode, encode
from tcp_support import (
    DAY_US,
    WAIT_S,
    Side,
    VirtualTime,
    established,
    hello,
    make_side,
    open_raw,
    until,
)


def side_with_bundle(tmp_path: Path, name: str, directory: DidKeyResolver, clock: VirtualTime,
                     mine: DidKeyResolver) -> Side:  # fmt: skip
    """A node that serves its own bundle and takes peers' into ``mine`` (its own directory,
    which knows no peer's bundle at first)."""
    side = make_side(tmp_path, name, directory, clock, durability="normal")
    side.node.worker.serve_bundle = lambda: directory.directory.take(side.did).encode()
    side.node.worker.publish_bundle = mine.publish_bundle
    return side


async def _close(*sides: Side) -> None:
    for side in sides:
        await side.node.close()
        side.ledger.close()


@pytest.mark.parametrize("transport", ["quic", "utcp"])
def test_a_node_fetches_a_peers_bundle_over_the_connection_and_opens_a_session(
    tmp_path: Path, transport: str
) -> None:
    async def run() -> None:
        clock = VirtualTime()
        bobs_directory, alices_directory = DidKeyResolver(), DidKeyResolver()
        bob = side_with_bundle(tmp_path, "bob", bobs_directory, clock, bobs_directory)
        alice = side_with_bundle(tmp_path, "alice", alices_directory, clock, alices_directory)
        try:
            if transport == "quic":
                await alice.node.connect_quic(bob.did, *await bob.node.serve_quic())
            else:
                server = await bob.node.serve()
                await alice.node.connect(bob.did, "127.0.0.1", server.sockets[0].getsockname()[1])
            assert bob.did not in alices_directory.directory
            await alice.node.fetch_bundle(bob.did, WAIT_S)
            assert bob.did in alices_directory.directory
            sid = await alice.node.establish(bob.did)
            await established(alice, sid)
            await alice.node.send(sid, b"hello")
            assert (await asyncio.wait_for(bob.node.receive(), WAIT_S)).payload == b"hello"
        finally:
            await _close(alice, bob)

    asyncio.run(run())


def test_a_node_answers_for_itself_once_per_connection_and_takes_only_genuine_bundles(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        bob = side_with_bundle(tmp_path, "bob", directory, clock, directory)
        server = await bob.node.serve()
        port = server.sockets[0].getsockname()[1]
        mallory = NodeIdentity.generate()
        carol = NodeIdentity.generate()  # a DID Mallory claims, whose key she does not hold
        try:
            reader, writer = await open_raw(port, hello(mallory.did))
            writer.write(encode(BundleRequest("did:key:z6MkSomebodyElse")))  # not Bob
            writer.write(encode(BundleRequest(bob.did)))
            writer.write(encode(BundleRequest(bob.did)))  # again on this connection
            (n,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), WAIT_S))
            answer = decode(await reader.readexactly(n))
            assert isinstance(answer, BundleResponse) and answer.did == bob.did
            given = PrekeyBundle.parse(answer.bundle)
            assert len(given.one_time_prekeys) == 1  # one of the pool, for this asker alone
            # Another asker gets another one-time prekey.
            reader3, writer3 = await open_raw(port, hello(NodeIdentity.generate().did))
            writer3.write(encode(BundleRequest(bob.did)))
            (n,) = struct.unpack(">I", await asyncio.wait_for(reader3.readexactly(4), WAIT_S))
            other = decode(await reader3.readexactly(n))
            assert isinstance(other, BundleResponse)
            assert PrekeyBundle.parse(other.bundle).one_time_prekeys[0] != given.one_time_prekeys[0]
            writer3.close()
            await until(lambda: bob.node.worker.bundles_refused == 2)
            # A bundle for the DID the connection claims, but signed by another key: refused.
            _, forged = create_prekeys(mallory.private_key, expires_at_us=clock.now_us() + DAY_US)
            _reader2, writer2 = await open_raw(port, hello(carol.did))
            writer2.write(encode(BundleResponse(carol.did, forged.encode())))
            # And a genuine bundle of Mallory's, on a connection that claims Carol.
            writer2.write(encode(BundleResponse(mallory.did, forged.encode())))
            await until(lambda: bob.node.worker.bundles_refused == 4)
            assert carol.did not in directory.directory
            assert mallory.did not in directory.directory
            assert not bob.node.worker.bundles_received
            # Mallory's own bundle on her own connection is taken.
            writer.write(encode(BundleResponse(mallory.did, forged.encode())))
            await until(lambda: mallory.did in bob.node.worker.bundles_received)
            assert mallory.did in directory.directory
            for w in (writer, writer2):
                w.close()
        finally:
            server.close()
            await _close(bob)

    asyncio.run(run())


def test_fetch_bundle_without_a_connection_says_so(tmp_path: Path) -> None:
    async def run() -> None:
        clock, directory = VirtualTime(), DidKeyResolver()
        alice = make_side(tmp_path, "alice", directory, clock, durability="normal")
        try:
            with pytest.raises(ConnectionError, match="no connection"):
                await alice.node.fetch_bundle("did:key:z6MkNobody")
        finally:
            await _close(alice)

    asyncio.run(run())
