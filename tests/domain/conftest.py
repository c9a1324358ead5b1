"""Two session managers on their own ledgers, joined by a MockTransport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from l2_session.domain.manager.manager import SessionManager
from l2_session.domain.session.config import SessionConfig
from l2_session.infrastructure.clock import ManualClock
from l2_session.transports.mock import LinkProfile, MockTransport, Simulation
from session_helpers import ALICE, BOB, PREKEYS


@pytest.fixture
def make_sim(
    session_ledger_factory: Callable[..., Any], manual_clock: ManualClock
) -> Callable[..., Simulation]:
    builds = [0]

    def build(
        profile: LinkProfile | None = None, seed: int = 7, config: SessionConfig | None = None
    ) -> Simulation:
        # A second build in one test (hypothesis examples) gets fresh ledger files.
        builds[0] += 1
        suffix = "" if builds[0] == 1 else f"-{builds[0]}"
        transport = MockTransport(manual_clock, seed=seed, profile=profile)
        sim = Simulation(manual_clock, transport)
        for n, did in enumerate((ALICE, BOB)):
            sim.add(
                SessionManager(
                    did,
                    session_ledger_factory(did.rsplit("z6Mk", 1)[1].lower() + suffix),
                    config or SessionConfig(),
                    seed=seed + n,
                    prekeys_of=PREKEYS.__getitem__,
                    own_prekeys=PREKEYS[did],
                    key_exchange="mock",
                )
            )
        return sim

    return build
