"""SessionConfig: the spec's defaults, the implied constants, and validation."""

from __future__ import annotations

import pytest
from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import ConfigError


def test_defaults_are_spec_018_section_5_1_and_section_2() -> None:
    c = SessionConfig()
    assert (c.ttl, c.heartbeat_interval, c.heartbeat_tolerance, c.handshake_timeout) == (
        86400.0, 30.0, 3, 5.0,
    )  # fmt: skip
    assert c.rotation_window == 3600.0
    assert (c.heartbeat_response_timeout, c.quarantine, c.partition_threshold) == (2.0, 60.0, 30.0)
    assert (c.degraded_timeout, c.suspended_recovery, c.resumption_timeout) == (60.0, 60.0, 0.1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("heartbeat_interval", -30.0, "greater than 0"),
        ("handshake_timeout", 0, "greater than 0"),
        ("ttl", float("inf"), "finite"),
        ("heartbeat_tolerance", 2.5, "whole number"),
        ("backoff_jitter", 1.0, "0 <= jitter < 1"),
        ("backoff_factor", 0.5, "factor >= 1"),
        ("rotation_window", 86400.0, "< ttl"),
        ("heartbeat_response_timeout", 30.0, "< heartbeat_interval"),
        ("quarantine", "60s", "a number"),
        ("heartbeat_tolerance", True, "a number"),
    ],
)
def test_bad_value_names_the_field_and_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        SessionConfig(**{field: value})  # type: ignore[arg-type]
    assert raised.value.field == field
    assert f"SessionConfig.{field} = {value!r}" in str(raised.value)


def test_a_sessions_config_is_its_own_whether_its_fields_are_shared_or_a_private_copy() -> None:
    """The config property is read by every deadline rule, so shared field dicts are looked
    up by identity; a private copy (as a snapshot restores) must still give the same config,
    and two configs must never be confused."""
    from l2_session.domain.session.config import config_fields, config_from_fields, shared_fields

    fast, slow = SessionConfig(heartbeat_interval=5.0), SessionConfig(heartbeat_interval=50.0)
    shared_fast, shared_slow = (shared_fields(config_fields(c)) for c in (fast, slow))
    assert config_from_fields(shared_fast) is config_from_fields(shared_fast)
    assert config_from_fields(shared_fast) == fast
    assert config_from_fields(shared_slow) == slow
    assert config_from_fields(dict(shared_fast)) == fast  # a private copy: no identity hit
    assert config_from_fields(config_fields(slow)) == slow
