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
