"""The signed session ledger (docs/ledger-format.md)."""

from .application import SessionLedger
from .checkpoint import Checkpoint, CheckpointError
from .codec import SealedValue
from .errors import (
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
from .groupcommit import GroupCommitConfig
from .pg_url import is_postgres_url

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
    from .pg_application import PostgresSessionLedger

    return PostgresSessionLedger


SessionLedger.add_flavour(is_postgres_url, _postgres)
