"""Every parser against random bytes and against mutations of valid messages (hypothesis).

The property: a parser either returns a message that re-encodes to exactly the input bytes
(there is one encoding per message), or raises ``MalformedMessage`` — never another exception.
Fed to the protocol objects, mutated messages raise only handshake errors, and a malformed one
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from crypto_support import DAY_US, NOW_US
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.domain.handshake.bundle import PrekeyBundle, create_prekeys
from l2_session.domain.handshake.channel import Channel
from l2_session.domain.handshake.errors import HandshakeError, MalformedMessage
from l2_session.domain.handshake.protocol import InitiatorHandshake, Responder
from l2_session.domain.handshake.resume import (
    Resume,
    ResumeInitiator,
    ResumeResponder,
    ResumptionTicket,
)
from l2_session.domain.handshake.wire import Confirm, Init, MessageType, Response, peek_type

# One real exchange, made once: mutations are applied to these bytes.
_I = Ed25519PrivateKey.generate()
_R = Ed25519PrivateKey.generate()
_SECRETS, _BUNDLE = create_prekeys(_R, expires_at_us=NOW_US + DAY_US, one_time_prekey_ids=(1, 2))
_HS, _INIT = InitiatorHandshake.start(_I, _BUNDLE, now_us=NOW_US)
_RESPONSE, _PENDING = Responder(_R, _SECRETS, _BUNDLE).receive_init(_INIT, now_us=NOW_US)
_CONFIRM, _KEYS = _HS.receive_response(_RESPONSE)
_RECORD = Channel(_KEYS).seal(b"heartbeat or data")
_PENDING_KEYS = _PENDING.receive_confirm(_CONFIRM)
_TICKET_R = ResumptionTicket.of(_PENDING_KEYS)
_TICKET_I = ResumptionTicket.of(_KEYS)
_RESUMER, _RESUME = ResumeInitiator.start(_TICKET_I, now_us=NOW_US)
_RESUME_RESPONDER = ResumeResponder({_TICKET_R.session_id: _TICKET_R}.get, (1, 1))
_RESUME_RESPONSE, _ = _RESUME_RESPONDER.receive_resume(_RESUME, now_us=NOW_US)
VALID: dict[str, bytes] = {
    "INIT": _INIT,
    "RESPONSE": _RESPONSE,
    "CONFIRM": _CONFIRM,
    "BUNDLE": _BUNDLE.encode(),
    "RESUME": _RESUME,
    "TICKET": _TICKET_I.encode(),
}
PARSERS: dict[str, Callable[[bytes], Any]] = {
    "INIT": Init.parse,
    "RESPONSE": Response.parse,
    "CONFIRM": Confirm.parse,
    "BUNDLE": PrekeyBundle.parse,
    "RESUME": Resume.parse,
    "TICKET": ResumptionTicket.parse,
}

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Each example of these runs a whole handshake first: fewer examples, same mutation strategy.
FUZZ_PROTOCOL = settings(FUZZ, max_examples=100)


def _parses_canonically_or_is_malformed(name: str, data: bytes) -> None:
    try:
        message = PARSERS[name](data)
    except MalformedMessage:
        return
    assert message.encode() == data, f"{name}: accepted bytes that do not re-encode identically"


@st.composite
def mutation(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "header"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=16))
    else:
        i = draw(st.integers(0, 3))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(name: str, data: bytes) -> None:
    _parses_canonically_or_is_malformed(name, data)


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(st.data())
def test_mutations_of_valid_messages(name: str, data: st.DataObject) -> None:
    _parses_canonically_or_is_malformed(name, data.draw(mutation(VALID[name])))


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_valid_messages_parse_and_reencode(name: str) -> None:
    assert PARSERS[name](VALID[name]).encode() == VALID[name]


@pytest.mark.parametrize("name", sorted(set(PARSERS) - {"TICKET"}))
def test_clear_errors_for_each_kind_of_bad_input(name: str) -> None:
    good = VALID[name]
    with pytest.raises(MalformedMessage, match="unknown protocol version 2"):
        PARSERS[name](bytes([2]) + good[1:])
    with pytest.raises(MalformedMessage, match="expected a"):
        PARSERS[name](good[:1] + bytes([0x7F]) + good[2:])
    with pytest.raises(MalformedMessage, match="header says"):
        PARSERS[name](good[:-1])
    with pytest.raises(MalformedMessage, match="truncated header"):
        PARSERS[name](good[:3])
    with pytest.raises(MalformedMessage, match="exceeds the maximum"):
        PARSERS[name](good + bytes(70_000))


def test_unknown_suite_and_reserved_flags_are_refused() -> None:
    with pytest.raises(MalformedMessage, match="unknown suite 2"):
        Init.parse(_INIT[:4] + bytes([2]) + _INIT[5:])
    with pytest.raises(MalformedMessage, match="reserved flag"):
        Init.parse(_INIT[:5] + bytes([0x81]) + _INIT[6:])


@FUZZ
@given(data=st.binary(max_size=64))
def test_peek_type_random_bytes(data: bytes) -> None:
    try:
        kind = peek_type(data)
    except MalformedMessage:
        return
    assert kind == MessageType(data[1])


# --- through the protocol objects: only handshake errors, and no state change when malformed ---


@FUZZ
@given(st.data())
def test_responder_under_mutated_init(data: st.DataObject) -> None:
    responder = Responder(_R, _SECRETS, _BUNDLE)
    mutated = data.draw(st.one_of(mutation(_INIT), st.binary(max_size=2048)))
    try:
        responder.receive_init(mutated, now_us=NOW_US)
    except MalformedMessage:
        assert len(responder.replay_cache) == 0
        assert responder.secrets is _SECRETS
    except HandshakeError:
        pass


@FUZZ_PROTOCOL
@given(st.data())
def test_initiator_under_mutated_response(data: st.DataObject) -> None:
    hs, init = InitiatorHandshake.start(_I, _BUNDLE, now_us=NOW_US, use_one_time_prekey=False)
    response, _ = Responder(_R, _SECRETS, _BUNDLE).receive_init(init, now_us=NOW_US)
    mutated = data.draw(mutation(response))
    try:
        hs.receive_response(mutated)
    except MalformedMessage:
        assert not hs.done
        hs.receive_response(response)  # the genuine response still completes it
    except HandshakeError:
        assert hs.done
    else:
        assert mutated == response


@FUZZ_PROTOCOL
@given(st.data())
def test_responder_under_mutated_confirm(data: st.DataObject) -> None:
    hs, init = InitiatorHandshake.start(_I, _BUNDLE, now_us=NOW_US, use_one_time_prekey=False)
    response, pending = Responder(_R, _SECRETS, _BUNDLE).receive_init(init, now_us=NOW_US)
    confirm, _ = hs.receive_response(response)
    mutated = data.draw(mutation(confirm))
    try:
        pending.receive_confirm(mutated)
    except MalformedMessage:
        assert not pending.done
    except HandshakeError:
        assert pending.done
    else:
        assert mutated == confirm


@FUZZ
@given(st.data())
def test_channel_under_mutated_records(data: st.DataObject) -> None:
    receiver = Channel(_PENDING_KEYS)
    mutated = data.draw(st.one_of(mutation(_RECORD), st.binary(max_size=256)))
    try:
        receiver.open(mutated)
    except HandshakeError:
        assert receiver.window.highest == -1  # nothing accepted, the window did not move
    else:
        assert mutated == _RECORD


@FUZZ_PROTOCOL
@given(st.data())
def test_resumption_under_mutated_messages(data: st.DataObject) -> None:
    start, request = ResumeInitiator.start(_TICKET_I, now_us=NOW_US)
    tickets = {_TICKET_R.session_id: _TICKET_R}.get
    responder = ResumeResponder(tickets, (1, 1))
    try:
        responder.receive_resume(data.draw(mutation(request)), now_us=NOW_US)
    except MalformedMessage:
        assert len(responder.replay_cache) == 0
    except HandshakeError:
        pass
    response, _ = ResumeResponder(tickets, (1, 1)).receive_resume(request, now_us=NOW_US)
    mutated = data.draw(mutation(response))
    try:
        start.receive_response(mutated)
    except MalformedMessage:
        assert not start.done
    except HandshakeError:
        assert start.done
    else:
        assert mutated == response
