"""Admission of handshake attempts under flood (SPEC-018 §7.1 "Denial of service: quarantine +
exponential backoff": a flood of handshakes costs the responder a bounded amount of work).

A gate in front of ``Responder.receive_init`` that costs a dictionary lookup or two per INIT,
run before any signature check, DH or ML-KEM work:

1. quarantine: an identity that failed authentication is refused outright for 60 s (§2.1) —
   from the address it failed from: the identity in a failed INIT is unproven, and quarantining
   it everywhere would let anyone lock any peer out by forging INITs in its name;
2. token buckets per source (the transport address, as the caller sees it) and per peer (an
   identity at a source): one noisy address, or one peer, cannot monopolise the responder;
3. two global buckets: one for peers — identity *and* address — that have completed a
   handshake with this node before ("known"), one for everything else. The identity in an INIT
   is only a claim at this point, and identities are public, so a known identity claimed from
   another address counts as unknown: a flood of fresh or borrowed identities drains the
   *unknown* budget only, and peers this node already knows still get through from where they
   were. (Only an attacker who can send from a known peer's own address gets further, and
   only as far as that peer's bucket.)

Tables are bounded (least recently seen entries are dropped first), so memory stays bounded
whatever the attacker sends. Time is a value, in microseconds; nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from l2_session.domain.handshake.errors import HandshakeError
from l2_session.domain.handshake.wire import (
    HEADER,
    INIT_BODY_LEN,
    PROTOCOL_VERSION,
    Init,
    MessageType,
)

INIT_HEADER = HEADER.pack(PROTOCOL_VERSION, MessageType.INIT, INIT_BODY_LEN)
INIT_FRAME_LEN = HEADER.size + INIT_BODY_LEN
QUARANTINE_US = 60_000_000  # SPEC-018 §2.1 "peer is quarantined for 60 seconds"


class HandshakeRefused(HandshakeError):
    """An INIT dropped by the admission gate, before any expensive work."""

    reason = "handshake_refused"


@dataclass
class Bucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``."""

    rate: float
    burst: float
    tokens: float
    updated_us: int

    def take(self, now_us: int) -> bool:
        elapsed = max(0, now_us - self.updated_us) / 1e6
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated_us = max(self.updated_us, now_us)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(frozen=True)
class FloodLimits:
    per_source_rate: float = 5.0
    per_source_burst: float = 10.0
    per_peer_rate: float = 2.0
    per_peer_burst: float = 5.0
    known_rate: float = 200.0
    known_burst: float = 400.0
    unknown_rate: float = 100.0
    unknown_burst: float = 200.0
    max_tracked: int = 10_000  # per table: sources, identities, quarantined, known


V = TypeVar("V")


class _BoundedTable(Generic[V]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes | str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes | str) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes | str, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def pop(self, key: bytes | str) -> None:
        self._items.pop(key, None)


class HandshakeAdmission:
    def __init__(self, limits: FloodLimits | None = None, *, now_us: int = 0) -> None:
        self.limits = lim = limits or FloodLimits()
        self._sources: _BoundedTable[Bucket] = _BoundedTable(lim.max_tracked)
        self._peers: _BoundedTable[Bucket] = _BoundedTable(lim.max_tracked)
        self._quarantine: _BoundedTable[int] = _BoundedTable(lim.max_tracked)
        self._known: _BoundedTable[bool] = _BoundedTable(lim.max_tracked)
        self._known_bucket = Bucket(lim.known_rate, lim.known_burst, lim.known_burst, now_us)
        self._unknown_bucket = Bucket(
            lim.unknown_rate, lim.unknown_burst, lim.unknown_burst, now_us
        )
        self.refused: dict[str, int] = {}

    def tracked(self) -> int:
        return len(self._sources) + len(self._peers) + len(self._quarantine) + len(self._known)

    def _refuse(self, why: str, detail: str) -> HandshakeRefused:
        self.refused[why] = self.refused.get(why, 0) + 1
        return HandshakeRefused(f"INIT refused ({why}): {detail}")

    def _bucket(
        self, table: _BoundedTable[Bucket], key: bytes | str, rate: float, burst: float, now_us: int
    ) -> Bucket:
        bucket = table.get(key)
        if bucket is None:
            bucket = Bucket(rate, burst, burst, now_us)
            table.put(key, bucket)
        return bucket

    def admit(self, identity: bytes, source: str, now_us: int) -> None:
        """Raise ``HandshakeRefused`` unless an INIT claiming ``identity`` from ``source`` may
        go on to signature verification."""
        lim = self.limits
        peer = _pair(identity, source)
        until = self._quarantine.get(peer)
        if until is not None:
            if now_us < until:
                raise self._refuse("quarantined", f"{identity.hex()} at {source} until {until} us")
            self._quarantine.pop(peer)
        if not self._bucket(
            self._sources, source, lim.per_source_rate, lim.per_source_burst, now_us
        ).take(now_us):
            raise self._refuse("source rate", f"too many handshakes from {source}")
        if not self._bucket(self._peers, peer, lim.per_peer_rate, lim.per_peer_burst, now_us).take(
            now_us
        ):
            raise self._refuse("peer rate", f"too many from {identity.hex()} at {source}")
        known = self._known.get(peer) is not None
        bucket = self._known_bucket if known else self._unknown_bucket
        if not bucket.take(now_us):
            raise self._refuse("global rate", "known peers" if known else "new peers")

    def admit_init(self, data: bytes, source: str, now_us: int) -> Init:
        """Admit an INIT on its claimed identity, read straight from its fixed offset after a
        header check; only an admitted INIT is parsed in full (and returned)."""
        identity = claimed_identity(data)
        if identity is None:
            return Init.parse(data)  # malformed: let the parser say exactly how
        self.admit(identity, source, now_us)
        return Init.parse(data)

    def authenticated(self, identity: bytes, source: str) -> None:
        """Record a completed handshake: this identity, from this address, now draws on the
        known-peers budget."""
        self._known.put(_pair(identity, source), True)

    def quarantine(
        self, identity: bytes, source: str, now_us: int, duration_us: int = QUARANTINE_US
    ) -> None:
        """After an authentication failure (SPEC-018 §2.1): refuse this identity at this source
        for a while."""
        self._quarantine.put(_pair(identity, source), now_us + duration_us)


def claimed_identity(init: bytes) -> bytes | None:
    """The identity key an INIT claims to be signed by, read from its fixed offset; None if
    the bytes do not even have an INIT's header and length."""
    if len(init) != INIT_FRAME_LEN or init[:4] != INIT_HEADER:
        return None
    return bytes(init[6:38])


def _pair(identity: bytes, source: str) -> bytes:
    return identity + source.encode()
