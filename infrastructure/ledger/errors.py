"""Errors of the signed ledger. Each names what was wrong, with the value or position."""

from __future__ import annotations

from eventsourcing.persistence import ConnectionPoolClosedError, IntegrityError


class LedgerError(Exception):
    """Base class: something about the ledger, or an append to it, is wrong."""


class LedgerNotFound(LedgerError):
    """The ledger database does not exist (and was not to be created)."""


class NotALedger(LedgerError):
    """The file or database exists but is not an l2-session ledger (or is corrupted)."""


class LedgerCorrupted(LedgerError):
    """A stored row cannot be read back as a ledger event; names the position."""


class ConcurrencyConflict(LedgerError, IntegrityError):
    """Another writer already appended this version of the session (optimistic concurrency)."""


class SessionChainError(LedgerError):
    """An append does not continue its session's chain (a version is missing)."""


class PayloadTooLarge(LedgerError):
    """An event payload is over the ledger's documented size limit."""


class ClockWentBackwards(LedgerError):
    """The injected clock reads earlier than the ledger head's timestamp."""


class UnknownEventType(LedgerError):
    """A stored event names a type (topic) this program cannot load."""


class SealedFieldError(LedgerError):
    """A sealed (secret) field cannot be sealed or opened: wrong type, key or content."""


class InvalidEvent(LedgerError, ValueError):
    """An event handed to the recorder cannot be stored as a ledger row (wrong type or value)."""


class LedgerClosed(LedgerError, ConnectionPoolClosedError):
    """The ledger was closed: nothing more can be read or appended through this SessionLedger
    (an eventsourcing ``ConnectionPoolClosedError``, as its own recorders raise)."""


class ProofRequestError(LedgerError, ValueError):
    """A proof asked for that the ledger cannot give: a position or tree size it does not hold."""
