"""The Binding method, sans-I/O (RFC 5389 §7): its messages, a server that answers and a client
that asks. Both take datagrams and the time as values and return the datagrams to send;
stun_udp.py puts them on a socket.

``BindingServer`` keeps nothing per request, only counters: a request is answered from its own
bytes and its source address, and a retransmitted request is simply answered again. It answers
well-formed Binding requests only — anything else is dropped and counted — and no answer is
more than ``MAX_GROWTH`` bytes longer than the request that caused it, so a forged source
address makes it reflect no more than it was sent (docs/transports.md, "UDP discovery (STUN)").

``BindingClient`` runs transactions: a request goes out at once and again on the
``Retransmission`` schedule until a response with its transaction id comes from the address it
was sent to, the schedule runs out, or the caller's deadline passes. Responses to nobody's
transaction, from another address or unreadable are dropped and counted.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from l2_session.transports.stun import (
    BINDING,
    ERROR_CODE,
    SOFTWARE,
    UNKNOWN_ATTRIBUTES,
    XOR_MAPPED_ADDRESS,
    Address,
    Attribute,
    Message,
    MessageClass,
    StunError,
    address_value,
    decode,
    encode,
    is_stun,
    new_transaction_id,
    transport_address,
)

MAX_REQUEST_SIZE = 548
"""The largest request answered: a STUN message in the 576 bytes every IPv4 host reassembles
(RFC 1122), less the IP and UDP headers. A Binding request needs 20 to ~100 bytes."""

MAX_GROWTH = 24
"""How many bytes an answer may be longer than its request: one XOR-MAPPED-ADDRESS for IPv6."""

MAX_OUTSTANDING = 10
"""Transactions a client keeps open to one server at a time (RFC 5389 §7.2)."""


def binding_request(transaction_id: bytes | None = None, *, software: str | None = None) -> Message:
    attributes = () if software is None else (Attribute(SOFTWARE, software.encode()),)
    return Message(
        BINDING, MessageClass.REQUEST, transaction_id or new_transaction_id(), attributes
    )


def binding_success(request: Message, source: Address) -> Message:
    """The success answer to ``request``: where its sender was seen from."""
    value = address_value(source, xor_with=request.transaction_id)
    return Message(
        BINDING,
        MessageClass.SUCCESS,
        request.transaction_id,
        (Attribute(XOR_MAPPED_ADDRESS, value),),
    )


def binding_error(
    request: Message, code: int, reason: str = "", unknown: Sequence[int] = ()
) -> Message:
    """An error answer to ``request``; for 420, ``unknown`` lists the attribute types not
    understood (UNKNOWN-ATTRIBUTES, padded as any attribute: RFC 5389 §15.9)."""
    if not 300 <= code <= 699:
        raise StunError(f"error code {code} outside 300..699")
    error = struct.pack(">HBB", 0, code // 100, code % 100) + reason.encode()
    attributes = [Attribute(ERROR_CODE, error)]
    if unknown:
        attributes.append(
            Attribute(UNKNOWN_ATTRIBUTES, b"".join(struct.pack(">H", t) for t in unknown))
        )
    return Message(request.method, MessageClass.ERROR, request.transaction_id, tuple(attributes))


@dataclass(frozen=True)
class Retransmission:
    """When a client sends a request again (RFC 5389 §7.2.1): ``rto`` seconds after the first,
    then after twice the previous interval each time, ``rc`` requests in all; after the last
    it waits ``rm`` × ``rto`` more. The defaults send at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and
    31.5 s and give up at 39.5 s."""

    rto: float = 0.5
    rc: int = 7
    rm: int = 16

    def __post_init__(self) -> None:
        if not (self.rto > 0 and math.isfinite(self.rto)):
            raise ValueError(f"Retransmission.rto = {self.rto!r}: expected seconds > 0")
        for name in ("rc", "rm"):
            if getattr(self, name) < 1:
                raise ValueError(f"Retransmission.{name} = {getattr(self, name)!r}: expected >= 1")

    def send_times(self) -> tuple[float, ...]:
        """When each request goes out, in seconds from the first."""
        return tuple(self.rto * ((1 << k) - 1) for k in range(self.rc))

    @property
    def gives_up_after(self) -> float:
        """Seconds from the first request to the transaction's timeout."""
        return self.rto * ((1 << (self.rc - 1)) - 1) + self.rm * self.rto


