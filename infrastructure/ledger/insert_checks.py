"""What an event must be to become a ledger row: checked before anything is written.

The ledger is append-only, so a row that cannot be read back poisons every read that meets it,
for good (a session id that is not a UUID made every notification page holding it raise). Each
field of a stored event is therefore checked against what both backends store and read back
unchanged (docs/ledger-format.md §1, §9); anything else is refused with ``InvalidEvent`` or
``PayloadTooLarge`` naming the field and its value, and the request commits nothing.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.persistence import StoredEvent
from l2_session.infrastructure.ledger.errors import InvalidEvent, PayloadTooLarge
from l2_session.infrastructure.ledger.format import (
    MAX_PAYLOAD_BYTES,
    MAX_SEALED_BYTES,
    MAX_TOPIC_BYTES,
)

# The version column is a signed 64-bit integer on both backends (SQLite INTEGER, bigint).
MAX_VERSION = 2**63 - 1


def check_event(event: StoredEvent) -> None:
    """Raise if ``event`` cannot be stored as a ledger row that reads back equal."""
    session = event.originator_id
    if not isinstance(session, UUID):
        raise InvalidEvent(
            f"a session (originator) id must be a uuid.UUID, got {type(session).__name__} "
            f"{_short(session)}: the ledger keys sessions by UUID (docs/ledger-format.md §1)"
        )
    version = event.originator_version
    if type(version) is not int:
        raise InvalidEvent(
            f"session {session.hex}: a version must be an int, got "
            f"{type(version).__name__} {_short(version)}"
        )
    if not 1 <= version <= MAX_VERSION:
        raise InvalidEvent(
            f"session {session.hex}: version {_short(version)} is out of range: versions start "
            f"at 1 (a session's first event) and go up to {MAX_VERSION}"
        )
    topic = event.topic
    if not isinstance(topic, str) or not topic or "\x00" in topic:
        raise InvalidEvent(
            f"session {session.hex} version {version}: the event type (topic) must be a "
            f"non-empty str without NUL characters, got {type(topic).__name__} {_short(topic)}"
        )
    try:
        topic_bytes = len(topic.encode())
    except UnicodeEncodeError:
        raise InvalidEvent(
            f"session {session.hex} version {version}: the event type (topic) {_short(topic)} "
            "is not valid Unicode text (it holds a lone surrogate)"
        ) from None
    if topic_bytes > MAX_TOPIC_BYTES:
        raise PayloadTooLarge(
            f"session {session.hex} version {version}: the event type (topic) is too long: "
            f"{topic_bytes} bytes; the limit is {MAX_TOPIC_BYTES} bytes"
        )
    _check_bytes(event.state, "payload (state)", MAX_PAYLOAD_BYTES, session, version)
    sealed = getattr(event, "sealed", None)
    if sealed is not None:
        _check_bytes(sealed, "sealed column", MAX_SEALED_BYTES, session, version)


def _check_bytes(value: object, what: str, limit: int, session: UUID, version: int) -> None:
    if not isinstance(value, bytes):
        raise InvalidEvent(
            f"session {session.hex} version {version}: the {what} must be bytes, got "
            f"{type(value).__name__}"
        )
    if len(value) > limit:
        raise PayloadTooLarge(
            f"session {session.hex} version {version}: the {what} is {len(value)} bytes; "
            f"the limit is {limit} bytes"
        )


def _short(value: object) -> str:
    """``repr(value)``, cut to a length an error message can carry."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
