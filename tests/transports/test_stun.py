"""STUN for UDP discovery (transports/stun.py, stun_binding.py, stun_udp.py).

The codec against RFC 5769's test vectors and hypothesis; the server's answers and bounds and
the client's retransmission schedule on a manual clock (sans-I/O); then client and server on
real loopback sockets, with loss, silence, garbage and a port shared with QUIC. Interoperation
with another STUN implementation is in test_stun_interop.py.
"""

from __future__ import annotations

import asyncio
import binascii
import itertools
import socket
import struct
from typing import Any

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.transports.stun import (
    BINDING,
    ERROR_CODE,
    FINGERPRINT,
    MAGIC_COOKIE,
    MAPPED_ADDRESS,
    MESSAGE_INTEGRITY,
    NAMES,
    SOFTWARE,
    UNKNOWN_ATTRIBUTES,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    Attribute,
    Message,
    MessageClass,
    StunError,
    address_value,
    decode,
    encode,
    is_stun,
    message_class_of,
    transport_address,
)
from l2_session.transports.stun_binding import (
    MAX_GROWTH,
    MAX_OUTSTANDING,
    MAX_REQUEST_SIZE,
    BindingClient,
    BindingFailed,
    BindingServer,
    BindingSucceeded,
    BindingTimedOut,
    Retransmission,
    TooManyTransactions,
    binding_error,
    binding_request,
    binding_success,
)
from l2_session.transports.stun_udp import open_stun

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- RFC 5769 test vectors ----------------------------------------------------------------
# Typed in from RFC 5769 ("Test Vectors for STUN"), §2.1-2.3, line for line as the RFC lays
# them out. Its padding bytes are spaces (0x20), to show that padding may hold anything.

RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_TRANSACTION_ID = bytes.fromhex("b7e7a701 bc34d686 fa87dfae")

RFC5769_SAMPLE_REQUEST = bytes.fromhex(  # §2.1
    """
    00 01 00 58
    21 12 a4 42
    b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
    80 22 00 10
    53 54 55 4e  20 74 65 73  74 20 63 6c  69 65 6e 74
    00 24 00 04
    6e 00 01 ff
    80 29 00 08
    93 2f f9 b1  51 26 3b 36
    00 06 00 09
    65 76 74 6a  3a 68 36 76  59 20 20 20
    00 08 00 14
    9a ea a7 0c  bf d8 cb 56  78 1e f2 b5  b2 d3 f2 49  c1 b5 71 a2
    80 28 00 04
    e5 7a 3b cf
    """
)

RFC5769_IPV4_RESPONSE = bytes.fromhex(  # §2.2
    """
    01 01 00 3c
    21 12 a4 42
    b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
    80 22 00 0b
    74 65 73 74  20 76 65 63  74 6f 72 20
    00 20 00 08
    00 01 a1 47
    e1 12 a6 43
    00 08 00 14
    2b 91 f5 99  fd 9e 90 c3  8c 74 89 f9  2a f9 ba 53  f0 6b e7 d7
    80 28 00 04
    c0 7d 4c 96
    """
)

RFC5769_IPV6_RESPONSE = bytes.fromhex(  # §2.3
    """
    01 01 00 48
    21 12 a4 42
    b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
    80 22 00 0b
    74 65 73 74  20 76 65 63  74 6f 72 20
    00 20 00 14
    00 02 a1 47
    01 13 a9 fa  a5 d3 f1 79  bc 25 f4 b5  be d2 b9 d9
    00 08 00 14
    a3 82 95 4e  4b e6 7b f1  17 84 c9 7c  82 92 c2 75  bf e3 ed 41
    80 28 00 04
    c8 fb 0b 4c
    """
)

VECTORS = [RFC5769_SAMPLE_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE]


def test_rfc5769_sample_request():
    m = decode(RFC5769_SAMPLE_REQUEST)
    assert (m.method, m.message_class) == (BINDING, MessageClass.REQUEST)
    assert m.transaction_id == RFC5769_TRANSACTION_ID
    assert m.software == "STUN test client"
    assert m.first(USERNAME) == b"evtj:h6vY"
    assert m.first(0x0024) == bytes.fromhex("6e0001ff")  # PRIORITY (ICE)
    assert m.first(0x8029) == bytes.fromhex("932ff9b151263b36")  # ICE-CONTROLLED
    assert m.fingerprinted
    assert m.integrity_valid(RFC5769_PASSWORD)
    assert not m.integrity_valid(b"VOkJxbRl1RmTxUk/WvJxBu")
    # PRIORITY is an ICE attribute below 0x8000: a plain STUN server must refuse it (420).
    assert m.not_understood() == (0x0024,)


