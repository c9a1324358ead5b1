"""SPEC-018 §5.1 ``SessionConfig``, with the constants the rest of the spec implies.

Durations are seconds (floats), as the spec writes them (``24h``, ``30s``). The five fields
of §5.1 keep the spec's defaults; the others are numbers the scenarios of §2 state in prose
and §5.1 forgot. Every value is checked on construction, so a bad configuration fails where
it is written, naming the field and the value, not an hour later in a timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from l2_session.domain.session.errors import ConfigError

HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class SessionConfig:
    # --- SPEC-018 §5.1 -------------------------------------------------------------------
    ttl: float = 24 * HOUR
    """Lifetime of the session keys; also the liveness lease a heartbeat extends (decision 3)."""
    heartbeat_interval: float = 30.0
    heartbeat_tolerance: int = 3
    handshake_timeout: float = 5.0
    rotation_window: float = 1 * HOUR
    """Rotation starts this long before the keys reach ``ttl`` (decision 3)."""

    # --- implied by SPEC-018 §2 ----------------------------------------------------------
    heartbeat_response_timeout: float = 2.0
    """§2.2 "peer responds within 2 seconds"."""
    quarantine: float = 60.0
    """§2.1 "peer is quarantined for 60 seconds"."""
    partition_threshold: float = 30.0
    """§2.3 "connectivity lost for >30s" before ``degraded``."""
    degraded_timeout: float = 60.0
    """§3.2 ``degraded --> suspended: timeout(60s)``."""
    suspended_recovery: float = 60.0
    """§2.2 "recovery is attempted after 60s" once ``suspended``."""
    resumption_timeout: float = 0.1
    """§2.1 resumption reaches ``established`` "within 100ms" (decision 4)."""
    rotation_timeout: float = 5.0
    """§3.2 ``rotating --> failed: rotation_timeout``; a re-handshake is a handshake."""
    backoff_base: float = 1.0
    backoff_factor: float = 2.0
    backoff_cap: float = 300.0
    backoff_jitter: float = 0.2
    """Fraction of the delay that is randomised: delay * (1 - jitter * u), u in [0, 1)."""

    # --- limits --------------------------------------------------------------------------
    max_message_size: int = 64 * 1024
    send_window: int = 64
    """Messages a session holds unacknowledged (queued or in flight); a submit beyond it is
    refused with ``WindowFull`` and the application waits for an acknowledgement. The
    receiving end keeps at most this many messages that arrived ahead of a gap."""
    max_ack_delay: float = 0.025
    """How long a receiver may hold back the acknowledgement of one new message, hoping to
    cover the next one with it (QUIC's ``max_ack_delay``, RFC 9000 §13.2.1, 25 ms). Two new
    messages, a gap or a duplicate are acknowledged at once. The sender adds it to its
    retransmission timeout: both ends of a session are assumed to use the same value."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f.name, value, "expected a number")
            if not math.isfinite(value):
                raise ConfigError(f.name, value, "expected a finite number")
            if value <= 0 and f.name != "backoff_jitter":
                raise ConfigError(f.name, value, "expected a value greater than 0")
        for name in ("heartbeat_tolerance", "max_message_size", "send_window"):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(name, getattr(self, name), "expected a whole number")
        if not 0 <= self.backoff_jitter < 1:
            raise ConfigError("backoff_jitter", self.backoff_jitter, "expected 0 <= jitter < 1")
        if self.backoff_factor < 1:
            raise ConfigError("backoff_factor", self.backoff_factor, "expected a factor >= 1")
        if self.backoff_cap < self.backoff_base:
            raise ConfigError(
                "backoff_cap", self.backoff_cap, f"expected >= backoff_base ({self.backoff_base})"
            )
        if self.rotation_window >= self.ttl:
            raise ConfigError(
                "rotation_window", self.rotation_window, f"expected < ttl ({self.ttl})"
            )
        if self.max_ack_delay >= self.heartbeat_response_timeout:
            raise ConfigError(
                "max_ack_delay",
                self.max_ack_delay,
                f"expected < heartbeat_response_timeout ({self.heartbeat_response_timeout})",
            )
        if self.heartbeat_response_timeout >= self.heartbeat_interval:
            raise ConfigError(
                "heartbeat_response_timeout",
                self.heartbeat_response_timeout,
                f"expected < heartbeat_interval ({self.heartbeat_interval})",
            )


DEFAULT_CONFIG = SessionConfig()


def config_fields(config: SessionConfig) -> dict[str, Any]:
    """The config as plain values, for recording in an event (and in snapshots). What
    ``asdict`` gives, without its deep copy of each value: every field is a number."""
    return {f.name: getattr(config, f.name) for f in fields(config)}


@lru_cache(maxsize=64)
def _cached(items: tuple[tuple[str, Any], ...]) -> SessionConfig:
    return SessionConfig(**dict(items))


def config_from_fields(recorded: dict[str, Any]) -> SessionConfig:
    """Back from recorded values; sessions share one object per distinct config.

    Every deadline rule reads a session's config, so the common case — ``recorded`` is the
    shared dict of ``shared_fields`` — is one lookup by identity, not a sort of its items."""
    hit = _CONFIG_OF_SHARED.get(id(recorded))
    if hit is not None and hit[0] is recorded:
        return hit[1]
    key = tuple(sorted(recorded.items()))
    config = _cached(key)
    if _SHARED_FIELDS.get(key) is recorded:  # shared dicts live forever: their ids stay theirs
        _CONFIG_OF_SHARED[id(recorded)] = (recorded, config)
    return config


_SHARED_FIELDS: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
_CONFIG_OF_SHARED: dict[int, tuple[dict[str, Any], SessionConfig]] = {}


def shared_fields(recorded: dict[str, Any]) -> dict[str, Any]:
    """One dict per distinct config for every aggregate that holds it: an idle session must
    stay small (<= 2 KiB per idle session: a million in 2 GiB). Treat it as read-only."""
    key = tuple(sorted(recorded.items()))
    return _SHARED_FIELDS.setdefault(key, dict(key))
