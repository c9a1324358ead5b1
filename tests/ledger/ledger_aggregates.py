"""A small aggregate for ledger tests: the ledger stores any eventsourcing aggregate."""

from __future__ import annotations

from typing import Any, ClassVar

from eventsourcing.domain import Aggregate, event


class Conversation(Aggregate):
    @event("Opened")
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.notes: list[str] = []
        self.session_key: Any = None

    @event("Noted")
    def note(self, text: str) -> None:
        self.notes.append(text)

    class KeyStored(Aggregate.Event):
        secret_fields: ClassVar[tuple[str, ...]] = ("session_key",)
        session_key: bytes
        label: str

        def apply(self, aggregate: Any) -> None:
            aggregate.session_key = self.session_key

    def store_key(self, key: bytes, label: str = "k") -> None:
        self.trigger_event(self.KeyStored, session_key=key, label=label)


def state_of(aggregate: Conversation) -> dict[str, Any]:
    """What replay must rebuild exactly (everything but eventsourcing's bookkeeping)."""
    return {
        "id": aggregate.id,
        "version": aggregate.version,
        "peer": aggregate.peer,
        "notes": list(aggregate.notes),
        "session_key": aggregate.session_key,
        "created_on": aggregate.created_on,
        "modified_on": aggregate.modified_on,
    }


def populate(
    ledger: Any, clock: Any, *, sessions: int = 3, notes: int = 4, with_keys: bool = True
) -> list[Conversation]:
    """Append `sessions` conversations of 1 + notes (+1 key) events, one save per session."""
    made = []
    for i in range(sessions):
        conversation = Conversation(peer=f"did:key:peer{i}")
        if with_keys:
            conversation.store_key(bytes([i]) * 32)
        for j in range(notes):
            conversation.note(text=f"note {j} of {i} " + "x" * 150)
        clock.advance(0.5)
        ledger.save(conversation)
        made.append(conversation)
    return made