@pytest.mark.parametrize(
    ("vector", "mapped"),
    [
        (RFC5769_IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (RFC5769_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
    ids=["ipv4", "ipv6"],
)
def test_rfc5769_responses(vector, mapped):
    m = decode(vector)
    assert (m.method, m.message_class) == (BINDING, MessageClass.SUCCESS)
    assert m.transaction_id == RFC5769_TRANSACTION_ID
    assert m.software == "test vector"
    assert m.mapped_address == mapped
    assert m.fingerprinted
    assert m.integrity_valid(RFC5769_PASSWORD)
    assert not m.integrity_valid(b"")
    # The XOR is this module's: the value it makes for the address is the RFC's, byte for byte.
    assert address_value(mapped, xor_with=RFC5769_TRANSACTION_ID) == m.first(XOR_MAPPED_ADDRESS)


@pytest.mark.parametrize("vector", VECTORS, ids=["request", "ipv4", "ipv6"])
def test_rfc5769_fingerprint_is_checked(vector):
    for at in (0, 9, 25, len(vector) - 9, len(vector) - 1):  # header, attributes, the CRC itself
        tampered = bytearray(vector)
        tampered[at] ^= 0x01
        with pytest.raises(StunError):
            decode(bytes(tampered))


@pytest.mark.parametrize("vector", VECTORS, ids=["request", "ipv4", "ipv6"])
def test_rfc5769_integrity_is_checked(vector):
    """Without FINGERPRINT in the way, a changed byte before MESSAGE-INTEGRITY fails the HMAC."""
    unfingerprinted = _without_fingerprint(vector)
    assert decode(unfingerprinted).integrity_valid(RFC5769_PASSWORD)
    tampered = bytearray(unfingerprinted)
    tampered[26] ^= 0x01  # inside the first attribute's value (SOFTWARE)
    m = decode(bytes(tampered))
    assert not m.fingerprinted
    assert not m.integrity_valid(RFC5769_PASSWORD)


@pytest.mark.parametrize("vector", VECTORS, ids=["request", "ipv4", "ipv6"])
def test_rfc5769_reencoded_with_the_password_verifies(vector):
    """Our MESSAGE-INTEGRITY over our (zero-padded) bytes, under the RFC's password."""
    m = decode(vector)
    unsigned = Message(m.method, m.message_class, m.transaction_id, m.attributes[:-1])
    again = decode(encode(unsigned, integrity_key=RFC5769_PASSWORD))
    assert again.integrity_valid(RFC5769_PASSWORD)
    assert again.attributes[:-1] == unsigned.attributes
    assert again.mapped_address == m.mapped_address


def _without_fingerprint(vector: bytes) -> bytes:
    body = vector[20:-8]
    return vector[:2] + struct.pack(">H", len(body)) + vector[4:20] + body


# --- the codec ----------------------------------------------------------------------------


def _header(message_type: int, body: bytes, transaction_id: bytes = bytes(12)) -> bytes:
    return struct.pack(">HHI12s", message_type, len(body), MAGIC_COOKIE, transaction_id) + body


def _attribute(attribute_type: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    return struct.pack(">HH", attribute_type, len(value)) + value + pad * (-len(value) % 4)


def _crc_fingerprint(message: bytes) -> bytes:
    """FINGERPRINT for ``message`` (no FINGERPRINT yet), computed here apart from the codec."""
    length = int.from_bytes(message[2:4], "big") + 8
    crc = binascii.crc32(message[:2] + length.to_bytes(2, "big") + message[4:]) ^ 0x5354554E
    return _attribute(FINGERPRINT, crc.to_bytes(4, "big"))


def _append(message: bytes, attributes: bytes) -> bytes:
    """``message`` with ``attributes`` after its last, the length field made to match."""
    length = len(message) - 20 + len(attributes)
    return message[:2] + length.to_bytes(2, "big") + message[4:] + attributes


def _with_fingerprint(message: bytes) -> bytes:
    return _append(message, _crc_fingerprint(message))


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"", "shorter than the 20-byte"),
        (_header(0x0001, b"")[:19], "shorter than the 20-byte"),
        (b"\x40" + _header(0x0001, b"")[1:], "first two bits"),
        (_header(0x0001, b"")[:4] + b"\x21\x12\xa4\x43" + bytes(12), "magic cookie"),
        (_header(0x0001, b"") + bytes(4), "length field 0"),
        (_header(0x0001, b"\x80\x22\x00\x01\x41"), "multiple of 4"),
        (_header(0x0001, struct.pack(">HH", SOFTWARE, 9) + b"abcd"), "run past"),
        (
            _append(_with_fingerprint(_header(0x0001, b"")), _attribute(SOFTWARE, b"x")),
            "follows FINGERPRINT",
        ),
        (_header(0x0001, _attribute(FINGERPRINT, bytes(4))), "does not match"),
        (_header(0x0001, _attribute(FINGERPRINT, bytes(8))), "FINGERPRINT of 8 bytes"),
        (
            _header(0x0101, _attribute(XOR_MAPPED_ADDRESS, bytes([0, 3]) + bytes(6))),
            "no address family",
        ),
        (
            _header(0x0101, _attribute(XOR_MAPPED_ADDRESS, bytes([0, 1]) + bytes(18))),
            "20 bytes for family 1",
        ),
        (
            _header(0x0101, _attribute(MAPPED_ADDRESS, bytes([0, 2]) + bytes(6))),
            "8 bytes for family 2",
        ),
        (_header(0x0111, _attribute(ERROR_CODE, bytes(3))), "at least 4"),
        (_header(0x0111, _attribute(ERROR_CODE, bytes([0, 0, 7, 0]))), "class 7"),
        (_header(0x0111, _attribute(ERROR_CODE, bytes([0, 0, 4, 100]))), "number 100"),
        (_header(0x0111, _attribute(UNKNOWN_ATTRIBUTES, bytes(3))), "not a list of 16-bit"),
        (_header(0x0001, _attribute(SOFTWARE, b"\xff\xfe")), "not UTF-8"),
        (_header(0x0001, _attribute(SOFTWARE, b"x" * 764)), "at most 763"),
        (_header(0x0001, _attribute(USERNAME, b"x" * 513)), "at most 512"),
        (_header(0x0001, _attribute(MESSAGE_INTEGRITY, bytes(19))), "expected 20"),
    ],
)
def test_decode_refuses_malformed_messages(data, complaint):
    with pytest.raises(StunError, match=complaint):
        decode(data)


def test_attributes_after_message_integrity_are_ignored_but_fingerprint_counts():
    body = _attribute(SOFTWARE, b"kept") + _attribute(MESSAGE_INTEGRITY, bytes(20))
    body += _attribute(SOFTWARE, b"ignored") + _attribute(0x0024, bytes(4))
    m = decode(_with_fingerprint(_header(0x0001, body)))
    assert [a.type for a in m.attributes] == [SOFTWARE, MESSAGE_INTEGRITY]
    assert m.software == "kept"
    assert m.not_understood() == ()
    assert m.fingerprinted


def test_the_first_of_repeated_attributes_counts_and_padding_may_hold_anything():
    body = _attribute(SOFTWARE, b"one", pad=b"\xff") + _attribute(SOFTWARE, b"two")
    m = decode(_header(0x0001, body))
    assert m.software == "one"
    assert encode(m, fingerprint=False) == _header(
        0x0001, _attribute(SOFTWARE, b"one") + _attribute(SOFTWARE, b"two")
    )


def test_message_types_interleave_method_and_class():
    """RFC 5389 §6: M11..M7 C1 M6..M4 C0 M3..M0."""
    cases = {
        (BINDING, MessageClass.REQUEST): 0x0001,
        (BINDING, MessageClass.INDICATION): 0x0011,
        (BINDING, MessageClass.SUCCESS): 0x0101,
        (BINDING, MessageClass.ERROR): 0x0111,
        (0x003, MessageClass.REQUEST): 0x0003,  # TURN Allocate
        (0xFFF, MessageClass.ERROR): 0x3FFF,
    }
    for (method, message_class), message_type in cases.items():
        data = encode(Message(method, message_class, bytes(12)), fingerprint=False)
        assert int.from_bytes(data[:2], "big") == message_type
        assert message_class_of(data) == message_class
        back = decode(data)
        assert (back.method, back.message_class) == (method, message_class)


def test_encode_refuses_what_decode_would():
    request = binding_request()
    with pytest.raises(StunError, match="computed by encode"):
        encode(
            Message(BINDING, MessageClass.REQUEST, bytes(12), (Attribute(FINGERPRINT, bytes(4)),))
        )
    with pytest.raises(StunError, match="would be ignored"):
        encode(
            Message(
                BINDING,
                MessageClass.REQUEST,
                bytes(12),
                (Attribute(MESSAGE_INTEGRITY, bytes(20)), Attribute(SOFTWARE, b"x")),
            )
        )
    with pytest.raises(StunError, match="already carries"):
        encode(
            Message(
                BINDING, MessageClass.REQUEST, bytes(12), (Attribute(MESSAGE_INTEGRITY, bytes(20)),)
            ),
            integrity_key=b"k",
        )
    with pytest.raises(StunError, match="transaction id of 11"):
        encode(Message(BINDING, MessageClass.REQUEST, bytes(11)))
    with pytest.raises(StunError, match="12 bits"):
        encode(Message(0x1000, MessageClass.REQUEST, bytes(12)))
    with pytest.raises(StunError, match="no address family"):
        encode(
            Message(BINDING, MessageClass.SUCCESS, bytes(12), (Attribute(XOR_MAPPED_ADDRESS, b""),))
        )
    with pytest.raises(StunError, match="outside 300..699"):
        binding_error(request, 200)


def test_mapped_address_falls_back_to_mapped_address_and_reads_errors():
    request = binding_request()
    plain = Message(
        BINDING,
        MessageClass.SUCCESS,
        request.transaction_id,
        (Attribute(MAPPED_ADDRESS, address_value(("192.0.2.7", 3478), xor_with=None)),),
    )
    assert decode(encode(plain)).mapped_address == ("192.0.2.7", 3478)
    error = decode(encode(binding_error(request, 420, "Unknown Attribute", [0x0024, 0x7FFF])))
    assert error.error == (420, "Unknown Attribute")
    assert error.unknown_attributes == (0x0024, 0x7FFF)
    assert decode(encode(binding_request())).mapped_address is None


# --- fuzz -----------------------------------------------------------------------------------

ATTRIBUTE_TYPES = st.sampled_from(
    [*NAMES, 0x0024, 0x0025, 0x8029, 0x802A, 0x7FFF, 0xFFFF]
) | st.integers(0, 0xFFFF)


@st.composite
def framed_datagrams(draw: Any) -> bytes:
    """Datagrams framed as STUN (so that decode gets past the header), with attributes of
    known and unknown types and arbitrary values, a FINGERPRINT that is right or not, and
    sometimes a byte changed or the end cut off."""
    attributes = draw(st.lists(st.tuples(ATTRIBUTE_TYPES, st.binary(max_size=24)), max_size=6))
    body = b"".join(
        _attribute(t, v, pad=draw(st.sampled_from([b"\x00", b"\x20"]))) for t, v in attributes
    )
    data = _header(draw(st.integers(0, 0x3FFF)), body, draw(st.binary(min_size=12, max_size=12)))
    if draw(st.booleans()):
        data = _with_fingerprint(data)
    if draw(st.booleans()) and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


ANY_DATAGRAM = st.binary(max_size=600) | framed_datagrams()


@FUZZ
@given(ANY_DATAGRAM)
def test_decode_raises_nothing_but_stun_error_and_round_trips_what_it_accepts(data):
    try:
        m = decode(data)
    except StunError:
        return
    again = encode(m, fingerprint=m.fingerprinted)
    assert decode(again) == m
    assert decode(again).fingerprinted == m.fingerprinted
    # the accessors of an accepted message never raise either
    _ = m.mapped_address, m.error, m.unknown_attributes, m.software, m.not_understood()


@FUZZ
@given(ANY_DATAGRAM)
def test_is_stun_is_the_header_check_decode_starts_with(data):
    """Every message decode accepts whose first byte is 0-3 (methods below 0x100, Binding
    among them: RFC 7983 §7) is taken for STUN, and nothing else is."""
    try:
        decode(data)
        accepted = True
    except StunError:
        accepted = False
    if is_stun(data):
        assert data[0] < 4
    else:
        assert not (accepted and data[0] < 4)


ADDRESSES = st.tuples(st.ip_addresses().map(str), st.integers(0, 0xFFFF))


@st.composite
def messages(draw: Any) -> Message:
    """Messages with valid values for every attribute type the codec reads, and opaque ones."""
    transaction_id = draw(st.binary(min_size=12, max_size=12))
    text = st.text(max_size=40).map(str.encode)
    values = {
        XOR_MAPPED_ADDRESS: ADDRESSES.map(lambda a: address_value(a, xor_with=transaction_id)),
        MAPPED_ADDRESS: ADDRESSES.map(lambda a: address_value(a, xor_with=None)),
        SOFTWARE: text,
        USERNAME: text,
        ERROR_CODE: st.tuples(st.integers(3, 6), st.integers(0, 99), text).map(
            lambda e: bytes([0, 0, e[0], e[1]]) + e[2]
        ),
        UNKNOWN_ATTRIBUTES: st.lists(st.integers(0, 0xFFFF), max_size=5).map(
            lambda ts: b"".join(struct.pack(">H", t) for t in ts)
        ),
        0x0024: st.binary(min_size=4, max_size=4),
        0x7F00: st.binary(max_size=30),
        0xC001: st.binary(max_size=30),
    }
    kinds = draw(st.lists(st.sampled_from(list(values)), max_size=6))
    attributes = tuple(Attribute(kind, draw(values[kind])) for kind in kinds)
    return Message(
        draw(st.integers(0, 0xFFF)), draw(st.sampled_from(MessageClass)), transaction_id, attributes
    )


@FUZZ
@given(messages(), st.booleans(), st.none() | st.binary(min_size=1, max_size=64))
def test_encode_then_decode_gives_the_message_back(message, fingerprint, key):
    m = decode(encode(message, fingerprint=fingerprint, integrity_key=key))
    assert m.fingerprinted == fingerprint
    if key is None:
        assert m == message
    else:
        assert m.attributes[:-1] == message.attributes
        assert m.integrity_valid(key)
        assert not m.integrity_valid(key + b"x")


@FUZZ
@given(ADDRESSES, st.binary(min_size=12, max_size=12))
def test_xor_mapped_address_round_trips_every_address(address, transaction_id):
    response = binding_success(binding_request(transaction_id), address)
    assert decode(encode(response)).mapped_address == transport_address(address)


# --- demultiplexing on a port shared with QUIC --------------------------------------------


def _quic_initial() -> bytes:
    """A real QUIC client Initial from aioquic."""
    connection = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=["l2s/1"])
    )
    connection.connect(("127.0.0.1", 4433), now=0.0)
    [(datagram, _)] = connection.datagrams_to_send(now=0.0)
    return datagram


