"""Our STUN against another implementation: aioice (aiortc's ICE library, the STUN code that
WebRTC in Python runs on), over loopback sockets and message by message.

Their client — ``aioice.ice.StunProtocol``, with its own transactions and retransmissions —
asks our server; our client asks a server built from their codec. Then hypothesis checks that
each side reads what the other writes: addresses, FINGERPRINT and MESSAGE-INTEGRITY.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aioice import stun as aioice_stun
from aioice.ice import StunProtocol as AioiceStunProtocol
from hypothesis import given, settings
from hypothesis import strategies as st
from l2_session.transports.stun import (
    MessageClass,
    decode,
    encode,
    transport_address,
)
from l2_session.transports.stun_binding import (
    BindingFailed,
    BindingServer,
    BindingSucceeded,
    Retransmission,
    binding_error,
    binding_request,
    binding_success,
)
from l2_session.transports.stun_udp import open_stun

KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
FAST = Retransmission(rto=0.05)


class _Receiver:
    """What aioice's StunProtocol reports to (an ICE Connection in aioice); here it only
    records, so that a message aioice could not parse shows up as data."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.requests: list[Any] = []

    def data_received(self, data: bytes, component: int) -> None:
        self.data.append(data)

    def request_received(self, message: Any, addr: Any, protocol: Any) -> None:
        self.requests.append(message)

    def protocol_lost(self, protocol: Any) -> None:
        pass


async def _aioice_client() -> tuple[AioiceStunProtocol, _Receiver]:
    receiver = _Receiver()
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: AioiceStunProtocol(receiver), local_addr=("127.0.0.1", 0)
    )
    protocol.local_candidate = SimpleNamespace(component=1)
    return protocol, receiver


def _binding_request(attributes: dict[str, Any] | None = None) -> aioice_stun.Message:
    return aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING,
        message_class=aioice_stun.Class.REQUEST,
        attributes=attributes,
    )


def test_their_client_gets_its_address_from_our_server():
    async def run():
        server = await open_stun(("127.0.0.1", 0))
        client, receiver = await _aioice_client()
        try:
            plain, _ = await client.request(_binding_request(), server.local_address[:2])
            fingerprinted = _binding_request({"SOFTWARE": "aioice"})
            fingerprinted.add_fingerprint()
            checked, _ = await client.request(fingerprinted, server.local_address[:2])
        finally:
            await client.close()
            await server.close()
        seen = tuple(client.transport.get_extra_info("sockname")[:2])
        assert plain.message_class == aioice_stun.Class.RESPONSE
        assert plain.attributes["XOR-MAPPED-ADDRESS"] == seen
        assert "FINGERPRINT" not in plain.attributes  # none asked for
        # aioice's parser checked our FINGERPRINT (it raises on a wrong one)
        assert checked.attributes["XOR-MAPPED-ADDRESS"] == seen
        assert "FINGERPRINT" in checked.attributes
        assert receiver.data == []
        assert server.server.counters.answered == 2

    asyncio.run(run())


def test_their_ice_check_gets_420_from_our_server():
    """An ICE connectivity check carries PRIORITY (0x0024) and USE-CANDIDATE (0x0025),
    comprehension-required attributes a plain STUN server does not understand."""

    async def run():
        server = await open_stun(("127.0.0.1", 0))
        client, _ = await _aioice_client()
        request = _binding_request(
            {
                "USERNAME": "remote:local",
                "PRIORITY": 0x6E0001FF,
                "ICE-CONTROLLING": 1,
                "USE-CANDIDATE": None,
            }
        )
        request.add_fingerprint()
        try:
            with pytest.raises(aioice_stun.TransactionFailed) as failed:
                await client.request(request, server.local_address[:2])
        finally:
            await client.close()
            await server.close()
        assert failed.value.response.error_code == 420
        assert server.server.counters.refused == 1
        # aioice does not read UNKNOWN-ATTRIBUTES; what our server put there for this request:
        answer = decode(BindingServer().answer(bytes(request), ("127.0.0.1", 1)))
        assert answer.unknown_attributes == (0x0024, 0x0025)

    asyncio.run(run())


