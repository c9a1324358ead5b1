"""The world the SPEC-018 §2 scenarios run in: two session managers ("local" and "peer"),
each on its own signed SQLite ledger, keyed by the real PQxdh handshake through a DID
resolver, joined by a MockTransport, on one ManualClock.

Steps drive the world only through what a real deployment has: the manager's API, the
transport's fault controls, and the passage of (manual) time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any
from uuid import UUID

from l2_session.domain.handshake.resume import ResumptionTicket
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange, ticket_of
from l2_session.domain.session.commands import HandshakeResponse, Output, Send
from l2_session.domain.session.session import Session
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity, public_bytes_from_did_key
from l2_session.infrastructure.resolver import DidKeyResolver
from l2_session.transports.mock import MockTransport, Simulation

SECOND = 1_000_000


class RecordingSimulation(Simulation):
    """Keeps every output per node, and can forge the peer's handshake signatures."""

    def __init__(self, clock: ManualClock, transport: MockTransport) -> None:
        super().__init__(clock, transport)
        self.outputs: dict[str, list[Output]] = {}
        self.forge_from: str | None = None

    def perform(self, node: str, outputs: list[Output]) -> None:
        if node == self.forge_from:
            outputs = [
                replace(o, frame=replace(o.frame, authentic=False))
                if isinstance(o, Send) and isinstance(o.frame, HandshakeResponse)
                else o
                for o in outputs
            ]
        self.outputs.setdefault(node, []).extend(outputs)
        super().perform(node, outputs)


class World:
    def __init__(self, open_ledger: Callable[[str], Any], clock: ManualClock) -> None:
        self.open_ledger = open_ledger
        self.clock = clock
        self.identities = {n.did: n for n in (NodeIdentity.generate(), NodeIdentity.generate())}
        self.local, self.remote = list(self.identities)
        # Keys come from the real PQxdh handshake; peers find each other by DID only.
        self.directory = DidKeyResolver()
        self.prekeys = {self.local: "prekeys-local-1", self.remote: "prekeys-remote-1"}
        self.sim = RecordingSimulation(clock, MockTransport(clock, seed=2026))
        self.node = self.sim.add(self._manager(self.local, seed=1))
        self.peer_node = self.sim.add(self._manager(self.remote, seed=2))
        self.session_id: UUID | None = None
        self.memo: dict[str, Any] = {}

    def _manager(self, did: str, seed: int) -> SessionManager:
        exchange = PqxdhKeyExchange.for_node(
            did,
            self.identities[did].private_key,
            self.directory,
            now_us=self.clock.wall_us(),
            valid_for_us=7 * 24 * 3600 * SECOND,
        )
        return SessionManager(
            did,
            self.open_ledger(did[-12:]),
            seed=seed,
            prekeys_of=self.prekeys.__getitem__,
            own_prekeys=self.prekeys[did],
            key_exchange=exchange,
        )

    # -------------------------------------------------------------- views
    @property
    def now(self) -> int:
        return self.clock.wall_us()

    @property
    def session(self) -> Session:
        assert self.session_id is not None, "no session was started in this scenario"
        return self.node.session(self.session_id)

    @property
    def peer_session(self) -> Session:
        found = self.peer_node.session_for(self.session.conversation)
        assert found is not None
        return found

    def history(self) -> list[Any]:
        """The local session's events as stored in the ledger (not the in-memory object)."""
        return list(self.node.ledger.events.get(self.session.id))

    def sent(self, frame_type: type) -> list[Any]:
        return [
            o.frame
            for o in self.sim.outputs.get(self.local, [])
            if isinstance(o, Send) and isinstance(o.frame, frame_type)
        ]

    # -------------------------------------------------------------- actions
    def establish(self) -> None:
        self.session_id, outputs = self.node.establish(self.remote, self.now)
        self.sim.perform(self.local, outputs)

    def connect(self) -> None:
        self.establish()
        self.sim.run_for(1)
        assert self.session.state == "established"

    def submit(self, payload: bytes) -> None:
        self.sim.perform(self.local, self.node.submit(self.session_id, payload, self.now))  # type: ignore[arg-type]

    def link(self, what: str) -> None:
        self.sim.perform(self.local, self.node.link_event(self.session_id, what, self.now))  # type: ignore[arg-type]

    def run_until(
        self, condition: Callable[[], bool], limit_s: float = 600, step_s: float = 0.1
    ) -> None:
        waited = 0.0
        while not condition():
            assert waited < limit_s, f"condition not reached within {limit_s} s of manual time"
            self.sim.run_for(step_s)
            waited += step_s

    def restart_local(self) -> None:
        """The local process restarts: a new manager replays the session from its ledger."""
        assert self.session_id is not None
        self.node = self.sim.add(self._manager(self.local, seed=3))
        self.node.restore(self.session_id)

    def ticket(self, session: Session) -> ResumptionTicket:
        """The resumption ticket in the session's key material, as the ledger holds it."""
        assert session.key_material is not None
        own = public_bytes_from_did_key(self.local)
        return ticket_of(session.key_material, own, public_bytes_from_did_key(session.peer_did))

    def delivered_to_peer(self) -> list[bytes]:
        return [d.payload for d in self.sim.delivered[self.remote]]