def test_is_stun_tells_stun_from_quic():
    for vector in VECTORS:
        assert is_stun(vector)
    initial = _quic_initial()
    assert initial[0] & 0xC0 == 0xC0  # a long header
    assert not is_stun(initial)
    for first in (0x40, 0x5F, 0x7F):  # short headers: the fixed bit 0x40 set
        assert not is_stun(bytes([first]) + RFC5769_SAMPLE_REQUEST[1:])
    # first byte 0-3 but not STUN: no cookie, or a length that does not match
    assert not is_stun(bytes(20))
    assert not is_stun(RFC5769_SAMPLE_REQUEST + bytes(4))
    assert not is_stun(RFC5769_SAMPLE_REQUEST[:-4])


def test_aioquic_drops_a_stun_datagram_rather_than_misreading_it():
    """Were a STUN datagram to reach aioquic, its header parser refuses it (fixed bit 0)."""
    for vector in VECTORS:
        with pytest.raises(ValueError, match="fixed bit"):
            pull_quic_header(Buffer(data=vector), host_cid_length=8)


# --- the server, sans-I/O -----------------------------------------------------------------

CLIENT = ("192.0.2.10", 50000)


def test_the_server_answers_a_binding_request_with_the_source_address():
    server = BindingServer()
    request = binding_request()
    answer = decode(server.answer(encode(request, fingerprint=False), CLIENT))
    assert (answer.method, answer.message_class) == (BINDING, MessageClass.SUCCESS)
    assert answer.transaction_id == request.transaction_id
    assert answer.mapped_address == CLIENT
    assert [a.type for a in answer.attributes] == [XOR_MAPPED_ADDRESS]  # no SOFTWARE, no MI
    assert not answer.fingerprinted  # the request had none
    assert decode(server.answer(encode(request), CLIENT)).fingerprinted
    assert server.counters.answered == 2


