"""MockTransport (SPEC-018 §6.3): deterministic faults under a seed and the manual clock."""

from __future__ import annotations

from uuid import UUID

import pytest
from l2_session.domain.session.commands import Heartbeat
from l2_session.infrastructure.clock import ManualClock
from l2_session.transports.mock import LinkProfile, MockTransport

C = UUID(int=1)


def run(seed: int, profile: LinkProfile) -> list[int]:
    clock = ManualClock()
    transport = MockTransport(clock, seed=seed, profile=profile)
    for n in range(200):
        transport.send("a", "b", Heartbeat(C, n))
    clock.advance(1.0)
    return [frame.counter for _, _, frame in transport.due()]  # type: ignore[union-attr]


def test_same_seed_same_run_different_seed_different_run() -> None:
    profile = LinkProfile(loss=0.1, duplication=0.1, reordering=0.3)
    assert run(3, profile) == run(3, profile)
    assert run(3, profile) != run(4, profile)


def test_loss_duplication_and_reordering_each_show() -> None:
    assert run(1, LinkProfile(loss=1.0)) == []
    assert run(1, LinkProfile(duplication=1.0)) == sorted(list(range(200)) * 2)
    assert run(1, LinkProfile()) == list(range(200))
    reordered = run(1, LinkProfile(reordering=0.5))
    assert sorted(reordered) == list(range(200)) and reordered != list(range(200))


def test_latency_holds_frames_until_the_clock_reaches_them() -> None:
    clock = ManualClock()
    transport = MockTransport(clock, profile=LinkProfile(latency=0.5))
    transport.send("a", "b", Heartbeat(C, 1))
    clock.advance(0.499)
    assert list(transport.due()) == []
    clock.advance(0.001)
    assert len(list(transport.due())) == 1


def test_partition_blocks_both_ways_and_frames_in_flight_until_healed() -> None:
    clock = ManualClock()
    transport = MockTransport(clock)
    transport.send("a", "b", Heartbeat(C, 1))  # in flight when the partition starts
    transport.partition("a", "b")
    transport.send("b", "a", Heartbeat(C, 2))
    clock.advance(1)
    assert list(transport.due()) == [] and transport.stats.blocked == 2
    transport.heal("a", "b")
    transport.send("a", "b", Heartbeat(C, 3))
    clock.advance(1)
    assert [f.counter for _, _, f in transport.due()] == [3]  # type: ignore[union-attr]


def test_bad_profile_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"LinkProfile.loss = 1.5"):
        LinkProfile(loss=1.5)
