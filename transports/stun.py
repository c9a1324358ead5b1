"""STUN messages as bytes (RFC 5389, with RFC 8489's refinements): the codec for UDP discovery.

One message on the wire (RFC 5389 §6), all integers big-endian::

    0 0 | type (14 bits) | length u16 (of the attributes, a multiple of 4)
    magic cookie u32 = 0x2112A442
    transaction id (12 bytes)
    attributes: type u16 | length u16 (of the value, before padding) | value | pad to 4 bytes

The 14 type bits interleave a 12-bit method and a 2-bit class: ``M11..M7 C1 M6..M4 C0 M3..M0``.
Binding (method 1) is the only method this project uses: a request answered by a success
response carrying XOR-MAPPED-ADDRESS, the source address the server saw, XORed with the cookie
(and, for IPv6, the transaction id) so that NATs rewriting addresses in payloads leave it alone.

``decode`` is strict: the header's bits, cookie and length, every attribute's bounds, the value
of every attribute this module understands (an address's family and length, an error code's
class and number, UTF-8 text within its limit) and FINGERPRINT (a CRC-32, which must come last)
are checked, and any fault raises ``StunError`` naming it; nothing else escapes ``decode``.
Attributes after MESSAGE-INTEGRITY are dropped, except the ones RFC 8489 §14.5-14.6 lets follow
it, since receivers must ignore them. Padding bytes may hold anything (RFC 5769 pads with
spaces) and are not kept. MESSAGE-INTEGRITY (HMAC-SHA1 under a short-term key) is verified on
demand by ``Message.integrity_valid``, over the bytes it covered as received.

``is_stun`` tells a STUN datagram from a QUIC packet on a shared port (docs/transports.md,
"UDP discovery (STUN)").
"""

from __future__ import annotations

import binascii
import enum
import hmac
import ipaddress
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct(">HHI12s")
HEADER_SIZE = 20
ATTRIBUTE_HEADER = struct.Struct(">HH")
MAGIC_COOKIE = 0x2112A442
COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
TRANSACTION_ID_SIZE = 12
FINGERPRINT_XOR = 0x5354554E  # "STUN" in ASCII (RFC 5389 §15.5)
MAX_TEXT_BYTES = 763  # SOFTWARE, REALM, NONCE, reason phrases: < 128 characters (§15.6-15.10)
MAX_USERNAME_BYTES = 512  # "less than 513 bytes" (§15.3)

BINDING = 0x001