@pytest.mark.parametrize(
    ("source", "seen"),
    [
        (("2001:db8::5", 6000, 0, 0), ("2001:db8::5", 6000)),
        (("fe80::1%eth0", 6000, 0, 2), ("fe80::1", 6000)),
        (("::ffff:192.0.2.10", 7000, 0, 0), ("192.0.2.10", 7000)),  # a dual-stack socket
    ],
)
def test_the_server_reports_addresses_as_stun_carries_them(source, seen):
    answer = decode(BindingServer().answer(encode(binding_request()), source))
    assert answer.mapped_address == seen


def test_the_server_refuses_unknown_required_attributes_with_420():
    server = BindingServer()
    answer = decode(server.answer(RFC5769_SAMPLE_REQUEST, CLIENT))
    assert answer.message_class == MessageClass.ERROR
    assert answer.transaction_id == RFC5769_TRANSACTION_ID
    assert answer.error == (420, "")
    assert answer.unknown_attributes == (0x0024,)
    assert answer.fingerprinted
    assert server.counters.refused == 1


def test_the_server_answers_a_request_with_credentials_without_checking_them():
    """Unauthenticated binding: USERNAME and MESSAGE-INTEGRITY are understood, not used."""
    request = Message(
        BINDING, MessageClass.REQUEST, bytes(range(12)), (Attribute(USERNAME, b"someone"),)
    )
    answer = decode(BindingServer().answer(encode(request, integrity_key=b"any key"), CLIENT))
    assert answer.message_class == MessageClass.SUCCESS
    assert answer.first(MESSAGE_INTEGRITY) is None


