"""Resumption from stored tickets, without a new KEM exchange (SPEC-018 §2.1 "Session
resumption")."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from crypto_support import NOW_US
from l2_session.domain.handshake.channel import Channel
from l2_session.domain.handshake.errors import (
    HandshakeAuthenticationFailed,
    MalformedMessage,
    ReplayedMessage,
)
from l2_session.domain.handshake.keys import SessionKeys
from l2_session.domain.handshake.protocol import InitiatorHandshake
from l2_session.domain.handshake.resume import (
    Resume,
    ResumeInitiator,
    ResumeRefused,
    ResumeResponder,
    ResumptionTicket,
)

Parties = Callable[..., Any]


def _established(parties: Parties) -> tuple[SessionKeys, SessionKeys, tuple[int, int]]:
    initiator, _, bundle, responder = parties(one_time_prekeys=0)
    hs, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    response, pending = responder.receive_init(init, now_us=NOW_US)
    confirm, keys_i = hs.receive_response(response)
    return keys_i, pending.receive_confirm(confirm), (bundle.signed_prekey_id, bundle.kem_prekey_id)


def _resume(
    resumer: SessionKeys,
    other: SessionKeys,
    prekeys: tuple[int, int],
    now: int = NOW_US + 3_600_000_000,
) -> tuple[SessionKeys, SessionKeys]:
    tickets = {other.session_id: ResumptionTicket.of(other)}
    responder = ResumeResponder(tickets.get, prekeys)
    start, request = ResumeInitiator.start(ResumptionTicket.of(resumer), now_us=now)
    response, pending = responder.receive_resume(request, now_us=now)
    confirm, a = start.receive_response(response)
    return a, pending.receive_confirm(confirm)


@pytest.mark.parametrize("who_resumes", ["initiator", "responder"])
def test_resumption_gives_fresh_agreeing_keys_for_the_same_session(
    parties: Parties, who_resumes: str
) -> None:
    keys_i, keys_r, prekeys = _established(parties)
    resumer, other = (keys_i, keys_r) if who_resumes == "initiator" else (keys_r, keys_i)
    a, b = _resume(resumer, other, prekeys)
    assert (a.send_key, a.receive_key) == (b.receive_key, b.send_key)
    assert a.session_id == b.session_id == keys_i.session_id
    assert (a.generation, b.generation) == (1, 1)
    old = {keys_i.send_key, keys_i.receive_key}
    assert old.isdisjoint({a.send_key, a.receive_key})  # fresh keys: no nonce reuse possible
    assert a.resumption_secret != keys_i.resumption_secret
    assert (a.peer_identity, b.peer_identity) == (resumer.peer_identity, other.peer_identity)
    # The resumed channel works.
    assert Channel(b).open(Channel(a).seal(b"after restart"))[1] == b"after restart"


def test_tickets_survive_encoding(parties: Parties) -> None:
    keys_i, _, _ = _established(parties)
    ticket = ResumptionTicket.of(keys_i)
    assert ResumptionTicket.parse(ticket.encode()) == ticket
    with pytest.raises(MalformedMessage, match="resumption ticket"):
        ResumptionTicket.parse(ticket.encode()[:-1])
    with pytest.raises(MalformedMessage, match="version 9"):
        ResumptionTicket.parse(b"\x09" + ticket.encode()[1:])


def test_each_ticket_works_once(parties: Parties) -> None:
    # After a resumption both sides move to generation 1; the generation-0 ticket is refused.
    keys_i, keys_r, prekeys = _established(parties)
    a, b = _resume(keys_i, keys_r, prekeys)
    responder = ResumeResponder({b.session_id: ResumptionTicket.of(b)}.get, prekeys)
    _, stale = ResumeInitiator.start(ResumptionTicket.of(keys_i), now_us=NOW_US)
    with pytest.raises(ResumeRefused, match=r"generation 0.*holds 1"):
        responder.receive_resume(stale, now_us=NOW_US)
    a2, b2 = _resume(a, b, prekeys)
    assert a2.generation == 2 and a2.send_key == b2.receive_key


def test_changed_prekeys_force_a_full_handshake(parties: Parties) -> None:
    keys_i, keys_r, (spk, kem) = _established(parties)
    responder = ResumeResponder(
        {keys_r.session_id: ResumptionTicket.of(keys_r)}.get, (spk + 1, kem)
    )
    _, request = ResumeInitiator.start(ResumptionTicket.of(keys_i), now_us=NOW_US)
    with pytest.raises(ResumeRefused, match="prekeys changed"):
        responder.receive_resume(request, now_us=NOW_US)


def test_unknown_session_is_refused(parties: Parties) -> None:
    keys_i, _, prekeys = _established(parties)
    _, request = ResumeInitiator.start(ResumptionTicket.of(keys_i), now_us=NOW_US)
    with pytest.raises(ResumeRefused, match="full handshake"):
        ResumeResponder({}.get, prekeys).receive_resume(request, now_us=NOW_US)


def test_wrong_secret_is_an_authentication_failure(parties: Parties) -> None:
    # Someone who knows the session id but not the secret cannot resume it.
    keys_i, keys_r, prekeys = _established(parties)
    forged = replace(ResumptionTicket.of(keys_i), resumption_secret=bytes(32))
    responder = ResumeResponder({keys_r.session_id: ResumptionTicket.of(keys_r)}.get, prekeys)
    _, request = ResumeInitiator.start(forged, now_us=NOW_US)
    with pytest.raises(HandshakeAuthenticationFailed, match="RESUME MAC"):
        responder.receive_resume(request, now_us=NOW_US)
    assert len(responder.replay_cache) == 0


def test_replayed_or_stale_resume_is_refused(parties: Parties) -> None:
    keys_i, keys_r, prekeys = _established(parties)
    responder = ResumeResponder({keys_r.session_id: ResumptionTicket.of(keys_r)}.get, prekeys)
    _, request = ResumeInitiator.start(ResumptionTicket.of(keys_i), now_us=NOW_US)
    responder.receive_resume(request, now_us=NOW_US)
    with pytest.raises(ReplayedMessage, match="already accepted"):
        responder.receive_resume(request, now_us=NOW_US + 1)
    _, old = ResumeInitiator.start(ResumptionTicket.of(keys_i), now_us=NOW_US)
    with pytest.raises(ReplayedMessage, match="outside the window"):
        responder.receive_resume(old, now_us=NOW_US + responder.max_skew_us + 1)


@pytest.mark.parametrize("target", ["response", "confirm"])
def test_altered_resume_messages_fail(parties: Parties, target: str) -> None:
    keys_i, keys_r, prekeys = _established(parties)
    responder = ResumeResponder({keys_r.session_id: ResumptionTicket.of(keys_r)}.get, prekeys)
    start, request = ResumeInitiator.start(ResumptionTicket.of(keys_i), now_us=NOW_US)
    response, pending = responder.receive_resume(request, now_us=NOW_US)
    if target == "response":
        with pytest.raises(HandshakeAuthenticationFailed, match="RESUME_RESPONSE"):
            start.receive_response(response[:-1] + bytes([response[-1] ^ 1]))
        return
    confirm, _ = start.receive_response(response)
    with pytest.raises(HandshakeAuthenticationFailed, match="RESUME_CONFIRM"):
        pending.receive_confirm(confirm[:-1] + bytes([confirm[-1] ^ 1]))


def test_resume_message_parses_canonically(parties: Parties) -> None:
    keys_i, _, _ = _established(parties)
    _, request = ResumeInitiator.start(ResumptionTicket.of(keys_i), now_us=NOW_US)
    assert Resume.parse(request).encode() == request
    assert len(request) == 104
    with pytest.raises(MalformedMessage):
        Resume.parse(request + b"\x00")


def test_resumption_is_well_within_100_ms(parties: Parties) -> None:
    # SPEC-018 §2.1 "established within 100ms": the crypto of a resumption, both sides in one
    # process. (The process start and ledger read are measured by the session manager's test.)
    keys_i, keys_r, prekeys = _established(parties)
    times = []
    a, b = keys_i, keys_r
    for _ in range(30):
        started = time.perf_counter()
        a, b = _resume(a, b, prekeys)
        times.append(time.perf_counter() - started)
    times.sort()
    assert times[int(len(times) * 0.99) - 1] < 0.100