@dataclass
class ServerCounters:
    answered: int = 0
    """Success responses sent."""
    refused: int = 0
    """420 (Unknown Attribute) responses sent."""
    oversized: int = 0
    """Datagrams longer than ``max_request_size``, dropped unread."""
    not_stun: int = 0
    """Datagrams not framed as STUN (``is_stun``)."""
    malformed: int = 0
    """Framed as STUN but refused by ``decode``."""
    not_binding_request: int = 0
    """Well-formed STUN, but a response, an indication or another method's request."""
    withheld: int = 0
    """Answers dropped because they would have grown more than ``MAX_GROWTH`` (none expected)."""

    @property
    def dropped(self) -> int:
        return (
            self.oversized
            + self.not_stun
            + self.malformed
            + self.not_binding_request
            + self.withheld
        )


class BindingServer:
    """Answers "what address do you see me at": a Binding request gets a success response with
    XOR-MAPPED-ADDRESS set to its source, or 420 with UNKNOWN-ATTRIBUTES if it carries a
    comprehension-required attribute this implementation does not understand (RFC 5389
    §7.3.1). Unauthenticated: MESSAGE-INTEGRITY in a request is not checked and the answer
    carries none. The answer has a FINGERPRINT when the request had one."""

    def __init__(self, *, max_request_size: int = MAX_REQUEST_SIZE) -> None:
        self.max_request_size = max_request_size
        self.counters = ServerCounters()

    def answer(self, datagram: bytes, source: Sequence[Any]) -> bytes | None:
        """The bytes to send back to ``source`` (the address as the socket reported it), or
        None: the datagram is dropped."""
        if len(datagram) > self.max_request_size:
            self.counters.oversized += 1
            return None
        if not is_stun(datagram):
            self.counters.not_stun += 1
            return None
        try:
            request = decode(datagram)
        except StunError:
            self.counters.malformed += 1
            return None
        if request.method != BINDING or request.message_class != MessageClass.REQUEST:
            self.counters.not_binding_request += 1
            return None
        unknown = request.not_understood()
        if unknown:
            # No reason phrase: the code and the list say it all, and a phrase would be bytes
            # reflected to whatever address the request claimed to come from.
            response = binding_error(request, 420, "", unknown)
        else:
            response = binding_success(request, transport_address(source))
        answer = encode(response, fingerprint=request.fingerprinted)
        if len(answer) > len(datagram) + MAX_GROWTH:
            self.counters.withheld += 1
            return None
        if unknown:
            self.counters.refused += 1
        else:
            self.counters.answered += 1
        return answer


@dataclass(frozen=True)
class BindingSucceeded:
    server: Address
    mapped_address: Address
    """Where the server saw the request come from: this socket's address beyond any NAT."""
    elapsed: float
    """Seconds from the first request to the response (the RTT if nothing was resent)."""
    requests_sent: int


@dataclass(frozen=True)
class BindingFailed:
    server: Address
    reason: str
    code: int | None = None
    """The ERROR-CODE of an error response; None if the response was unusable."""


@dataclass(frozen=True)
class BindingTimedOut:
    server: Address
    requests_sent: int
    waited: float


BindingOutcome = BindingSucceeded | BindingFailed | BindingTimedOut


class TooManyTransactions(Exception):
    """A client asked to open more than ``MAX_OUTSTANDING`` transactions to one server."""


@dataclass
class ClientCounters:
    not_stun: int = 0
    malformed: int = 0
    not_response: int = 0
    """Well-formed STUN that is not a Binding response (a request, an indication)."""
    unmatched: int = 0
    """Responses to no open transaction, or not from the address the request went to."""


@dataclass
class _Transaction:
    server: Address
    request: bytes
    started: float
    deadline_at: float
    next_send_at: float | None
    interval: float
    final_wait_ends_at: float = math.inf
    sent: int = 0

    def wakes_at(self) -> float:
        due = self.final_wait_ends_at if self.next_send_at is None else self.next_send_at
        return min(due, self.deadline_at)