def test_the_server_keeps_nothing_per_request():
    server = BindingServer()
    request = encode(binding_request())
    assert server.answer(request, CLIENT) == server.answer(request, CLIENT)  # a retransmission
    assert vars(server).keys() == {"max_request_size", "counters"}


def test_the_server_drops_and_counts_everything_but_well_formed_binding_requests():
    server = BindingServer()
    request = binding_request()
    dropped = {
        "oversized": encode(
            Message(
                BINDING,
                MessageClass.REQUEST,
                bytes(12),
                (Attribute(0xC001, bytes(MAX_REQUEST_SIZE)),),
            )
        ),
        "not_stun": _quic_initial()[:500],
        "malformed": RFC5769_SAMPLE_REQUEST[:-4] + b"\x00\x00\x00\x00",  # wrong FINGERPRINT
        "not_binding_request": encode(binding_success(request, CLIENT)),
    }
    for what, datagram in dropped.items():
        assert server.answer(datagram, CLIENT) is None, what
        assert getattr(server.counters, what) == 1, what
    for datagram in (
        encode(Message(BINDING, MessageClass.INDICATION, bytes(12))),
        encode(Message(0x003, MessageClass.REQUEST, bytes(12))),  # TURN Allocate
        encode(binding_error(request, 400)),
    ):
        assert server.answer(datagram, CLIENT) is None
    assert server.counters.not_binding_request == 4
    assert server.counters.dropped == 7
    assert server.counters.answered == server.counters.refused == 0