def test_their_request_with_credentials_is_answered_without_them():
    """Our server is unauthenticated: USERNAME and MESSAGE-INTEGRITY are not checked, and the
    answer carries no MESSAGE-INTEGRITY (so a client that insists on one discards it)."""

    async def run():
        server = await open_stun(("127.0.0.1", 0))
        client, _ = await _aioice_client()
        request = _binding_request({"USERNAME": "someone"})
        request.add_message_integrity(KEY)
        try:
            response, _ = await client.request(request, server.local_address[:2])
            insisting = _binding_request({"USERNAME": "someone"})
            with pytest.raises(aioice_stun.TransactionTimeout):
                await client.request(
                    insisting, server.local_address[:2], integrity_key=KEY, retransmissions=0
                )
        finally:
            await client.close()
            await server.close()
        assert response.message_class == aioice_stun.Class.RESPONSE
        assert "MESSAGE-INTEGRITY" not in response.attributes

    asyncio.run(run())


class _AioiceServer(asyncio.DatagramProtocol):
    """A Binding server made of aioice's codec: parses with ``parse_message`` (which checks a
    FINGERPRINT) and answers with an ``aioice.stun.Message`` built as told."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.requests: list[aioice_stun.Message] = []
        self.errors: list[Exception] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            request = aioice_stun.parse_message(data)
        except ValueError as error:
            self.errors.append(error)
            return
        self.requests.append(request)
        response = aioice_stun.Message(
            message_method=aioice_stun.Method.BINDING,
            message_class=aioice_stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        if self.answer == "xor":
            response.attributes["XOR-MAPPED-ADDRESS"] = addr[:2]
            response.attributes["SOFTWARE"] = "aioice"
            response.add_message_integrity(KEY)  # and FINGERPRINT after it
        elif self.answer == "mapped":
            response.attributes["MAPPED-ADDRESS"] = addr[:2]
        else:
            response.message_class = aioice_stun.Class.ERROR
            response.attributes["ERROR-CODE"] = (401, "Unauthorized")
            response.add_fingerprint()
        self.transport.sendto(bytes(response), addr)


@pytest.mark.parametrize("answer", ["xor", "mapped", "error"])
def test_our_client_reads_their_server(answer):
    async def run():
        transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _AioiceServer(answer), local_addr=("127.0.0.1", 0)
        )
        client = await open_stun(("127.0.0.1", 0), serve=False, retransmission=FAST)
        address = transport.get_extra_info("sockname")
        try:
            outcome = await client.query(address, deadline=2.0)
        finally:
            await client.close()
            transport.close()
        assert server.errors == []  # aioice parsed our request and its FINGERPRINT
        assert len(server.requests) == 1
        assert client.client.counters.malformed == 0  # we parsed theirs, FINGERPRINT included
        if answer == "error":
            assert outcome == BindingFailed(address, "error 401 Unauthorized", 401)
        else:
            assert isinstance(outcome, BindingSucceeded), outcome
            assert outcome.mapped_address == tuple(client.local_address[:2])

    asyncio.run(run())


ADDRESSES = st.tuples(st.ip_addresses().map(str), st.integers(0, 0xFFFF))
TRANSACTION_IDS = st.binary(min_size=12, max_size=12)
SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(ADDRESSES, TRANSACTION_IDS, st.booleans())
def test_they_read_what_we_write(address, transaction_id, integrity):
    response = binding_success(binding_request(transaction_id), address)
    data = encode(response, integrity_key=KEY if integrity else None)
    theirs = aioice_stun.parse_message(data)  # raises on a wrong FINGERPRINT
    assert theirs.message_class == aioice_stun.Class.RESPONSE
    assert theirs.transaction_id == transaction_id
    assert theirs.attributes["XOR-MAPPED-ADDRESS"] == transport_address(address)
    assert theirs.check_message_integrity(KEY) == integrity


@SETTINGS
@given(ADDRESSES, TRANSACTION_IDS, st.booleans(), st.text(max_size=30))
def test_we_read_what_they_write(address, transaction_id, integrity, software):
    theirs = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING,
        message_class=aioice_stun.Class.RESPONSE,
        transaction_id=transaction_id,
        attributes={"SOFTWARE": software, "XOR-MAPPED-ADDRESS": transport_address(address)},
    )
    if integrity:
        theirs.add_message_integrity(KEY)
    else:
        theirs.add_fingerprint()
    ours = decode(bytes(theirs))
    assert ours.message_class == MessageClass.SUCCESS
    assert ours.transaction_id == transaction_id
    assert ours.mapped_address == transport_address(address)
    assert ours.software == software
    assert ours.fingerprinted
    assert ours.integrity_valid(KEY) == integrity


def test_they_read_our_420():
    request = binding_request()
    theirs = aioice_stun.parse_message(encode(binding_error(request, 420, "", [0x0024, 0x0025])))
    assert theirs.message_class == aioice_stun.Class.ERROR
    assert theirs.transaction_id == request.transaction_id
    assert theirs.attributes["ERROR-CODE"] == (420, "")