class BindingClient:
    """Binding transactions ("what address do you see me at", "is this peer alive"), sans-I/O.

    ``start`` opens one; ``poll(now)`` returns the datagrams due (call it at ``next_timer()``
    and after ``start``); ``receive`` takes a datagram from the socket; ``pop_outcomes``
    returns the transactions that ended, each once.
    """

    def __init__(
        self, retransmission: Retransmission | None = None, *, software: str | None = None
    ) -> None:
        self.retransmission = retransmission or Retransmission()
        self.software = software
        self.counters = ClientCounters()
        self._transactions: dict[bytes, _Transaction] = {}
        self._outcomes: list[tuple[bytes, BindingOutcome]] = []

    @property
    def outstanding(self) -> int:
        return len(self._transactions)

    def start(self, server: Sequence[Any], now: float, *, deadline: float | None = None) -> bytes:
        """Open a transaction with ``server`` (an IP address and port) and return its
        transaction id. With a ``deadline`` (seconds) it times out then at the latest."""
        address = transport_address(server)
        if sum(t.server == address for t in self._transactions.values()) >= MAX_OUTSTANDING:
            raise TooManyTransactions(
                f"{MAX_OUTSTANDING} transactions already open to {address[0]} port {address[1]}; "
                "wait for one to end (RFC 5389 §7.2)"
            )
        if deadline is not None and not deadline > 0:
            raise ValueError(f"deadline = {deadline!r}: expected seconds > 0")
        request = binding_request(software=self.software)
        self._transactions[request.transaction_id] = _Transaction(
            server=address,
            request=encode(request),
            started=now,
            deadline_at=math.inf if deadline is None else now + deadline,
            next_send_at=now,
            interval=self.retransmission.rto,
        )
        return request.transaction_id

    def cancel(self, transaction_id: bytes) -> None:
        """Forget a transaction: no more requests, no outcome."""
        self._transactions.pop(transaction_id, None)

    def next_timer(self) -> float | None:
        """When ``poll`` next has something to do, if ever."""
        return min((t.wakes_at() for t in self._transactions.values()), default=None)

    def poll(self, now: float) -> list[tuple[bytes, Address]]:
        """The requests due at ``now``, with where each goes; transactions past their time end
        as timed out."""
        due: list[tuple[bytes, Address]] = []
        for transaction_id, t in list(self._transactions.items()):
            if now >= t.deadline_at or now >= t.final_wait_ends_at:
                outcome = BindingTimedOut(t.server, t.sent, now - t.started)
                self._end(transaction_id, outcome)
            elif t.next_send_at is not None and now >= t.next_send_at:
                due.append((t.request, t.server))
                t.sent += 1
                if t.sent < self.retransmission.rc:
                    t.next_send_at = now + t.interval
                    t.interval *= 2
                else:
                    t.next_send_at = None
                    t.final_wait_ends_at = now + self.retransmission.rm * self.retransmission.rto
        return due

    def receive(self, datagram: bytes, source: Sequence[Any], now: float) -> bool:
        """Take a datagram that came to the socket; True if it ended a transaction."""
        if not is_stun(datagram):
            self.counters.not_stun += 1
            return False
        try:
            response = decode(datagram)
        except StunError:
            self.counters.malformed += 1
            return False
        if response.method != BINDING or response.message_class not in (
            MessageClass.SUCCESS,
            MessageClass.ERROR,
        ):
            self.counters.not_response += 1
            return False
        t = self._transactions.get(response.transaction_id)
        if t is None or transport_address(source) != t.server:
            self.counters.unmatched += 1
            return False
        outcome: BindingOutcome
        error = response.error
        unknown = response.not_understood()
        mapped = response.mapped_address
        if response.message_class == MessageClass.ERROR:
            if error is None:
                outcome = BindingFailed(t.server, "error response without ERROR-CODE")
            else:
                outcome = BindingFailed(t.server, f"error {error[0]} {error[1]}".rstrip(), error[0])
        elif unknown:
            names = ", ".join(f"0x{u:04X}" for u in unknown)
            outcome = BindingFailed(t.server, f"response with unknown required attributes {names}")
        elif mapped is None:
            outcome = BindingFailed(t.server, "success response without a mapped address")
        else:
            outcome = BindingSucceeded(t.server, mapped, now - t.started, t.sent)
        self._end(response.transaction_id, outcome)
        return True

    def pop_outcomes(self) -> list[tuple[bytes, BindingOutcome]]:
        """The transactions that ended since the last call, with how."""
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    def _end(self, transaction_id: bytes, outcome: BindingOutcome) -> None:
        del self._transactions[transaction_id]
        self._outcomes.append((transaction_id, outcome))