class MessageClass(enum.IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


# Attribute types (RFC 5389 §18.2, RFC 8489 §18.3). Types below 0x8000 are
# comprehension-required: a receiver that does not understand one must not act on the message.
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
PASSWORD_ALGORITHMS = 0x8002
ALTERNATE_DOMAIN = 0x8003
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028

NAMES = {
    MAPPED_ADDRESS: "MAPPED-ADDRESS",
    USERNAME: "USERNAME",
    MESSAGE_INTEGRITY: "MESSAGE-INTEGRITY",
    ERROR_CODE: "ERROR-CODE",
    UNKNOWN_ATTRIBUTES: "UNKNOWN-ATTRIBUTES",
    REALM: "REALM",
    NONCE: "NONCE",
    MESSAGE_INTEGRITY_SHA256: "MESSAGE-INTEGRITY-SHA256",
    PASSWORD_ALGORITHM: "PASSWORD-ALGORITHM",
    USERHASH: "USERHASH",
    XOR_MAPPED_ADDRESS: "XOR-MAPPED-ADDRESS",
    PASSWORD_ALGORITHMS: "PASSWORD-ALGORITHMS",
    ALTERNATE_DOMAIN: "ALTERNATE-DOMAIN",
    SOFTWARE: "SOFTWARE",
    ALTERNATE_SERVER: "ALTERNATE-SERVER",
    FINGERPRINT: "FINGERPRINT",
}

# What a message may carry without being refused for an unknown comprehension-required
# attribute (420). The authentication attributes are understood and deliberately unused: this
# project's server answers without credentials (docs/transports.md), so a request that
# carries them is answered like one without them.
UNDERSTOOD = frozenset(NAMES)

_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02
_INTEGRITY_ATTRIBUTES = (MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256)


class StunError(ValueError):
    """Bytes that are not a well-formed STUN message, or a message that cannot be encoded."""


Address = tuple[str, int]
"""A transport address: an IP address in its canonical text form and a port."""


@dataclass(frozen=True)
class Attribute:
    type: int
    value: bytes

    @property
    def name(self) -> str:
        return NAMES.get(self.type, f"0x{self.type:04X}")

    @property
    def comprehension_required(self) -> bool:
        return self.type < 0x8000


@dataclass(frozen=True)
class Message:
    """A STUN message: its method, class, transaction id and attributes in order (values as on
    the wire, XORed addresses still XORed). FINGERPRINT is not among the attributes: it
    belongs to the bytes, so ``decode`` checks it and ``encode`` computes it."""

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()
    fingerprinted: bool = field(default=False, compare=False)
    """Whether the bytes this was decoded from carried a FINGERPRINT (it was valid)."""
    integrity_input: bytes | None = field(default=None, compare=False, repr=False)
    """The bytes MESSAGE-INTEGRITY covered as received, the header's length adjusted."""

    def first(self, attribute_type: int) -> bytes | None:
        """The value of the first attribute of this type (later ones carry no meaning)."""
        return next((a.value for a in self.attributes if a.type == attribute_type), None)

    @property
    def mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from a server that sends only that
        (RFC 5389 §7.3.3, for servers of RFC 3489's era)."""
        value = self.first(XOR_MAPPED_ADDRESS)
        if value is not None:
            return _address(value, xor_with=self.transaction_id)
        value = self.first(MAPPED_ADDRESS)
        return None if value is None else _address(value, xor_with=None)

    @property
    def error(self) -> tuple[int, str] | None:
        """ERROR-CODE as (code, reason phrase)."""
        value = self.first(ERROR_CODE)
        if value is None:
            return None
        return (value[2] & 0x07) * 100 + value[3], value[4:].decode()

    @property
    def unknown_attributes(self) -> tuple[int, ...]:
        """UNKNOWN-ATTRIBUTES: the types a 420 answer says were not understood."""
        value = self.first(UNKNOWN_ATTRIBUTES) or b""
        return tuple(int.from_bytes(value[i : i + 2], "big") for i in range(0, len(value), 2))

    @property
    def software(self) -> str | None:
        value = self.first(SOFTWARE)
        return None if value is None else value.decode()

    def not_understood(self, understood: Iterable[int] = UNDERSTOOD) -> tuple[int, ...]:
        """The comprehension-required attribute types not in ``understood``, each once."""
        known = set(understood)
        found = (a.type for a in self.attributes if a.comprehension_required)
        return tuple(dict.fromkeys(t for t in found if t not in known))

    def integrity_valid(self, key: bytes) -> bool:
        """Whether MESSAGE-INTEGRITY is the HMAC-SHA1 under ``key`` of the bytes it covered.
        For short-term credentials the key is the password (after OpaqueString, RFC 8489
        §9.1.1: the caller prepares it). False when there is none to check."""
        value = self.first(MESSAGE_INTEGRITY)
        if value is None or self.integrity_input is None:
            return False
        return hmac.compare_digest(value, hmac.new(key, self.integrity_input, "sha1").digest())


def new_transaction_id() -> bytes:
    """96 random bits: unguessable, so that an off-path host cannot forge an answer."""
    return os.urandom(TRANSACTION_ID_SIZE)


def transport_address(address: Sequence[Any]) -> Address:
    """An address as a socket reports it (IPv6 with flow info and scope, or an IPv4 address
    mapped into IPv6 by a dual-stack socket) as STUN carries it: the IPv4 address where there
    is one, the IPv6 address without its zone otherwise, and the port."""
    ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    port = int(address[1])
    if not 0 <= port <= 0xFFFF:
        raise StunError(f"port {port} outside 0..65535")
    return str(ip), port


def address_value(address: Address, *, xor_with: bytes | None) -> bytes:
    """The value of (XOR-)MAPPED-ADDRESS for ``address`` (RFC 5389 §15.1-15.2): reserved byte,
    family, port, address; XORed with the cookie and transaction id when ``xor_with`` is the
    transaction id."""
    host, port = transport_address(address)
    packed = ipaddress.ip_address(host).packed
    family = _FAMILY_IPV4 if len(packed) == 4 else _FAMILY_IPV6
    port_and_address = port.to_bytes(2, "big") + packed
    if xor_with is not None:
        port_and_address = _xor(port_and_address, xor_with)
    return bytes([0, family]) + port_and_address


def is_stun(datagram: bytes) -> bool:
    """Whether a datagram is framed as STUN: the first byte 0-3 (RFC 7983 §7; a QUIC packet
    has its fixed bit 0x40 set, RFC 9000 §17), the magic cookie, and a length field that
    matches the datagram. It says which side of a shared port gets the datagram; ``decode``
    still checks everything else."""
    return (
        len(datagram) >= HEADER_SIZE
        and datagram[0] < 4
        and datagram[4:8] == COOKIE_BYTES
        and len(datagram) % 4 == 0
        and int.from_bytes(datagram[2:4], "big") == len(datagram) - HEADER_SIZE
    )


def message_class_of(datagram: bytes) -> MessageClass:
    """The class bits of a datagram ``is_stun`` accepted, read from its header alone."""
    return _split_type(int.from_bytes(datagram[0:2], "big"))[1]


def decode(data: bytes) -> Message:
    """The message in ``data``, or ``StunError`` saying what is wrong with it."""
    if len(data) < HEADER_SIZE:
        raise StunError(f"{len(data)} bytes: shorter than the {HEADER_SIZE}-byte STUN header")
    message_type, length, cookie, transaction_id = HEADER.unpack_from(data)
    if message_type >> 14:
        raise StunError(f"message type 0x{message_type:04X}: the first two bits must be 0")
    if cookie != MAGIC_COOKIE:
        raise StunError(f"magic cookie 0x{cookie:08X}, expected 0x{MAGIC_COOKIE:08X}")
    if length % 4 or HEADER_SIZE + length != len(data):
        raise StunError(
            f"length field {length}: the datagram holds {len(data) - HEADER_SIZE} bytes of "
            "attributes, and the length must equal that and be a multiple of 4"
        )
    method, message_class = _split_type(message_type)

    attributes: list[Attribute] = []
    integrity: list[int] = []  # the integrity attributes seen, in order
    integrity_input: bytes | None = None
    fingerprinted = False
    at = HEADER_SIZE
    while at < len(data):
        attribute_type, value_length = ATTRIBUTE_HEADER.unpack_from(data, at)
        attribute = Attribute(attribute_type, data[at + 4 : at + 4 + value_length])
        end = at + 4 + _padded(value_length)
        if end > len(data):
            raise StunError(
                f"{attribute.name} at byte {at}: {value_length} bytes of value run past the "
                f"message's end at byte {len(data)}"
            )
        if fingerprinted:
            raise StunError(
                f"{attribute.name} at byte {at} follows FINGERPRINT, which must be last"
            )
        if attribute_type == FINGERPRINT:
            _check_value(attribute)
            expected = _fingerprint(data[:at])
            if attribute.value != expected:
                raise StunError(
                    f"FINGERPRINT {attribute.value.hex()} does not match the message "
                    f"(CRC-32 XOR 0x{FINGERPRINT_XOR:08X} is {expected.hex()})"
                )
            fingerprinted = True
        elif _follows_integrity(integrity, attribute_type):
            _check_value(attribute)
            attributes.append(attribute)
            if attribute_type in _INTEGRITY_ATTRIBUTES:
                integrity.append(attribute_type)
            if attribute_type == MESSAGE_INTEGRITY:
                integrity_input = _with_length(data[:at], at - HEADER_SIZE + 4 + value_length)
        # else: after MESSAGE-INTEGRITY, ignored (RFC 5389 §15.4)
        at = end
    return Message(
        method, message_class, transaction_id, tuple(attributes), fingerprinted, integrity_input
    )


def encode(
    message: Message, *, integrity_key: bytes | None = None, fingerprint: bool = True
) -> bytes:
    """``message`` as bytes, padding with zeros; with MESSAGE-INTEGRITY under
    ``integrity_key`` appended if given, and FINGERPRINT last if ``fingerprint``.
    ``StunError`` if the message breaks a rule ``decode`` holds it to."""
    if not 0 <= message.method <= 0xFFF:
        raise StunError(f"method 0x{message.method:X} does not fit 12 bits")
    if len(message.transaction_id) != TRANSACTION_ID_SIZE:
        raise StunError(f"transaction id of {len(message.transaction_id)} bytes, expected 12")
    integrity: list[int] = []
    body = bytearray()
    for attribute in message.attributes:
        if not 0 <= attribute.type <= 0xFFFF:
            raise StunError(f"attribute type {attribute.type} does not fit 16 bits")
        if attribute.type == FINGERPRINT:
            raise StunError("FINGERPRINT is computed by encode (fingerprint=True), not given")
        if not _follows_integrity(integrity, attribute.type):
            raise StunError(f"{attribute.name} after {NAMES[integrity[-1]]} would be ignored")
        _check_value(attribute)
        if attribute.type in _INTEGRITY_ATTRIBUTES:
            integrity.append(attribute.type)
        body += _attribute_bytes(attribute)
    header = _header(message, 0)
    if integrity_key is not None:
        if integrity:
            raise StunError("the message already carries an integrity attribute")
        covered = _with_length(header + body, len(body) + 24)
        mac = hmac.new(integrity_key, covered, "sha1").digest()
        body += _attribute_bytes(Attribute(MESSAGE_INTEGRITY, mac))
    if fingerprint:
        body += _attribute_bytes(Attribute(FINGERPRINT, _fingerprint(header + body)))
    if len(body) > 0xFFFF:
        raise StunError(f"{len(body)} bytes of attributes: more than the length field holds")
    return _header(message, len(body)) + bytes(body)


def _header(message: Message, length: int) -> bytes:
    m, c = message.method, message.message_class
    message_type = (
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    )
    return HEADER.pack(message_type, length, MAGIC_COOKIE, message.transaction_id)


def _split_type(message_type: int) -> tuple[int, MessageClass]:
    """The method and class interleaved in a message type's 14 bits (the inverse of _header's)."""
    method = (
        (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    )
    return method, MessageClass(((message_type >> 4) & 0b01) | ((message_type >> 7) & 0b10))


def _attribute_bytes(attribute: Attribute) -> bytes:
    padding = bytes(_padded(len(attribute.value)) - len(attribute.value))
    return ATTRIBUTE_HEADER.pack(attribute.type, len(attribute.value)) + attribute.value + padding


def _padded(n: int) -> int:
    return (n + 3) & ~3


def _with_length(prefix: bytes | bytearray, length: int) -> bytes:
    """``prefix`` (a header and the attributes before an integrity or fingerprint attribute)
    with the header's length set as if the message ended after that attribute (§15.4-15.5)."""
    return bytes(prefix[:2]) + length.to_bytes(2, "big") + bytes(prefix[4:])


def _fingerprint(prefix: bytes | bytearray) -> bytes:
    crc = binascii.crc32(_with_length(prefix, len(prefix) - HEADER_SIZE + 8)) ^ FINGERPRINT_XOR
    return crc.to_bytes(4, "big")


def _follows_integrity(integrity: list[int], attribute_type: int) -> bool:
    """Whether an attribute of this type counts where it stands: after MESSAGE-INTEGRITY only
    MESSAGE-INTEGRITY-SHA256 does, after MESSAGE-INTEGRITY-SHA256 nothing (RFC 8489 §14.5-14.6;
    FINGERPRINT is handled apart)."""
    if not integrity:
        return True
    return integrity == [MESSAGE_INTEGRITY] and attribute_type == MESSAGE_INTEGRITY_SHA256


def _xor(data: bytes, transaction_id: bytes) -> bytes:
    mask = COOKIE_BYTES[:2] + COOKIE_BYTES + transaction_id  # port, then address
    return bytes(a ^ b for a, b in zip(data, mask, strict=False))


def _address(value: bytes, *, xor_with: bytes | None) -> Address:
    port_and_address = value[2:] if xor_with is None else _xor(value[2:], xor_with)
    port = int.from_bytes(port_and_address[:2], "big")
    return str(ipaddress.ip_address(port_and_address[2:])), port


def _check_value(attribute: Attribute) -> None:
    """Raise ``StunError`` if the value of an attribute this module reads is malformed."""
    kind, value, name = attribute.type, attribute.value, attribute.name
    if len(value) > 0xFFFF:
        raise StunError(f"{name}: {len(value)} bytes of value, more than 65535")
    if kind in (MAPPED_ADDRESS, XOR_MAPPED_ADDRESS, ALTERNATE_SERVER):
        expected = {_FAMILY_IPV4: 8, _FAMILY_IPV6: 20}.get(value[1] if len(value) > 1 else -1)
        if expected is None:
            raise StunError(f"{name}: no address family 1 (IPv4) or 2 (IPv6) in {value.hex()}")
        if len(value) != expected:
            raise StunError(
                f"{name}: {len(value)} bytes for family {value[1]}, expected {expected}"
            )
    elif kind == ERROR_CODE:
        if len(value) < 4:
            raise StunError(f"ERROR-CODE of {len(value)} bytes, at least 4 expected")
        if not 3 <= value[2] & 0x07 <= 6 or value[3] > 99:
            raise StunError(f"ERROR-CODE class {value[2] & 0x07} number {value[3]}: not 300..699")
        _check_text(name, value[4:], MAX_TEXT_BYTES)
    elif kind == UNKNOWN_ATTRIBUTES and len(value) % 2:
        raise StunError(f"UNKNOWN-ATTRIBUTES of {len(value)} bytes: not a list of 16-bit types")
    elif kind in (SOFTWARE, REALM, NONCE):
        _check_text(name, value, MAX_TEXT_BYTES)
    elif kind == USERNAME:
        _check_text(name, value, MAX_USERNAME_BYTES)
    elif kind == MESSAGE_INTEGRITY and len(value) != 20:
        raise StunError(f"MESSAGE-INTEGRITY of {len(value)} bytes, expected 20 (HMAC-SHA1)")
    elif kind == MESSAGE_INTEGRITY_SHA256 and (len(value) % 4 or not 16 <= len(value) <= 32):
        raise StunError(f"MESSAGE-INTEGRITY-SHA256 of {len(value)} bytes: 16-32, multiple of 4")
    elif kind == FINGERPRINT and len(value) != 4:
        raise StunError(f"FINGERPRINT of {len(value)} bytes, expected 4")


def _check_text(name: str, value: bytes, limit: int) -> None:
    if len(value) > limit:
        raise StunError(f"{name} of {len(value)} bytes, at most {limit} allowed")
    try:
        value.decode()
    except UnicodeDecodeError as error:
        raise StunError(f"{name} is not UTF-8 ({error})") from None
