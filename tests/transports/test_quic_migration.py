"""QUIC connection migration on a link (transports/quic_link.py) over loopback: the client's
UDP socket moves to a new port — by the client (``QuicLink.rebind``) or by a NAT between
them that rebinds — and frames keep flowing on the same connection, which the server moves
to the new address after validating it with PATH_CHALLENGE / PATH_RESPONSE (RFC 9000 §9)."""

from __future__ import annotations

import asyncio

from aioquic.quic.logger import QuicLogger
from quic_support import UdpRelay, endpoints, frame, linked


def path_frames(logger: QuicLogger) -> list[tuple[str, str]]:
    """(sent or received, frame type) of the server's PATH_CHALLENGE / PATH_RESPONSE frames."""
    found = []
    for trace in logger.to_dict()["traces"]:
        if trace["vantage_point"]["type"] != "server":
            continue
        for event in trace["events"]:
            for f in event.get("data", {}).get("frames", []):
                if f["frame_type"] in ("path_challenge", "path_response"):
                    found.append((event["name"].split(":")[1], f["frame_type"]))
    return found


async def exchange(dialled, accepted, tag: int, n: int = 20) -> None:
    for i in range(n):
        await dialled.send(frame(bytes([tag, i])))
        await accepted.send(frame(bytes([tag, i])))
    assert [await accepted.receive() for _ in range(n)] == [bytes([tag, i]) for i in range(n)]
    assert [await dialled.receive() for _ in range(n)] == [bytes([tag, i]) for i in range(n)]


def test_a_client_that_rebinds_its_socket_keeps_its_connection():
    logger = QuicLogger()

    async def run():
        async with endpoints(quic_logger=logger) as (server, client, address):
            dialled, accepted = await linked(server, client, address)
            await exchange(dialled, accepted, 1)
            old = accepted.peer_address
            new = await dialled.rebind()
            assert new[1] != old[1]
            await exchange(dialled, accepted, 2)  # frames sent while the path is validated

            path = accepted.connection.network_paths[0]
            assert path.addr == ("127.0.0.1", new[1]) and accepted.peer_address == path.addr
            assert path.is_validated and path.local_challenge_sent  # validated by a challenge
            assert ("packet_sent", "path_challenge") in path_frames(logger)
            assert ("packet_received", "path_response") in path_frames(logger)
            assert not dialled.closed and not accepted.closed
            assert len(server.links) == 1 and server._accepted.empty()  # no new connection

    asyncio.run(run())


def test_a_nat_that_rebinds_moves_the_connection_without_the_client_knowing():
    logger = QuicLogger()

    async def run():
        async with endpoints(quic_logger=logger) as (server, client, address):
            relay = await UdpRelay.start(address)
            try:
                dialled, accepted = await linked(server, client, relay.address)
                await exchange(dialled, accepted, 1)
                assert accepted.peer_address == relay.upstream_address
                moved_to = await relay.rebind()
                await exchange(dialled, accepted, 2)

                path = accepted.connection.network_paths[0]
                assert path.addr == moved_to and path.is_validated and path.local_challenge_sent
                assert ("packet_sent", "path_challenge") in path_frames(logger)
                assert ("packet_received", "path_response") in path_frames(logger)
                assert len(server.links) == 1 and not accepted.closed
            finally:
                relay.close()

    asyncio.run(run())
