"""The events every suite writes: sessions of 5 events with about 200-byte payloads.

One aggregate class serves the signed ledger and the plain eventsourcing baseline, so both
map exactly the same domain events; the floor takes the ledger mapper's payload bytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from eventsourcing.domain import Aggregate, event

EVENTS_PER_SESSION = 5
PAYLOAD_BYTES = 200  # target size of one stored payload (canonical JSON)
_NOTE_CHARS = 24  # free text in each event, sized so payloads land near PAYLOAD_BYTES


class BenchSession(Aggregate):
    """A session shaped like SPEC-018's: opened, then a few state changes with peer data.

    State stays small and bounded (counters and the last values), as a real session's does, so
    snapshot size does not grow with the number of events.
    """

    @event("Opened")
    def __init__(self, peer: str, note: str) -> None:
        self.peer = peer
        self.note = note
        self.changes = 0
        self.last_state = "opened"

    @event("StateChanged")
    def change_state(self, state: str, peer: str, note: str) -> None:
        self.changes += 1
        self.last_state = state
        self.peer = peer
        self.note = note


_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_STATES = ("handshaking", "established", "degraded", "rotating", "established")


def _note(rng: random.Random) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=_NOTE_CHARS))


def _peer(rng: random.Random) -> str:
    # A did:key-shaped peer name: 44 base58 characters after the Ed25519 prefix.
    return "did:key:z6Mk" + "".join(rng.choices(_BASE58, k=44))


def new_session(rng: random.Random, events: int = EVENTS_PER_SESSION) -> BenchSession:
    """A session with ``events`` pending (unsaved) events."""
    session = BenchSession(peer=_peer(rng), note=_note(rng))
    for _ in range(events - 1):
        add_change(session, rng)
    return session


def add_change(session: BenchSession, rng: random.Random) -> None:
    """One more pending StateChanged event, like every other event of the workload."""
    session.change_state(_STATES[session.changes % len(_STATES)], _peer(rng), _note(rng))


def sessions(count: int, seed: int = 2) -> list[BenchSession]:
    """``count`` sessions of EVENTS_PER_SESSION pending events, the same for the same seed."""
    return list(session_stream(count, seed))


def session_stream(count: int, seed: int) -> Iterator[BenchSession]:
    """The same sessions as ``sessions``, made one at a time (for data sets too big to hold)."""
    rng = random.Random(seed)
    for _ in range(count):
        yield new_session(rng)


def chunks(items: Iterable[BenchSession], size: int) -> Iterator[list[BenchSession]]:
    batch: list[BenchSession] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
