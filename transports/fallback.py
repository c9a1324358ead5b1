"""Which transport to dial a peer on, and when to stop waiting for QUIC (SPEC-018 §1.2, §2.3):
QUIC first, μTCP as the fallback, raced the way happy eyeballs races address families
(RFC 8305) — sans-I/O, on the caller's clock; ``TcpNode.dial`` runs it.

- A dial starts with QUIC, unless QUIC to that peer failed recently. If QUIC has not
  connected within the *head start* — ``HEAD_START_S`` (250 ms), or 1.5 × the round trip
  measured to that peer when that is longer — TCP starts too, and whichever connects first
  carries the peer's sessions; the other is closed.
- When QUIC loses (it failed, or TCP won the race), QUIC to that peer is *broken* for a
  back-off: 30 s, doubling with every failure in a row up to 30 minutes. Dials meanwhile go
  straight to TCP. The first dial after the back-off tries QUIC again; a QUIC connection
  clears the failures.
- A live QUIC link that dies counts as a failure as well: the node dials the peer again,
  over TCP at once (decision 24).

Memory is bounded: the state of at most ``max_peers`` peers, the least recently used let go.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

HEAD_START_S = 0.25  # QUIC's lead before TCP starts (SPEC-018 §2.3: ~250-300 ms)
RTT_FACTOR = 1.5  # or this many round trips to the peer, if longer
BACKOFF_BASE_S = 30.0  # QUIC to a peer is skipped this long after its first failure ...
BACKOFF_MAX_S = 1800.0  # ... doubling per failure in a row, up to this
MAX_PEERS = 4096


@dataclass
class _Peer:
    failures: int = 0  # QUIC failures in a row
    quic_after_s: float = 0.0  # QUIC is skipped before this time
    rtt_s: float | None = None  # the latest handshake's round trip


class FallbackPolicy:
    """Per peer: whether to try QUIC, how long to give it, and the back-off after it fails."""

    def __init__(
        self,
        *,
        head_start_s: float = HEAD_START_S,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        max_peers: int = MAX_PEERS,
    ) -> None:
        for name, value in (
            ("head_start_s", head_start_s),
            ("backoff_base_s", backoff_base_s),
            ("backoff_max_s", backoff_max_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if backoff_max_s < backoff_base_s:
            raise ValueError("backoff_max_s must be >= backoff_base_s")
        if max_peers < 1:
            raise ValueError(f"max_peers must be >= 1, got {max_peers}")
        self.head_start_s = head_start_s
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.max_peers = max_peers
        self._peers: OrderedDict[str, _Peer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def try_quic(self, peer: str, now_s: float) -> bool:
        """Whether a dial to ``peer`` at ``now_s`` starts with QUIC."""
        state = self._peers.get(peer)
        return state is None or now_s >= state.quic_after_s

    def quic_after(self, peer: str) -> float:
        """When QUIC to ``peer`` may be tried again (0: at once)."""
        state = self._peers.get(peer)
        return 0.0 if state is None else state.quic_after_s

    def head_start(self, peer: str) -> float:
        """How long QUIC has to connect before TCP starts beside it."""
        state = self._peers.get(peer)
        rtt = None if state is None else state.rtt_s
        return self.head_start_s if rtt is None else max(self.head_start_s, RTT_FACTOR * rtt)

    def quic_failed(self, peer: str, now_s: float) -> float:
        """QUIC to ``peer`` failed (or lost the race): when it may be tried again."""
        state = self._state(peer)
        state.failures += 1
        wait = min(self.backoff_max_s, self.backoff_base_s * 2 ** (state.failures - 1))
        state.quic_after_s = now_s + wait
        return state.quic_after_s

    def connected(self, peer: str, transport: str, rtt_s: float | None) -> None:
        """A dial to ``peer`` connected over ``transport`` (``quic`` clears the failures);
        ``rtt_s``: its handshake's round trip, if measured."""
        state = self._state(peer)
        if rtt_s is not None:
            state.rtt_s = rtt_s
        if transport == "quic":
            state.failures, state.quic_after_s = 0, 0.0

    def failures(self, peer: str) -> int:
        state = self._peers.get(peer)
        return 0 if state is None else state.failures

    def _state(self, peer: str) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer()
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return state
