"""Decisions 14 and 18 (docs/spec-decisions.md): the responder records its side of a handshake
with the handshake's outcome, in one append, when the key confirmation proves who asked; a
request never confirmed (timeout, a confirmation that fails) is not written, only counted in a
summary per interval; and a responder that crashes before the confirmation has nothing to
lose. On real PQxdh keys."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any
from uuid import uuid5

from l2_session.domain.session.commands import (
    HandshakeAck,
    HandshakeRequest,
    HandshakeResponse,
    Send,
)
from l2_session.infrastructure.clock import ManualClock
from pqxdh_nodes import Nodes
from session_helpers import unconfirmed_summaries

SECOND = 1_000_000


def _only(outputs: list[Any], frame_type: type) -> Any:
    [frame] = [o.frame for o in outputs if isinstance(o, Send) and isinstance(o.frame, frame_type)]
    return frame


def _names(manager: Any, session_id: Any) -> list[str]:
    return [type(e).__name__ for e in manager.ledger.events.get(session_id)]


def _request(nodes: Nodes, now: int) -> tuple[Any, Any]:
    sid, outputs = nodes.manager(nodes.alice).establish(nodes.bob, now)
    return sid, _only(outputs, HandshakeRequest)


def test_the_responder_saves_its_handshake_once_with_the_key_confirmation(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    nodes = Nodes(session_ledger_factory, manual_clock)
    alice, bob = nodes.manager(nodes.alice), nodes.manager(nodes.bob)
    now = manual_clock.wall_us()
    sid, request = _request(nodes, now)
    appends = bob.ledger.ledger_recorder.committer.requests
    response = _only(bob.receive(nodes.alice, request, now), HandshakeResponse)
    responder = bob.session_for(request.conversation)
    assert responder is not None and responder.state == "handshake_received"
    assert _names(bob, responder.id) == []  # answered, not yet in the ledger
    ack = _only(alice.receive(nodes.bob, response, now), HandshakeAck)
    bob.receive(nodes.alice, ack, now)
    assert responder.state == "established"
    # The keys' first send counters are reserved in the same append (decision 21).
    assert _names(bob, responder.id) == [
        "Opened", "HandshakeReceived", "Established", "CountersReserved",
    ]  # fmt: skip
    assert bob.ledger.ledger_recorder.committer.requests == appends + 1  # one append
    assert bob.ledger.repository.get(responder.id) == responder
    assert alice.session(sid).state == "established"


def test_a_responder_whose_confirmation_never_comes_writes_only_a_summary(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    # Decision 18: the request never proved who sent it; the session is not written, it is
    # counted, and the count is written once the interval is over — one event for any number.
    nodes = Nodes(session_ledger_factory, manual_clock)
    bob = nodes.manager(nodes.bob)
    _, request = _request(nodes, manual_clock.wall_us())
    bob.receive(nodes.alice, request, manual_clock.wall_us())
    responder = bob.session_for(request.conversation)
    assert responder is not None
    appends = bob.ledger.ledger_recorder.committer.requests
    manual_clock.advance(6)  # past SPEC-018 §2.1's 5 s handshake timeout
    bob.tick(manual_clock.wall_us())
    assert responder.state == "failed" and responder.failure_reason == "timeout"
    assert bob.session_for(request.conversation) is None  # and it left memory
    assert _names(bob, responder.id) == []
    assert bob.ledger.ledger_recorder.committer.requests == appends
    manual_clock.advance(60)
    bob.tick(manual_clock.wall_us())
    assert unconfirmed_summaries(bob.ledger) == [{"timeout": 1}]
    assert bob.ledger.ledger_recorder.committer.requests == appends + 1


def test_a_responder_whose_confirmation_fails_writes_only_a_summary(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    # Decision 18: a confirmation that fails verification proves no one sent the request: no
    # session and no quarantine of the DID it named in the ledger; the key exchange's gate
    # holds that identity off at that source for 60 s (decision 11).
    nodes = Nodes(session_ledger_factory, manual_clock)
    alice, bob = nodes.manager(nodes.alice), nodes.manager(nodes.bob)
    now = manual_clock.wall_us()
    _, request = _request(nodes, now)
    response = _only(bob.receive(nodes.alice, request, now), HandshakeResponse)
    ack = _only(alice.receive(nodes.bob, response, now), HandshakeAck)
    responder = bob.session_for(request.conversation)
    appends = bob.ledger.ledger_recorder.committer.requests
    forged = bytearray(ack.confirmation)
    forged[-1] ^= 1
    assert bob.receive(nodes.alice, replace(ack, confirmation=bytes(forged)), now) == []
    assert responder is not None and responder.failure_reason == "authentication_failed"
    assert bob.session_for(request.conversation) is None
    assert bob.ledger.ledger_recorder.committer.requests == appends
    assert not bob.peer(nodes.alice).is_quarantined(now)
    assert bob._kx.engine.admission.refused == {}  # type: ignore[attr-defined]
    _, again = _request(nodes, now + 1)  # the same identity, from the same source: held off
    assert bob.receive(nodes.alice, again, now + 1) == []
    assert bob._kx.engine.admission.refused == {"quarantined": 1}  # type: ignore[attr-defined]
    bob.tick(now + 61 * SECOND)
    assert unconfirmed_summaries(bob.ledger) == [{"authentication_failed": 1}]


def test_a_responder_that_crashes_before_the_confirmation_loses_nothing_that_could_be_used(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    """What its ledger would have held (handshake_received) could not finish the handshake
    after a restart either: the responder's half of the key schedule is in memory only. The
    restarted responder drops the confirmation as unknown, and the initiator's next attempt
    (its retry after missed heartbeats) is answered like any new one."""
    nodes = Nodes(session_ledger_factory, manual_clock)
    alice = nodes.manager(nodes.alice)
    now = manual_clock.wall_us()
    sid, request = _request(nodes, now)
    response = _only(nodes.manager(nodes.bob).receive(nodes.alice, request, now), HandshakeResponse)
    ack = _only(alice.receive(nodes.bob, response, now), HandshakeAck)
    restarted = nodes.start(nodes.bob)  # the crash: a new process over the same ledger file
    assert restarted.receive(nodes.alice, ack, now) == []
    assert restarted.dropped_frames == 1
    assert restarted.session_for(request.conversation) is None
    assert _names(restarted, uuid5(request.conversation, nodes.bob)) == []  # its would-be id
    assert alice.session(sid).state == "established"
    nodes.run_until(
        lambda: (
            (s := restarted.session_for(request.conversation)) is not None
            and s.state == "established"
        ),
        limit_s=600,
    )
    assert alice.session(sid).state == "established"