@FUZZ
@given(ANY_DATAGRAM, st.sampled_from([CLIENT, ("2001:db8::1", 1, 0, 0)]))
def test_the_server_never_raises_and_never_answers_bigger_than_the_bound(data, source):
    server = BindingServer()
    answer = server.answer(data, source)
    if answer is not None:
        assert len(answer) <= len(data) + MAX_GROWTH
        assert decode(answer).transaction_id == data[8:20]
    assert server.counters.withheld == 0


def test_the_bound_is_met_by_the_smallest_requests():
    """The tightest cases: a bare 20-byte request from IPv6, one unknown attribute."""
    bare = encode(binding_request(), fingerprint=False)
    assert len(BindingServer().answer(bare, ("2001:db8::1", 1, 0, 0))) == len(bare) + MAX_GROWTH
    one_unknown = encode(
        Message(BINDING, MessageClass.REQUEST, bytes(12), (Attribute(0x7FFF, b""),)),
        fingerprint=False,
    )
    assert len(BindingServer().answer(one_unknown, CLIENT)) <= len(one_unknown) + MAX_GROWTH


# --- the client, sans-I/O, on a manual clock ------------------------------------------------

SERVER = ("192.0.2.1", 3478)


def _run_to_the_end(client: BindingClient, step_ms: int = 1) -> list[float]:
    """Poll every ``step_ms`` from 0 until no transaction is left; the times requests went out."""
    sent: list[float] = []
    ms = 0
    while client.outstanding:
        now = ms / 1000
        sent += [now for _ in client.poll(now)]
        ms += step_ms
    return sent


def test_retransmission_follows_rfc_5389():
    """§7.2.1: requests at 0, 500, 1500, 3500, 7500, 15500, 31500 ms; timeout at 39500 ms."""
    policy = Retransmission()
    assert policy.send_times() == (0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5)
    assert policy.gives_up_after == 39.5
    client = BindingClient()
    transaction_id = client.start(SERVER, now=0.0)
    assert client.next_timer() == 0.0
    assert _run_to_the_end(client) == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert client.pop_outcomes() == [(transaction_id, BindingTimedOut(SERVER, 7, 39.5))]
    assert client.pop_outcomes() == []


def test_retransmission_wakes_exactly_when_due():
    client = BindingClient()
    client.start(SERVER, now=100.0)
    wakes, sent = [], []
    while (wake := client.next_timer()) is not None:
        wakes.append(wake - 100)
        sent += [wake - 100 for _ in client.poll(wake)]
    assert wakes == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 39.5]
    assert sent == wakes[:-1]


def test_retransmission_is_configurable_and_resends_the_same_bytes():
    client = BindingClient(Retransmission(rto=0.1, rc=3, rm=4))
    transaction_id = client.start(SERVER, now=0.0)
    requests, sent_at = [], []
    while (wake := client.next_timer()) is not None:
        due = client.poll(wake)
        requests += due
        sent_at += [wake for _ in due]
    assert sent_at == pytest.approx([0.0, 0.1, 0.3])
    assert {r for r, _ in requests} == {requests[0][0]}
    assert decode(requests[0][0]).transaction_id == transaction_id
    [(_, outcome)] = client.pop_outcomes()
    assert isinstance(outcome, BindingTimedOut)
    assert outcome.waited == pytest.approx(0.3 + 4 * 0.1)


def test_a_deadline_ends_the_transaction_early():
    client = BindingClient()
    client.start(SERVER, now=0.0, deadline=2.0)
    assert _run_to_the_end(client) == [0.0, 0.5, 1.5]
    [(_, outcome)] = client.pop_outcomes()
    assert outcome == BindingTimedOut(SERVER, 3, 2.0)


@pytest.mark.parametrize("bad", [{"rto": 0}, {"rto": float("inf")}, {"rc": 0}, {"rm": 0}])
def test_retransmission_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        Retransmission(**bad)


def _answer_to(request: bytes) -> bytes:
    return BindingServer().answer(request, CLIENT)


