"""The session manager's peers in memory (decision 7's ``Peer`` aggregates): a cache of the
ledger, bounded in size and in time.

Any request names a DID, and anyone can name a new one each time, so the table cannot keep
every peer it was asked about. It keeps at most ``capacity`` peers, the most recently used,
and lets go of a peer unused for ``idle_us`` when the manager's clock passes (``expire``, from
``SessionManager.tick``). A peer let go is read again from the ledger when it is needed
(``SessionManager.peer``). Never let go: a peer with events not yet saved — except its
registration alone, which is made again, identical but for its time, if it is needed again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from l2_session.domain.session.peer import Peer


def holds_unsaved(peer: Peer) -> bool:
    """Whether letting ``peer`` go would lose something the ledger does not have."""
    return any(not isinstance(e, Peer.Registered) for e in peer.pending_events)


class PeerTable:
    def __init__(self, capacity: int, idle_us: int) -> None:
        self.capacity, self.idle_us = capacity, idle_us
        self.now_us = 0  # the latest time the manager told (expire)
        self._peers: OrderedDict[str, tuple[Peer, int]] = OrderedDict()  # oldest use first

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, peer_did: str) -> Peer | None:
        found = self._peers.pop(peer_did, None)
        if found is None:
            return None
        self._peers[peer_did] = (found[0], self.now_us)  # used now: the newest
        return found[0]

    def __setitem__(self, peer_did: str, peer: Peer) -> None:
        self._peers.pop(peer_did, None)
        self._peers[peer_did] = (peer, self.now_us)
        excess = len(self._peers) - self.capacity
        if excess > 0:
            self._let_go(excess, lambda used_us: True)

    def pop(self, peer_did: str, default: Peer | None = None) -> Peer | None:
        found = self._peers.pop(peer_did, None)
        return default if found is None else found[0]

    def expire(self, now_us: int) -> None:
        """Let go of the peers unused for ``idle_us`` (their uses are in time order)."""
        self.now_us = max(self.now_us, now_us)
        cutoff = self.now_us - self.idle_us
        self._let_go(len(self._peers), lambda used_us: used_us <= cutoff)

    def _let_go(self, most: int, stale: Callable[[int], bool]) -> None:
        """Let go of up to ``most`` peers, the least recently used first, while ``stale``
        says their last use is old enough; peers holding unsaved events stay."""
        going: list[str] = []
        for peer_did, (peer, used_us) in self._peers.items():
            if len(going) >= most or not stale(used_us):
                break
            if not holds_unsaved(peer):
                going.append(peer_did)
        for peer_did in going:
            del self._peers[peer_did]
