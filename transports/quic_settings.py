"""Every number a QUIC endpoint (quic.py) holds to, each with its reason, checked on
construction (docs/transports.md, "QUIC": the bounds and the timers).

The timers fit under SPEC-018's liveness rules (§2.2 heartbeats every 30 s of inactivity,
answered within 2 s, 3 missed at most; §2.3 "connectivity lost for >30s" before
``degraded``): a keep-alive PING every 15 s holds NAT bindings open between heartbeats,
and a path that answers nothing for 30 s is closed by QUIC, so the node learns the link is
down (connectivity lost) about as early as the heartbeats could tell it, and has the
partition threshold's 30 s to bring up another before the session degrades.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from l2_session.transports.frames import LENGTH, MAX_FRAME

ALPN = "l2s/1"
MAX_HELLO = 256  # a did:key is ~56 bytes (TCP's hello has the same bound)


@dataclass(frozen=True, slots=True)
class QuicSettings:
    # --- timers (seconds) ----------------------------------------------------------------
    keepalive_s: float = 15.0
    """A PING after this long without sending: below the 30 s after which many NATs forget
    a UDP mapping (RFC 4787 asks for 2 min; RFC 9308 §3.2 notes far shorter in practice)."""
    idle_timeout_s: float = 30.0
    """QUIC's idle timeout (RFC 9000 §10.1), offered to the peer, which takes the smaller:
    two keep-alive intervals with every retransmission unanswered. aioquic waits at least
    three probe timeouts, whatever this says."""
    handshake_timeout_s: float = 5.0
    """An accepted connection must complete the QUIC handshake and send its hello within
    this (SPEC-018 §5.1's handshake_timeout; TCP's hello timeout)."""
    frame_timeout_s: float = 10.0
    """From a frame's length prefix to its last byte, as over TCP."""
    frame_idle_timeout_s: float = 120.0
    """A connection that carried no frame for four heartbeat intervals carries no live
    session (as over TCP): keep-alive PINGs alone do not hold it open."""
    housekeeping_s: float = 0.5
    """How often the endpoint checks the timers above (each fires up to this late)."""

    # --- bounds (bytes, counts) ----------------------------------------------------------
    max_connections: int = 1024
    """Open connections, accepted and dialled, as over TCP."""
    receive_window: int = 256 * 1024
    """Stream credit (MAX_STREAM_DATA) beyond what the application took: the most a peer
    can make this end hold for one connection — frames queued, the frame being read and
    data received out of order together. It must hold one largest frame."""
    max_send_buffer: int = 512 * 1024
    """Bytes written to a connection and not yet acknowledged; ``send`` waits beyond this.
    A frame larger than what is free is still taken when nothing is buffered."""
    max_partial_bytes: int = 16 * 1024 * 1024
    """Frames being read, all connections together (tcp_bounds.Occupancy, as over TCP)."""
    max_server_tickets: int = 4096
    """TLS session tickets the server remembers (each one use, for 0-RTT)."""
    max_client_tickets: int = 1024
    """Servers a client remembers a ticket for."""
    retry_above: int = 512
    """While at least this many connections are open, a new one must first prove it can
    receive at its address: a Retry (RFC 9000 §8.1.2) whose token, bound to the address, its
    next Initial must carry — before any state is kept for it. 0: always. Below it, no
    Retry and no extra round trip (most of the time)."""

    def __post_init__(self) -> None:
        if isinstance(self.retry_above, bool) or not isinstance(self.retry_above, int):
            raise ValueError(f"retry_above must be a whole number >= 0, got {self.retry_above!r}")
        if self.retry_above < 0:
            raise ValueError(f"retry_above must be >= 0, got {self.retry_above}")
        for f in fields(self):
            if f.name == "retry_above":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{f.name} must be a number > 0, got {value!r}")
        largest = MAX_FRAME + LENGTH.size
        for name in ("receive_window", "max_partial_bytes"):
            if getattr(self, name) < largest:
                raise ValueError(
                    f"{name} must hold one largest frame ({largest} bytes), "
                    f"got {getattr(self, name)}"
                )
        if self.keepalive_s >= self.idle_timeout_s:
            raise ValueError(
                f"keepalive_s ({self.keepalive_s}) must be below idle_timeout_s "
                f"({self.idle_timeout_s}), or an idle connection times out"
            )
