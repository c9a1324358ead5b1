"""The fallback policy (transports/fallback.py), on a clock of the test's: QUIC first, its
head start, and the back-off after QUIC to a peer fails."""

from __future__ import annotations

import pytest
from l2_session.transports.fallback import (
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    HEAD_START_S,
    FallbackPolicy,
)


def test_quic_first_with_a_head_start_of_250_ms_or_one_and_a_half_round_trips() -> None:
    policy = FallbackPolicy()
    assert policy.try_quic("p", 0.0)
    assert policy.head_start("p") == HEAD_START_S == 0.25
    policy.connected("p", "utcp", rtt_s=0.01)  # a short path: the floor holds
    assert policy.head_start("p") == 0.25
    policy.connected("p", "utcp", rtt_s=0.4)  # a long one: 1.5 round trips
    assert policy.head_start("p") == pytest.approx(0.6)


def test_a_failure_skips_quic_for_a_back_off_that_doubles_up_to_its_cap() -> None:
    policy = FallbackPolicy()
    now = 1000.0
    waits = []
    for _ in range(12):
        until = policy.quic_failed("p", now)
        waits.append(until - now)
        assert not policy.try_quic("p", now) and not policy.try_quic("p", until - 0.001)
        assert policy.try_quic("p", until)
    assert waits[:4] == [BACKOFF_BASE_S, 2 * BACKOFF_BASE_S, 4 * BACKOFF_BASE_S, 8 * BACKOFF_BASE_S]
    assert max(waits) == waits[-1] == BACKOFF_MAX_S
    assert policy.failures("p") == 12 and policy.try_quic("q", now)  # per peer
    policy.connected("p", "quic", rtt_s=None)  # QUIC works again: the failures are forgotten
    assert policy.failures("p") == 0 and policy.try_quic("p", now)
    assert policy.quic_failed("p", now) - now == BACKOFF_BASE_S


def test_it_remembers_at_most_max_peers() -> None:
    policy = FallbackPolicy(max_peers=3)
    for n in range(10):
        policy.quic_failed(f"p{n}", 0.0)
    assert len(policy) == 3
    assert policy.failures("p9") == 1 and policy.failures("p0") == 0  # the oldest let go


@pytest.mark.parametrize(
    "options",
    [
        {"head_start_s": 0},
        {"backoff_base_s": -1},
        {"backoff_max_s": 0},
        {"backoff_base_s": 10, "backoff_max_s": 5},
        {"max_peers": 0},
    ],
)
def test_wrong_settings_are_refused_with_the_name(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(options)).split("_s")[0].split("_")[0]):
        FallbackPolicy(**options)  # type: ignore[arg-type]
