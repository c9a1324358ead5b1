"""The signed session ledger (docs/ledger-format.md)."""

from l2_session.infrastructure.ledger.application import SessionLedger
from l2_session.infrastructure.ledger.checkpoint import Checkpoint, CheckpointError
from l2_session.infrastructure.ledger.codec import SealedValue
from l2_session.infrastructure.ledger.errors import (
    ClockWentBackwards,
    ConcurrencyConflict,
    InvalidEvent,
    LedgerClosed,
    LedgerCorrupted,
    LedgerError,
    LedgerNotFound,
    NotALedger,
    PayloadTooLarge,
    SealedFieldError,
    SessionChainError,
    UnknownEventType,
)
from l2_session.infrastructure.ledger.groupcommit import GroupCommitConfig
from l2_session.infrastructure.ledger.pg_url import is_postgres_url

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ClockWentBackwards",
    "ConcurrencyConflict",
    "GroupCommitConfig",
    "InvalidEvent",
    "LedgerClosed",
    "LedgerCorrupted",
    "LedgerError",
    "LedgerNotFound",
    "NotALedger",
    "PayloadTooLarge",
    "SealedFieldError",
    "SealedValue",
    "SessionChainError",
    "SessionLedger",
    "UnknownEventType",
]


def _postgres() -> type[SessionLedger]:
    # Imported when a PostgreSQL ledger is first opened: psycopg and eventsourcing's PostgreSQL
    # module take ~0.1 s to import, and a node on SQLite never needs them.
    from l2_session.infrastructure.ledger.pg_application import PostgresSessionLedger

    return PostgresSessionLedger


SessionLedger.add_flavour(is_postgres_url, _postgres)
