"""Two session managers whose keys come from the real PQxdh handshake (docs/handshake.md),
found through a DID resolver, over a MockTransport, on signed ledgers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any
from uuid import uuid4

from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import KEY_MATERIAL_LEN, PqxdhKeyExchange
from l2_session.domain.session.commands import HandshakeResponse, Output, Send
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.mock import MockTransport, Simulation

DAY_US = 86_400 * 1_000_000


class TamperingSimulation(Simulation):
    """Flips a byte of every handshake response one node sends, when told to."""

    tamper_from: str | None = None

    def perform(self, node: str, outputs: list[Output]) -> None:
        if node == self.tamper_from:
            outputs = [_tampered(o) for o in outputs]
        super().perform(node, outputs)


def _tampered(o: Output) -> Output:
    if isinstance(o, Send) and isinstance(o.frame, HandshakeResponse):
        body = bytearray(o.frame.key_share)
        body[-1] ^= 1
        return replace(o, frame=replace(o.frame, key_share=bytes(body)))
    return o


def build(open_ledger: Callable[..., Any], clock: ManualClock) -> tuple[Simulation, str, str]:
    resolver = DidKeyResolver()
    sim = TamperingSimulation(clock, MockTransport(clock, seed=5))
    dids = []
    for name in ("alice", "bob"):
        node = NodeIdentity.generate()
        exchange = PqxdhKeyExchange.for_node(
            node.did,
            node.private_key,
            resolver,
            now_us=clock.wall_us(),
            valid_for_us=3 * DAY_US,
            one_time_prekeys=2,
        )
        sim.add(SessionManager(node.did, open_ledger(name), key_exchange=exchange))
        dids.append(node.did)
    return sim, dids[0], dids[1]


def test_sessions_establish_rotate_and_carry_messages_with_pqxdh_keys(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    sim, alice, bob = build(session_ledger_factory, manual_clock)
    sid, outputs = sim.nodes[alice].establish(bob, manual_clock.wall_us())
    sim.perform(alice, outputs)
    sim.perform(alice, sim.nodes[alice].submit(sid, b"hello", manual_clock.wall_us()))
    sim.run_for(1)
    mine = sim.nodes[alice].session(sid)
    theirs = sim.nodes[bob].session_for(mine.conversation)
    assert mine.state == theirs.state == "established"  # type: ignore[union-attr]
    assert mine.key_id == theirs.key_id and len(mine.key_material or b"") == KEY_MATERIAL_LEN  # type: ignore[union-attr]
    assert [d.payload for d in sim.delivered[bob]] == [b"hello"]

    first = mine.key_id
    manual_clock.advance(23 * 3600 - 2)  # idle until just before the rotation window
    sim.run_for(3)
    assert mine.state == "established" and mine.key_id != first
    assert mine.key_id == theirs.key_id  # type: ignore[union-attr]


def test_a_tampered_response_is_an_authentication_failure(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> None:
    sim, alice, bob = build(session_ledger_factory, manual_clock)
    sim.tamper_from = bob  # type: ignore[attr-defined]
    sid, outputs = sim.nodes[alice].establish(bob, manual_clock.wall_us())
    sim.perform(alice, outputs)
    sim.run_for(1)
    session = sim.nodes[alice].session(sid)
    assert session.state == "failed" and session.failure_reason == "authentication_failed"
    assert sim.nodes[alice].peer(bob).is_quarantined(manual_clock.wall_us())


def test_a_spent_one_time_prekey_is_handed_over_before_the_answer(
    manual_clock: ManualClock,
) -> None:
    """The responder's secrets without the one-time prekey a handshake spent reach
    ``on_prekeys_changed`` (a node's key store) before ``respond`` returns the answer."""
    resolver, now = DidKeyResolver(), manual_clock.wall_us()
    alice, bob = NodeIdentity.generate(), NodeIdentity.generate()
    exchanges = [
        PqxdhKeyExchange.for_node(node.did, node.private_key, resolver, now_us=now,
                                  valid_for_us=DAY_US, one_time_prekeys=2)
        for node in (alice, bob)
    ]  # fmt: skip
    kept: list[Any] = []
    exchanges[1].on_prekeys_changed = kept.append
    responder = exchanges[1].engine.responder
    assert responder is not None
    before = set(responder.secrets.one_time_prekeys)
    conversation = uuid4()
    init = exchanges[0].initiate(conversation, bob.did, now)
    assert not kept
    exchanges[1].respond(conversation, alice.did, init, now)
    assert len(kept) == 1 and kept[0] is responder.secrets
    assert len(set(kept[0].one_time_prekeys)) == len(before) - 1
    assert set(kept[0].one_time_prekeys) < before