def test_the_client_matches_responses_by_transaction_id_and_source():
    client = BindingClient()
    transaction_id = client.start(SERVER, now=0.0)
    [(request, _)] = client.poll(0.0)
    other = encode(binding_success(binding_request(), CLIENT))
    assert not client.receive(other, SERVER, 0.1)  # somebody else's transaction
    assert not client.receive(_answer_to(request), ("192.0.2.99", 3478), 0.1)  # from elsewhere
    assert not client.receive(request, SERVER, 0.1)  # a request, not a response
    assert not client.receive(b"\x00" * 3, SERVER, 0.1)  # not STUN
    answer = _answer_to(request)
    assert not client.receive(answer[:-1] + bytes([answer[-1] ^ 1]), SERVER, 0.1)  # bad FINGERPRINT
    assert client.counters.unmatched == 2
    assert (client.counters.not_response, client.counters.not_stun, client.counters.malformed) == (
        1,
        1,
        1,
    )
    assert client.outstanding == 1
    assert client.receive(_answer_to(request), ("::ffff:192.0.2.1", 3478, 0, 0), 0.25)
    assert client.pop_outcomes() == [(transaction_id, BindingSucceeded(SERVER, CLIENT, 0.25, 1))]
    assert not client.receive(
        _answer_to(request), SERVER, 0.3
    )  # a duplicate: the transaction ended
    assert client.counters.unmatched == 3
    assert client.next_timer() is None


def test_the_client_reports_errors_and_unusable_responses():
    cases = [
        (
            lambda r: binding_error(r, 401, "Unauthorized"),
            BindingFailed(SERVER, "error 401 Unauthorized", 401),
        ),
        (
            lambda r: Message(BINDING, MessageClass.ERROR, r.transaction_id),
            BindingFailed(SERVER, "error response without ERROR-CODE"),
        ),
        (
            lambda r: Message(BINDING, MessageClass.SUCCESS, r.transaction_id),
            BindingFailed(SERVER, "success response without a mapped address"),
        ),
        (
            lambda r: Message(
                BINDING,
                MessageClass.SUCCESS,
                r.transaction_id,
                (*binding_success(r, CLIENT).attributes, Attribute(0x7ABC, b"")),
            ),
            BindingFailed(SERVER, "response with unknown required attributes 0x7ABC"),
        ),
    ]
    for respond, expected in cases:
        client = BindingClient()
        client.start(SERVER, now=0.0)
        [(request, _)] = client.poll(0.0)
        assert client.receive(encode(respond(decode(request))), SERVER, 0.1)
        [(_, outcome)] = client.pop_outcomes()
        assert outcome == expected


def test_the_client_limits_outstanding_transactions_per_server():
    client = BindingClient()
    open_ones = [client.start(SERVER, now=0.0) for _ in range(MAX_OUTSTANDING)]
    with pytest.raises(TooManyTransactions, match="10 transactions already open"):
        client.start(SERVER, now=0.0)
    client.start(("192.0.2.2", 3478), now=0.0)  # another server
    client.cancel(open_ones[0])
    client.start(SERVER, now=0.0)
    assert client.outstanding == MAX_OUTSTANDING + 1


def test_the_client_sends_software_when_told():
    client = BindingClient(software="l2-session")
    client.start(SERVER, now=0.0)
    [(request, _)] = client.poll(0.0)
    assert decode(request).software == "l2-session"
    assert decode(request).fingerprinted


# --- on real sockets ------------------------------------------------------------------------

FAST = Retransmission(rto=0.05, rc=7, rm=16)


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1",
            marks=pytest.mark.skipif(
                not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this host"
            ),
        ),
    ],
)
def test_client_and_server_on_loopback(host):
    async def run():
        server = await open_stun((host, 0))
        client = await open_stun((host, 0), serve=False, retransmission=FAST)
        try:
            outcome = await client.query(server.local_address, deadline=2.0)
            assert isinstance(outcome, BindingSucceeded), outcome
            assert outcome.mapped_address == tuple(client.local_address[:2])
            assert outcome.requests_sent == 1
            assert await client.is_alive(server.local_address, deadline=2.0)
            assert server.server.counters.answered == 2
        finally:
            await client.close()
            await server.close()

    asyncio.run(run())


class _Recorder(asyncio.DatagramProtocol):
    """A UDP socket that records what comes in and answers Binding requests after the first
    ``drop`` (None: never)."""

    def __init__(self, drop: int | None = None) -> None:
        self.drop = drop
        self.received: list[tuple[float, bytes]] = []
        self.server = BindingServer()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((asyncio.get_running_loop().time(), data))
        if self.drop is not None and len(self.received) > self.drop:
            self.transport.sendto(self.server.answer(data, addr), addr)


async def _recorder(drop: int | None) -> tuple[_Recorder, tuple[str, int]]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Recorder(drop), local_addr=("127.0.0.1", 0)
    )
    return protocol, transport.get_extra_info("sockname")


