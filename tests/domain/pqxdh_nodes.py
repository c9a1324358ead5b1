"""Session managers on real PQxdh keys, each on its own signed SQLite ledger, that can be
restarted (a new manager over the same ledger file, identity and, unless renewed, prekeys).

KEM operations are counted, so a test can show that something happened without a new KEM
exchange, or was refused before any KEM work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kem_counting import CountingKem, CountingKemKey, KemCounts
from l2_session.domain.handshake.bundle import create_prekeys
from l2_session.domain.handshake.protocol import Responder
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange, new_prekey_id
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.mock import MockTransport, Simulation

DAY_US = 86_400 * 1_000_000


@dataclass
class Node:
    identity: NodeIdentity
    ledger_name: str
    responder: Responder | None = None
    kem: KemCounts = field(default_factory=KemCounts)


class Nodes:
    """Two nodes (``alice`` initiates) joined by a MockTransport on a ManualClock."""

    def __init__(self, open_ledger: Callable[..., Any], clock: ManualClock, seed: int = 5) -> None:
        self.open_ledger, self.clock = open_ledger, clock
        self.directory = DidKeyResolver()
        self.sim = Simulation(clock, MockTransport(clock, seed=seed))
        a, b = NodeIdentity.generate(), NodeIdentity.generate()
        self.alice, self.bob = a.did, b.did
        self.nodes = {a.did: Node(a, "alice"), b.did: Node(b, "bob")}
        for did in self.nodes:
            self.start(did, renew_prekeys=True)

    def start(self, did: str, *, renew_prekeys: bool = False) -> SessionManager:
        """Start (or restart) ``did``'s process: a new manager over its ledger file."""
        node = self.nodes[did]
        if renew_prekeys or node.responder is None:
            secrets, bundle = create_prekeys(
                node.identity.private_key,
                expires_at_us=self.clock.wall_us() + 3 * DAY_US,
                signed_prekey_id=new_prekey_id(),
                kem_prekey_id=new_prekey_id(),
                one_time_prekey_ids=(1, 2, 3),
            )
            counted = replace(secrets, kem_prekey=CountingKemKey(secrets.kem_prekey, node.kem))
            node.responder = Responder(node.identity.private_key, counted, bundle)
            self.directory.publish_bundle(did, bundle.encode(), self.clock.wall_us())
        exchange = PqxdhKeyExchange.with_prekeys(
            node.identity.private_key, node.responder, self.directory, kem=CountingKem(node.kem)
        )
        return self.sim.add(SessionManager(did, self.open_ledger(node.ledger_name),
                                           key_exchange=exchange))  # fmt: skip

    def manager(self, did: str) -> SessionManager:
        return self.sim.nodes[did]

    def run_until(
        self, condition: Callable[[], bool], limit_s: float, step_s: float = 0.05
    ) -> None:
        waited = 0.0
        while not condition():
            assert waited < limit_s, f"condition not reached within {limit_s} s of manual time"
            self.sim.run_for(step_s)
            waited += step_s
