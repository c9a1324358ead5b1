"""Fixtures for the SPEC-018 §2 features; the world itself is in session_world.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from l2_session.infrastructure.clock import ManualClock
from session_world import World


@pytest.fixture
def world(session_ledger_factory: Callable[..., Any], manual_clock: ManualClock) -> World:
    return World(session_ledger_factory, manual_clock)