def test_the_client_retransmits_through_loss():
    async def run():
        lossy, address = await _recorder(drop=2)
        client = await open_stun(("127.0.0.1", 0), serve=False, retransmission=FAST)
        try:
            outcome = await client.query(address, deadline=5.0)
        finally:
            await client.close()
            lossy.transport.close()
        assert isinstance(outcome, BindingSucceeded), outcome
        assert outcome.requests_sent == 3
        assert len({data for _, data in lossy.received}) == 1  # the same request each time
        times = [t for t, _ in lossy.received]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps[0] >= 0.04 and gaps[1] >= 0.09  # 50 ms, then doubled
        assert outcome.elapsed >= 0.14

    asyncio.run(run())


def test_a_silent_peer_is_not_alive_and_the_answer_comes_by_the_deadline():
    async def run():
        silent, address = await _recorder(drop=None)
        client = await open_stun(
            ("127.0.0.1", 0), serve=False, retransmission=Retransmission(rto=0.1)
        )
        loop = asyncio.get_running_loop()
        try:
            started = loop.time()
            assert not await client.is_alive(address, deadline=0.5)
            took = loop.time() - started
        finally:
            await client.close()
            silent.transport.close()
        assert 0.5 <= took < 1.5
        assert len(silent.received) == 3  # at 0, 100 and 300 ms; the next would be at 700
        assert client.client.outstanding == 0

    asyncio.run(run())


def test_garbage_truncated_and_oversized_datagrams_are_dropped_and_counted():
    async def run():
        server = await open_stun(("127.0.0.1", 0))
        valid = encode(binding_request())
        not_stun = [
            b"",
            b"\x00\x01",
            bytes(range(256)),
            valid[:19],  # a truncated header
            valid[:-4],  # truncated: the length field no longer matches
            valid + bytes(4),  # trailing bytes
            _quic_initial(),
        ]
        oversized = [
            encode(
                Message(BINDING, MessageClass.REQUEST, bytes(12), (Attribute(0xC001, bytes(1400)),))
            ),
            encode(
                Message(
                    BINDING, MessageClass.REQUEST, bytes(12), (Attribute(0xC001, bytes(60000)),)
                )
            ),
        ]
        malformed = [valid[:-1] + bytes([valid[-1] ^ 1])]  # a wrong FINGERPRINT
        stray = [encode(binding_success(binding_request(), CLIENT))]  # a response to nobody
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            sender.connect(server.local_address[:2])
            try:
                for datagram in [*not_stun, *oversized, *malformed, *stray, valid]:
                    sender.send(datagram)
                answer = await asyncio.wait_for(loop.sock_recv(sender, 2048), 2.0)
                await asyncio.sleep(0.05)
                with pytest.raises(BlockingIOError):
                    sender.recv(2048)  # nothing else was answered
            finally:
                await server.close()
        assert decode(answer).transaction_id == valid[8:20]
        counters = server.server.counters
        assert server.not_stun == len(not_stun)
        assert (counters.oversized, counters.malformed, counters.answered) == (2, 1, 1)
        assert server.client.counters.unmatched == 1  # the stray response went to the client side

    asyncio.run(run())


def test_one_port_serves_stun_and_hands_the_rest_to_quic():
    """The shared port: STUN answered, everything else (a QUIC Initial) passed on untouched."""

    async def run():
        passed_on: list[bytes] = []
        shared = await open_stun(("127.0.0.1", 0), other=lambda data, addr: passed_on.append(data))
        client = await open_stun(("127.0.0.1", 0), serve=False, retransmission=FAST)
        initial = _quic_initial()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quic_client:
                quic_client.sendto(initial, shared.local_address[:2])
            outcome = await client.query(shared.local_address, deadline=2.0)
        finally:
            await client.close()
            await shared.close()
        assert isinstance(outcome, BindingSucceeded)
        assert passed_on == [initial]
        assert shared.not_stun == 0

    asyncio.run(run())


def test_a_socket_that_does_not_serve_drops_requests():
    async def run():
        quiet = await open_stun(("127.0.0.1", 0), serve=False)
        client = await open_stun(("127.0.0.1", 0), serve=False, retransmission=FAST)
        try:
            assert not await client.is_alive(quiet.local_address, deadline=0.2)
        finally:
            await client.close()
            await quiet.close()
        assert quiet.unserved_requests >= 2

    asyncio.run(run())


def test_closing_the_socket_settles_pending_queries():
    async def run():
        silent, address = await _recorder(drop=None)
        client = await open_stun(("127.0.0.1", 0), serve=False)
        query = asyncio.ensure_future(client.query(address))
        await asyncio.sleep(0.05)
        await client.close()
        outcome = await asyncio.wait_for(query, 1.0)
        silent.transport.close()
        assert outcome == BindingFailed(address, "the socket closed")

    asyncio.run(run())
