"""Signed snapshots: a cache for fast replay, trusted only once checked against the chain.

A snapshot row records the session version it was taken at and the *head hash* — the event
hash of that version. Before a snapshot is used, its signature is checked and the head hash is
compared with the event hash stored at that version; a snapshot that fails either check is
ignored (and counted), and the session is replayed from older snapshots or from its first event.
Snapshot state is encrypted with the storage key: it can hold session keys.

A snapshot is written in the ledger's own write transaction (the application recorder's
``write()``: on SQLite the one writer connection, so it never fails for locking beside appends),
and only at a version the ledger holds: one with nothing to anchor to is refused, all of an
insert with it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from eventsourcing.persistence import Cipher, StoredEvent
from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteDatastore
from l2_session.infrastructure.identity import NodeIdentity, verify_did_signature
from l2_session.infrastructure.ledger.chain import session_key
from l2_session.infrastructure.ledger.errors import LedgerError, SealedFieldError
from l2_session.infrastructure.ledger.format import snapshot_hash
from l2_session.infrastructure.ledger.schema import EVENTS_TABLE, SIGNERS_TABLE, SNAPSHOTS_TABLE

log = logging.getLogger(__name__)
_STATE_AAD = b"l2-session/ledger/snapshot-state/v1\n"


class StorageCipher(Cipher):
    """ChaCha20-Poly1305 under the node's storage key, for snapshot state at rest."""

    def __init__(self, storage_key: bytes) -> None:  # eventsourcing's takes an Environment
        self._aead = ChaCha20Poly1305(storage_key)

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, _STATE_AAD)

    def decrypt(self, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(ciphertext[:12], ciphertext[12:], _STATE_AAD)
        except InvalidTag:
            raise SealedFieldError(
                "snapshot state failed authentication (wrong storage key?)"
            ) from None


def snapshot_select(placeholder: str) -> str:
    """Snapshots of a session joined with the event hash at their version and their signer."""
    return (
        f"SELECT s.version, s.topic, s.state, s.head_hash, s.signer, s.signature, e.event_hash "
        f"FROM {SNAPSHOTS_TABLE} s LEFT JOIN {EVENTS_TABLE} e "
        "ON e.session_id = s.session_id AND e.version = s.version "
        f"JOIN {SIGNERS_TABLE} g ON g.did = s.signer "
        f"WHERE s.session_id={placeholder} "
    )


def unanchored(s: StoredEvent) -> LedgerError:
    return LedgerError(
        f"cannot store a snapshot of session {session_key(s.originator_id)} at version "
        f"{s.originator_version}: the session has no version {s.originator_version} in the "
        "ledger to anchor it to (snapshot the session at a version it has)"
    )


def read_only() -> LedgerError:
    return LedgerError("this ledger was opened read-only (no node identity): cannot snapshot")


def snapshot_row(identity: NodeIdentity, s: StoredEvent, head: bytes) -> tuple[Any, ...]:
    """(session_id, version, topic, state, head_hash, signer, signature) of a new snapshot."""
    sid = session_key(s.originator_id)
    digest = snapshot_hash(sid.encode(), s.originator_version, s.topic.encode(), s.state, head)
    return (
        sid, s.originator_version, s.topic, s.state, head, identity.did, identity.sign(digest)
    )  # fmt: skip


class _RejectCounter(Protocol):
    rejected: int


def trusted_snapshots(
    counter: _RejectCounter, originator_id: UUID | str, rows: Iterable[Any], limit: int | None
) -> list[StoredEvent]:
    """The rows of ``snapshot_select`` whose signature and head hash check out, in order."""
    sid = session_key(originator_id)
    wanted = limit if limit is not None else -1
    found: list[StoredEvent] = []
    for version, topic, state, head, signer, signature, chain_hash in rows:
        state, head = bytes(state), bytes(head)
        digest = snapshot_hash(sid.encode(), version, topic.encode(), state, head)
        if (
            chain_hash is None
            or bytes(chain_hash) != head
            or not verify_did_signature(signer, bytes(signature), digest)
        ):
            counter.rejected += 1
            log.warning(
                "snapshot of session %s at version %s does not match the signed chain; "
                "ignored", sid, version,
            )  # fmt: skip
            continue
        found.append(
            StoredEvent(
                originator_id=originator_id,
                originator_version=version,
                topic=topic,
                state=state,
            )
        )
        if len(found) == wanted:
            break
    return found


# The application recorder's write(): a transaction of this node (see the module's docstring).
WriteTransaction = Callable[[], AbstractContextManager[Any]]


class SignedSnapshotRecorder(SQLiteAggregateRecorder):
    def __init__(
        self,
        datastore: SQLiteDatastore,
        *,
        identity: NodeIdentity | None,
        write: WriteTransaction,
    ) -> None:
        super().__init__(datastore, events_table_name=SNAPSHOTS_TABLE)
        self.identity = identity
        self.write = write
        self.rejected = 0  # snapshots found untrustworthy and skipped

    def construct_create_table_statements(self) -> list[str]:
        return []  # created with the ledger schema

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return None
        if self.identity is None:
            raise read_only()
        with self.write() as c:
            for s in stored_events:
                sid = session_key(s.originator_id)
                c.execute(
                    f"SELECT event_hash FROM {EVENTS_TABLE} WHERE session_id=? AND version=?",
                    (sid, s.originator_version),
                )
                row = c.fetchone()
                if row is None:
                    raise unanchored(s)
                c.execute(
                    f"INSERT OR REPLACE INTO {SNAPSHOTS_TABLE} (session_id, version, topic, state, "
                    "head_hash, signer, signature) VALUES (?,?,?,?,?,?,?)",
                    snapshot_row(self.identity, s, bytes(row[0])),
                )
        return None

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        sid = session_key(originator_id)
        statement = snapshot_select("?")
        params: list[Any] = [sid]
        if gt is not None:
            statement += "AND s.version>? "
            params.append(gt)
        if lte is not None:
            statement += "AND s.version<=? "
            params.append(lte)
        statement += "ORDER BY s.version " + ("DESC" if desc else "ASC")
        try:
            with self.datastore.transaction(commit=False) as c:
                c.execute(statement, params)
                # Rows are read one at a time and reading stops at the first trusted one: a long
                # session has hundreds of older snapshots, and reading them all cost ~10 ms of
                # a 100k-event replay (docs/benchmarks.md).
                return trusted_snapshots(self, originator_id, iter(c.fetchone, None), limit)
        except sqlite3.DatabaseError as e:
            log.warning("snapshots of session %s unreadable (%s); replaying from events", sid, e)
            return []
