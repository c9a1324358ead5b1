"""The session channel on the real transport: after the handshake every Data, DataAck, Heartbeat and
HeartbeatAck frame travels sealed under the session's directional ChaCha20-Poly1305 keys,
with per-direction counters (reserved in the ledger) as nonces and a 2048-wide replay window
(transports/sealed.py); and a connection is bound to the DID its handshake proved
(transports/tcp.py). Real keys, real ledgers, loopback TCP, an on-path relay as the attacker.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from l2_session.domain.handshake.wire import MessageType
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session.commands import (
    Data,
    DataAck,
    HandshakeAck,
    HandshakeRequest,
    Heartbeat,
    HeartbeatAck,
    Output,
)
from l2_session.domain.session.config import SessionConfig
from l2_session.transports import tcp_links
from l2_session.transports.frames import KIND_OF, encode
from l2_session.transports.tcp import TcpNode
from tcp_support import (
    WAIT_S,
    Pair,
    Side,
    acknowledged,
    established_pair,
    fresh_did,
    hello,
    is_sealed,
    until,
)

SECRET = b"the application's secret message"
CHANNEL_KINDS = {KIND_OF[c] for c in (Data, DataAck, Heartbeat, HeartbeatAck)}
RECORD_KIND_AT = 4 + 26 + 1  # length prefix, sealed head, record version


def _run(tmp_path: Path, test, config: SessionConfig | None = None) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        pair = await (established_pair(tmp_path) if config is None else
                      established_pair(tmp_path, config))  # fmt: skip
        try:
            await test(pair)
        finally:
            await pair.close()

    asyncio.run(main())


async def _heartbeat_round(pair: Pair) -> None:
    """Skip to Alice's next heartbeat and wait until Bob's answer reached her."""
    alice, manager = pair.alice.session(pair.conversation), pair.alice.manager
    sent, now = alice.heartbeat_counter, pair.clock.skip(31)

    def tick() -> list[Output]:
        outputs = manager.tick(now)
        assert alice.heartbeat_counter == sent + 1 and alice.heartbeat_sent_us is not None
        return outputs

    await pair.alice.node.command(tick)
    await pair.alice.node.until(lambda: alice.heartbeat_sent_us is None, WAIT_S)  # answered


def test_messages_and_heartbeats_travel_sealed(tmp_path: Path) -> None:
    async def test(pair: Pair) -> None:
        await pair.alice.node.send(pair.conversation, SECRET)
        await until(lambda: [d.payload for d in pair.bob.node.delivered] == [SECRET])
        await acknowledged(pair)
        await _heartbeat_round(pair)

        wire = pair.relay.to_server + pair.relay.to_client
        assert not any(SECRET in frame for frame in wire)
        assert not {frame[4] for frame in wire} & CHANNEL_KINDS  # nothing of the channel in clear
        sealed = [frame for frame in wire if is_sealed(frame)]
        kinds = {(frame in pair.relay.to_server, frame[RECORD_KIND_AT]) for frame in sealed}
        # Both ways: data (the message, its ack) and heartbeats (Alice's, Bob's answer).
        assert kinds == {(up, kind) for up in (True, False)
                         for kind in (MessageType.DATA, MessageType.HEARTBEAT)}  # fmt: skip
        assert not pair.alice.node.sealed.refused and not pair.bob.node.sealed.refused

    _run(tmp_path, test)


def test_a_replayed_or_altered_sealed_frame_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async def test(pair: Pair) -> None:
        bob, refused = pair.bob.session(pair.conversation), pair.bob.node.sealed.refused
        pair.relay.hold = is_sealed
        await pair.alice.node.send(pair.conversation, SECRET)
        await until(lambda: bool(pair.relay.held))
        pair.relay.hold = None
        original = pair.relay.held.pop()

        for at in (4 + 1, 4 + 26 + 12, len(original) - 1):  # conversation, ciphertext, tag
            version, before = bob.version, refused.total()
            altered = bytearray(original)
            altered[at] ^= 0x01
            pair.relay.inject(bytes(altered))
            await until(lambda before=before: refused.total() == before + 1)
            assert bob.version == version and not pair.bob.node.delivered
        assert refused == {"unknown_session": 1, "forged": 2}

        pair.relay.inject(original)  # the untouched frame still opens: nothing was consumed
        await until(lambda: len(pair.bob.node.delivered) == 1)
        await acknowledged(pair)
        version = bob.version
        pair.relay.inject(original)  # a replay
        await until(lambda: refused["replayed"] == 1)
        assert bob.version == version and len(pair.bob.node.delivered) == 1

    _run(tmp_path, test)


def test_frames_reordered_within_the_window_are_accepted(tmp_path: Path) -> None:
    async def test(pair: Pair) -> None:
        opened = pair.bob.node.sealed.opened
        pair.relay.hold = is_sealed
        for text in (b"first", b"second"):
            await pair.alice.node.send(pair.conversation, text)
        # Each message goes once: first, second (decision 21).
        await until(lambda: len(pair.relay.held) == 2)
        pair.relay.hold = None
        for frame in reversed(pair.relay.held):
            pair.relay.inject(frame)
        await until(lambda: pair.bob.node.sealed.opened == opened + 2)
        assert not pair.bob.node.sealed.refused
        # The second, ahead of a gap, waited for the first: delivered in order, once.
        await until(lambda: [d.payload for d in pair.bob.node.delivered] == [b"first", b"second"])

    _run(tmp_path, test)


def test_plaintext_channel_frames_are_refused(tmp_path: Path) -> None:
    async def test(pair: Pair) -> None:
        bob = pair.bob.session(pair.conversation)
        version = bob.version
        pair.relay.inject(encode(Data(pair.conversation, 1, b"in clear")))
        pair.relay.inject(encode(Heartbeat(pair.conversation, 99)))
        await until(lambda: pair.bob.node.sealed.refused["unsealed"] == 2)
        assert bob.version == version and not pair.bob.node.delivered

    _run(tmp_path, test)


def test_after_rotation_the_old_keys_no_longer_open_frames(tmp_path: Path) -> None:
    # Keys rotate 20 s after the handshake (ttl - rotation_window), before any heartbeat.
    config = SessionConfig(ttl=120.0, rotation_window=100.0)

    async def test(pair: Pair) -> None:
        alice, bob = pair.alice.session(pair.conversation), pair.bob.session(pair.conversation)
        old_key, held = bob.key_id, pair.relay.held
        pair.relay.hold = is_sealed  # Alice's sealed frames, under the old keys and the new
        messages = [SECRET, b"two", b"three"]
        for message in messages:
            await pair.alice.node.send(pair.conversation, message)
        # Each message goes once: three records (decision 21).
        await until(lambda: len(held) == 3)
        under_old_keys = held[-1]
        assert under_old_keys[4 + 26 + 4 : 4 + 26 + 12] == (2).to_bytes(8, "big")  # counter

        now = pair.clock.skip(21)
        await pair.alice.node.command(lambda: pair.alice.manager.tick(now))
        await pair.bob.node.until(
            lambda: bob.key_id != old_key and bob.state == "established", WAIT_S
        )
        await pair.alice.node.until(lambda: alice.key_id == bob.key_id, WAIT_S)
        await until(lambda: len(held) >= 6)  # Alice sends them all again under the new keys

        refused = pair.bob.node.sealed.refused
        pair.relay.inject(under_old_keys)
        await until(lambda: refused["old_key"] == 1)
        # Relabelled with the new key id, the old record meets the new key: the AEAD refuses
        # it (its counter 2 is new to the new keys' window, which has seen nothing yet).
        assert bob.key_id is not None
        relabelled = bytearray(under_old_keys)
        relabelled[4 + 17 : 4 + 25] = bytes.fromhex(bob.key_id)
        pair.relay.inject(bytes(relabelled))
        await until(lambda: refused["forged"] == 1)
        assert not pair.bob.node.delivered

        # No message is lost: what Alice sent under the new keys is delivered, in order.
        pair.relay.hold = None
        for frame in held[3:]:
            pair.relay.inject(frame)
        await until(lambda: [d.payload for d in pair.bob.node.delivered] == messages)

    _run(tmp_path, test, config)


def test_after_a_restart_and_resumption_the_old_keys_no_longer_open_frames(
    tmp_path: Path,
) -> None:
    async def test(pair: Pair) -> None:
        bob = pair.bob.session(pair.conversation)
        old_key = bob.key_id
        pair.relay.hold = is_sealed
        await pair.alice.node.send(pair.conversation, SECRET)
        await until(lambda: bool(pair.relay.held))
        pair.relay.hold = None
        under_old_keys = pair.relay.held.pop()

        # Alice's process goes away; a new one finds her session in the ledger, records the
        # restart (suspended), and resumes it as soon as it reaches Bob (decision 16).
        await pair.alice.node.close()
        exchange = pair.alice.manager._kx  # the node's identity and prekeys (a key store's job)
        manager = SessionManager(pair.alice.did, pair.alice.ledger, key_exchange=exchange)
        pair.alice = Side(manager, TcpNode(manager, pair.clock.now_us), pair.alice.store,
                          pair.alice.ledger)  # fmt: skip
        exchange.source_of = pair.alice.node.address_of  # type: ignore[attr-defined]
        alice = manager.session(pair.conversation)
        assert alice.state == "suspended" and alice.key_id == old_key
        await pair.alice.node.connect(pair.bob.did, "127.0.0.1", pair.relay.port)
        await until(lambda: bob.key_id == alice.key_id != old_key and bob.state == "established")
        # The message held back is not lost: it went again, under the resumed keys.
        await until(lambda: [d.payload for d in pair.bob.node.delivered] == [SECRET])

        pair.relay.inject(under_old_keys)
        await until(lambda: pair.bob.node.sealed.refused["old_key"] == 1)
        assert len(pair.bob.node.delivered) == 1

    _run(tmp_path, test)


def test_an_impostor_claiming_a_peers_did_gets_none_of_its_frames(tmp_path: Path) -> None:
    async def test(pair: Pair) -> None:
        port = pair.server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        claimed = pair.alice.did.encode()  # Mallory claims to be Alice
        writer.write(struct.pack(">H", len(claimed)) + claimed)
        writer.write(encode(Heartbeat(pair.conversation, 1)))  # and tries her luck in clear
        refused = pair.bob.node.sealed.refused
        await until(lambda: refused["unsealed"] == 1)  # Bob has taken the claim in

        # Bob sends to Alice, by message and by heartbeat; Alice to Bob. All of it arrives.
        bob = pair.bob.session(pair.conversation)
        await pair.bob.node.send(bob.id, b"for alice only")
        await until(lambda: [d.payload for d in pair.alice.node.delivered] == [b"for alice only"])
        now = pair.clock.skip(31)
        await pair.bob.node.command(lambda: pair.bob.manager.tick(now))
        await pair.bob.node.until(
            lambda: bob.heartbeat_sent_us is None and bob.heartbeat_counter == 1, WAIT_S
        )
        await _heartbeat_round(pair)
        assert pair.bob.node.is_proven(pair.alice.did)

        await pair.bob.node.close()  # Bob hangs up on everyone: Mallory reads to the end
        assert await reader.read() == b""
        writer.close()

    _run(tmp_path, test)


def test_a_session_replayed_from_the_ledger_proves_no_connection(tmp_path: Path) -> None:
    # Bob restarts. Before Alice is back, Mallory connects claiming Alice's DID and sends a
    # stray handshake frame for the conversation (its id travels in clear). Bob's session,
    # found in his ledger with its keys, was recorded as restarted: Mallory's claim gets the
    # RESUME (a handshake frame goes to the latest claim; only Alice can answer it), and none
    # of Bob's channel frames for Alice, then or later.
    async def test(pair: Pair) -> None:
        exchange = pair.bob.manager._kx  # the node's identity and prekeys (a key store's job)
        manager = SessionManager(pair.bob.did, pair.bob.ledger, key_exchange=exchange)
        node = TcpNode(manager, pair.clock.now_us)
        server = await node.serve()
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.sockets[0].getsockname()[1]
            )
            claimed = pair.alice.did.encode()
            writer.write(struct.pack(">H", len(claimed)) + claimed)
            writer.write(encode(HandshakeAck(pair.conversation, b"stray")))
            await node.until(lambda: manager.dropped_frames == 1, WAIT_S)  # a stale ack
            session = manager.session_for(pair.conversation)
            assert session is not None and session.key_id is not None  # replayed, with keys
            assert session.state == "handshake_initiated" and session.resuming
            assert not node.is_proven(pair.alice.did)

            await node.send(session.id, b"for alice only")
            sendable = await node.query(session.sendable)
            assert node.unrouted == 0 and not sendable  # held until resumed
        finally:
            await node.close()
            server.close()
        received = await reader.read()
        frames = []
        while received:
            length = int.from_bytes(received[:4], "big")
            frames.append(received[4 : 4 + length])
            received = received[4 + length :]
        assert [frame[0] for frame in frames] == [KIND_OF[HandshakeRequest]]  # the RESUME only
        writer.close()

    _run(tmp_path, test)


def test_reasons_for_dropped_connections_are_bounded(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Anyone can connect and break the framing; the node keeps the latest reasons only.
    monkeypatch.setattr(tcp_links, "DROPPED_KEPT", 3)

    async def test(pair: Pair) -> None:
        node = TcpNode(pair.bob.manager, pair.clock.now_us)
        server = await node.serve()
        try:
            port = server.sockets[0].getsockname()[1]
            for i in range(7):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(hello(fresh_did()) + struct.pack(">I", 0))  # length 0
                assert await reader.read() == b""  # dropped
                writer.close()
                await until(lambda i=i: node.dropped_count == i + 1)
            assert len(node.dropped_connections) == 3 and node.dropped_count == 7
            assert all("frame length 0" in why for why in node.dropped_connections)
        finally:
            await node.close()
            server.close()

    _run(tmp_path, test)


def test_a_silent_oversized_or_unusable_hello_and_connections_over_the_cap_are_cut(
    tmp_path: Path,
) -> None:
    # Unproven connections hold nothing for long: a connection that never names its DID is
    # closed after the hello timeout, an oversized claim is refused unread, a claim that is no
    # did:key is refused at once, and beyond max_connections the least recently active
    # unproven connection makes room for the new one — while the proven ones work on.
    async def test(pair: Pair) -> None:
        node = TcpNode(pair.bob.manager, pair.clock.now_us, max_connections=2, hello_timeout_s=0.2)
        server = await node.serve()
        port = server.sockets[0].getsockname()[1]
        opened: list[asyncio.StreamWriter] = []
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(writer)
            assert await reader.read() == b""  # said nothing: closed
            await until(lambda: node.dropped_count == 1)
            assert "none within 0.2 s" in node.dropped_connections[-1]

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(writer)
            writer.write(struct.pack(">H", 60_000))  # claims a 60,000-byte DID
            assert await reader.read() == b""
            await until(lambda: node.dropped_count == 2)
            assert "DID of 60000 bytes" in node.dropped_connections[-1]

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(writer)
            writer.write(hello("did:key:"))  # no key in it
            assert await reader.read() == b""
            await until(lambda: node.dropped_count == 3)
            assert "bad hello: did:key must use base58btc" in node.dropped_connections[-1]

            readers = []
            for _ in range(2):  # two well-formed claims fill the node
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                opened.append(writer)
                readers.append(reader)
                writer.write(hello(fresh_did()))
            await until(lambda: len(node.connections.open) == 2)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(writer)
            assert await readers[0].read() == b""  # the first, least recently active, is cut
            await until(lambda: node.dropped_count == 4)
            assert "the least recently active unproven one of 2" in node.dropped_connections[-1]
            assert len(node.connections.open) == 2
        finally:
            for writer in opened:
                writer.close()
            await node.close()
            server.close()

    _run(tmp_path, test)


def test_connection_limits_are_checked_on_construction(tmp_path: Path) -> None:
    async def test(pair: Pair) -> None:
        with pytest.raises(ValueError, match="max_connections must be >= 1"):
            TcpNode(pair.bob.manager, pair.clock.now_us, max_connections=0)
        with pytest.raises(ValueError, match="hello_timeout_s must be > 0, got 0"):
            TcpNode(pair.bob.manager, pair.clock.now_us, hello_timeout_s=0)
        with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
            TcpNode(pair.bob.manager, pair.clock.now_us, max_batch=0)

    _run(tmp_path, test)
