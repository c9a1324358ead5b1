"""What every ledger backend does the same way: build the chained, signed rows of an append.

A backend's recorder (SQLite, PostgreSQL) opens the write transaction, serialises writers and
reads the ledger head; this mixin turns a request's stored events into rows — positions, session
and global links, BLAKE3 event hash, Ed25519 signature — so the bytes hashed and signed are the
same on every backend (docs/ledger-format.md). It also keeps the cache of session heads that
spares a lookup per append, names conflicts, and checks rows read back.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from l2_session.infrastructure.clock import TimeSource
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger.codec import LedgerStoredEvent
from l2_session.infrastructure.ledger.errors import (
    ClockWentBackwards,
    ConcurrencyConflict,
    LedgerCorrupted,
    LedgerError,
    SessionChainError,
)
from l2_session.infrastructure.ledger.format import ZERO_HASH, event_hash, lp
from l2_session.infrastructure.ledger.groupcommit import GroupCommitter
from l2_session.infrastructure.ledger.insert_checks import check_event
from l2_session.infrastructure.ledger.merkle import Frontier
from l2_session.infrastructure.ledger.tree import TreeMissing, TreeSQL, grow, grow_inline

SIGNER_DOMAIN = b"l2-session/ledger/signer/v1\n"  # format 1: registered_at not covered
SIGNER_DOMAIN_V2 = b"l2-session/ledger/signer/v2\n"
_I64 = struct.Struct(">q")
# Below this many events, a handoff to the signing thread costs more than it saves.
PARALLEL_SIGN_MIN = 16

# Column order of the rows built here, and of the rows every backend's reads return.
ROW_COLUMNS = (
    "position, session_id, version, topic, timestamp, payload, sealed, "
    "prev_session_hash, prev_global_hash, event_hash, signer, signature"
)
READ_COLUMNS = (
    "position, session_id, version, topic, timestamp, payload, sealed, "
    "prev_session_hash, prev_global_hash, event_hash, signer"
)

Row = tuple[Any, ...]
Heads = dict[str, tuple[int, bytes]]


def session_key(originator_id: UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


def version_filter(
    column: str,
    mark: str,
    *,
    gt: int | None,
    lte: int | None,
    desc: bool,
    limit: int | None,
) -> tuple[str, list[Any]]:
    """The ``AND ... ORDER BY ... LIMIT`` tail of a select of one session's rows by version,
    and its parameters; ``mark`` is the backend's placeholder (``?`` or ``%s``)."""
    sql, params = "", []
    if gt is not None:
        sql += f"AND {column}>{mark} "
        params.append(gt)
    if lte is not None:
        sql += f"AND {column}<={mark} "
        params.append(lte)
    sql += f"ORDER BY {column} " + ("DESC " if desc else "ASC ")
    if limit is not None:
        sql += f"LIMIT {mark}"
        params.append(limit)
    return sql, params


def notification_filter(
    mark: str,
    *,
    start: int | None,
    stop: int | None,
    topics: Sequence[str],
    inclusive_of_start: bool,
) -> tuple[str, list[Any]]:
    """The ``WHERE`` of a select of ledger rows by position (and topic), and its parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    if start is not None:
        clauses.append(f"position>={mark}" if inclusive_of_start else f"position>{mark}")
        params.append(start)
    if stop is not None:
        clauses.append(f"position<={mark}")
        params.append(stop)
    if topics:
        clauses.append(f"topic IN ({','.join([mark] * len(topics))})")
        params.extend(topics)
    return ("WHERE " + " AND ".join(clauses) + " ") if clauses else "", params


NotificationRow = tuple[int, str, int, str, bytes]
"""(position, session id as stored, version, topic, payload): a ledger row as a read model
reads it (``notification_rows``)."""


def row_part(session_id: str, parts: int) -> int:
    """Which of ``parts`` a session's rows fall in when a read is split (``notification_rows``):
    the code of the stored id's last character modulo ``parts`` — the SQL of each recorder
    computes the same."""
    return ord(session_id[-1]) % parts


def signer_statement(ledger_id: str, did: str, registered_at: int | None = None) -> bytes:
    """What a node signs to register as a signer of a ledger: every field of its
    ledger_signers row (format 2). Without ``registered_at``, format 1's statement, which
    did not cover the time; a verifier accepts either (docs/ledger-format.md §7)."""
    if registered_at is None:
        return SIGNER_DOMAIN + lp(ledger_id.encode()) + lp(did.encode())
    return SIGNER_DOMAIN_V2 + lp(ledger_id.encode()) + lp(did.encode()) + _I64.pack(registered_at)


def registration_valid(ledger_id: str, did: str, registered_at: Any, signature: bytes) -> bool:
    """Whether a ledger_signers row's signature is its signer's, over the row (format 2) or
    over format 1's statement."""
    from l2_session.infrastructure.identity import verify_did_signature

    if (
        isinstance(registered_at, int)
        and not isinstance(registered_at, bool)
        and -(2**63) <= registered_at < 2**63
        and verify_did_signature(did, signature, signer_statement(ledger_id, did, registered_at))
    ):
        return True
    return verify_did_signature(did, signature, signer_statement(ledger_id, did))


class LedgerRecorder(Protocol):
    """What the application and tools use of a ledger recorder, whatever its backend."""

    ledger_id: str
    genesis: bytes
    identity: NodeIdentity | None
    committer: GroupCommitter[StoredEvent, list[int]]

    def head(self) -> tuple[int, bytes, int | None]: ...

    def write(self) -> AbstractContextManager[Any]: ...

    def reading(self) -> AbstractContextManager[Any]: ...

    def lone_read(self) -> AbstractContextManager[Any]: ...

    def tree_head(self, cur: Any) -> tuple[int, bytes, bytes]: ...

    def require_tree(self) -> None: ...

    def notification_rows(
        self, after: int, stop: int, part: int = 0, parts: int = 1
    ) -> list[NotificationRow]: ...

    def _head_in(self, cur: Any) -> tuple[int, bytes]: ...

    tree_sql: TreeSQL
    has_tree: bool

    def close(self) -> None: ...


class LedgerChain:
    """Mixin for a ledger recorder. The backend supplies ``_fetch_session_hash`` and
    ``_insert_rows``."""

    identity: NodeIdentity | None
    clock: TimeSource
    verify_on_read: bool

    def _init_chain(
        self,
        identity: NodeIdentity | None,
        clock: TimeSource,
        session_cache_size: int,
        verify_on_read: bool,
    ) -> None:
        self.identity = identity
        self.clock = clock
        self.verify_on_read = verify_on_read
        self._signer = identity.did if identity is not None else None
        self._signer_lp = lp(self._signer.encode()) if self._signer else b""
        self._signer_is_registered = False
        self._session_heads: Heads = {}
        # The right edge of the stored Merkle tree as the last commit of this process left it
        # (tree.py); None until read, and after a failed transaction.
        self._tree: Frontier | None = None
        self._tile: list[bytes] | None = None  # format 3: the last block's nodes so far
        self._session_cache_size = session_cache_size
        self._heads_lock = threading.Lock()
        # One extra signing thread where there is a second core (see _sign_all).
        self._signing_pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2s-sign")
            if identity is not None and (os.cpu_count() or 1) > 1
            else None
        )

    committer: GroupCommitter[StoredEvent, list[int]]
    ledger_id: str
    tree_sql: TreeSQL
    # False for a format-1 ledger opened read-only: it has no ledger_tree to keep.
    has_tree: bool = True

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """eventsourcing's append hook: the events join the next group commit."""
        # No retry on connection errors (eventsourcing's PostgreSQL recorder retries): a commit
        # whose reply was lost would come back as a ConcurrencyConflict for an append that
        # succeeded. The caller sees the connection error and reloads the session instead.
        if self.identity is None:
            raise LedgerError("this ledger was opened read-only (no node identity): cannot append")
        if not stored_events:
            return []
        # Refused here, a bad request fails alone and costs its group-commit batch nothing.
        for event in stored_events:
            check_event(event)
        return self.committer.submit(stored_events)

    # -- this node as a signer of the ledger ---------------------------------------------
    # A node is registered (ledger_signers, docs/ledger-format.md §7) inside its first write
    # transaction — an append, a snapshot, a checkpoint — not when it opens the ledger: opening
    # with the wrong identity, reading, or a restore that fails leaves no trace in that
    # append-only table. Each write transaction registers (an insert that ignores a row already
    # there) until one that did has committed.
    def _signer_to_register(self) -> tuple[str, int, bytes] | None:
        """(did, registered_at, signature) for the write transaction under way to insert, or
        None: read-only, or already registered by a committed transaction of this process."""
        if self.identity is None or self._signer is None or self._signer_is_registered:
            return None
        registered_at = self.clock.wall_us()
        statement = signer_statement(self.ledger_id, self._signer, registered_at)
        return self._signer, registered_at, self.identity.sign(statement)

    def _signer_registered(self) -> None:
        self._signer_is_registered = True

    def close(self) -> None:
        """Refuse appends from now on, once those already submitted are committed (group
        commit drains its queue); then stop the signing thread."""
        self.committer.close()
        if self._signing_pool is not None:
            self._signing_pool.shutdown()

    def _fetch_session_hash(self, cur: Any, sid: str, version: int) -> bytes | None:
        """The stored event hash of ``sid`` at ``version``, read in the open transaction."""
        raise NotImplementedError

    def _insert_rows(self, cur: Any, rows: list[Row]) -> None:
        """Insert event rows (``ROW_COLUMNS``, and in format 4 the tree column after them)."""
        raise NotImplementedError

    def _check_clock(self, timestamp: int, last_ts: int | None, position: int) -> None:
        if last_ts is not None and timestamp < last_ts:
            raise ClockWentBackwards(
                f"the clock reads {timestamp} µs since the epoch, earlier than the "
                f"ledger head's timestamp {last_ts} µs (position {position}); "
                "refusing to append out of time order — fix the system clock"
            )

    def _rows(
        self,
        cur: Any,
        events: Sequence[StoredEvent],
        position: int,
        prev_global: bytes,
        timestamp: int,
    ) -> tuple[list[Row], Heads]:
        signer, signer_lp = self._signer, self._signer_lp
        heads: Heads = {}
        unsigned: list[Row] = []
        hashes: list[bytes] = []
        for event in events:
            sid = session_key(event.originator_id)
            version = event.originator_version
            sid_b = sid.encode()  # check_event admitted the event: these fit the format
            topic_b = event.topic.encode()
            if version == 1:
                prev_session = ZERO_HASH
            else:
                head = heads.get(sid)
                prev_session = (
                    head[1]
                    if head and head[0] == version - 1
                    else self._session_hash(cur, sid, version - 1)
                )
            position += 1
            h = event_hash(
                position, sid_b, version, topic_b, timestamp, event.state,
                prev_session, prev_global, signer_lp,
            )  # fmt: skip
            unsigned.append(
                (
                    position, sid, version, event.topic, timestamp, event.state,
                    getattr(event, "sealed", None), prev_session, prev_global, h, signer,
                )
            )  # fmt: skip
            hashes.append(h)
            heads[sid] = (version, h)
            prev_global = h
        signatures = self._sign_all(hashes)
        return [(*row, sig) for row, sig in zip(unsigned, signatures, strict=True)], heads

    def _sign_all(self, hashes: list[bytes]) -> list[bytes]:
        """Ed25519 signatures of ``hashes``, in order. The chain links hashes, not signatures,
        so a batch is hashed in order first and then signed in two halves at once:
        cryptography releases the GIL while it signs, so a second core halves the cost that
        sets the pace of appends (docs/benchmarks.md)."""
        sign = self.identity.private_key.sign  # type: ignore[union-attr]
        if len(hashes) < PARALLEL_SIGN_MIN or self._signing_pool is None:
            return [sign(h) for h in hashes]
        half = len(hashes) // 2
        later = self._signing_pool.submit(lambda: [sign(h) for h in hashes[half:]])
        return [sign(h) for h in hashes[:half]] + later.result()

    def _session_hash(self, cur: Any, sid: str, version: int) -> bytes:
        with self._heads_lock:
            cached = self._session_heads.get(sid)
        if cached is not None and cached[0] == version:
            return cached[1]
        found = self._fetch_session_hash(cur, sid, version)
        if found is None:
            raise SessionChainError(
                f"session {sid}: cannot append version {version + 1} because version "
                f"{version} is not in the ledger (versions must follow each other)"
            )
        return found

    # -- the Merkle tree, kept in the transaction that appends (tree.py) -------------------
    def _tree_at(self, cur: Any, size: int) -> None:
        """Make ``_tree`` the stored tree's edge at ``size`` events (the head just read under
        the write lock): read again when another writer, or a failure, moved it."""
        if self.has_tree and (self._tree is None or self._tree.size != size):
            self._tree, self._tile = self.tree_sql.frontier(cur, size)

    def _append_rows(self, cur: Any, rows: list[Row]) -> None:
        """Insert ``rows`` (``_insert_rows``) with the tree nodes their events complete — in
        format 4 as each row's tree column, in formats 2 and 3 as ledger_tree rows after them
        — and move ``_tree`` on once they are in: a statement that fails leaves it as it
        was."""
        inline = self.tree_sql.inline
        if not self.has_tree or not rows:
            self._insert_rows(cur, [(*row, None) for row in rows] if inline else rows)
            return
        assert self._tree is not None and self._tree.size == rows[0][0] - 1
        tree = self._tree.copy()
        if inline:
            column = grow_inline(tree, [row[9] for row in rows])
            self._insert_rows(cur, [(*row, c) for row, c in zip(rows, column, strict=True)])
            self._tree = tree
            return
        tile = None if self._tile is None else list(self._tile)
        nodes = grow(tree, (row[9] for row in rows), tile)
        self._insert_rows(cur, rows)
        if nodes:
            cur.executemany(self.tree_sql.insert, nodes)
        self._tree, self._tile = tree, tile

    def _head_in(self, cur: Any) -> tuple[int, bytes]:
        """(position, event hash) of the newest event, read in the open transaction."""
        raise NotImplementedError

    def require_tree(self) -> None:
        """``TreeMissing`` unless the ledger keeps a tree (format 2 or 3), saying how to get one."""
        if not self.has_tree:
            raise TreeMissing(
                "this ledger is in format 1 and has no Merkle tree yet: open it once with its "
                "node's identity (a writer) to build it"
            )

    def tree_head(self, cur: Any) -> tuple[int, bytes, bytes]:
        """(size, event hash at that position, Merkle root) of the ledger as the open
        transaction sees it."""
        if not self.has_tree:
            raise TreeMissing(
                "this ledger is in format 1 and has no Merkle tree yet: open it once with its "
                "node's identity (a writer) to build it"
            )
        position, head = self._head_in(cur)
        return position, head, self.tree_sql.root(cur, position)

    def _remember(self, heads: Heads) -> None:
        with self._heads_lock:
            cache = self._session_heads
            for sid, head in heads.items():
                cache.pop(sid, None)
                cache[sid] = head
            overflow = len(cache) - self._session_cache_size
            if overflow > 0:
                for sid in list(cache)[:overflow]:
                    del cache[sid]

    def _forget_heads(self) -> None:
        # After a failed transaction the cache may hold heads that were never committed, and
        # the tree's edge nodes that were never inserted.
        with self._heads_lock:
            self._session_heads.clear()
        self._tree = None

    def _conflict(self, cur: Any, events: Sequence[StoredEvent]) -> ConcurrencyConflict:
        for event in events:
            sid = session_key(event.originator_id)
            if self._fetch_session_hash(cur, sid, event.originator_version) is not None:
                return ConcurrencyConflict(
                    f"session {sid} version {event.originator_version} was already appended "
                    "by another writer; reload the session and retry the command"
                )
        return ConcurrencyConflict("an event of this append collides with one already stored")

    def _stored_event(self, originator_id: UUID | str, row: Any) -> LedgerStoredEvent:
        """A row of READ_COLUMNS as a stored event, its hash rechecked when verify_on_read."""
        position = row[0]
        try:
            payload = bytes(row[5])
            if self.verify_on_read:
                # Cheap integrity check on every read (a BLAKE3 per event); signatures and
                # chain links are verify()'s job.
                recomputed = event_hash(
                    position, row[1].encode(), row[2], row[3].encode(), row[4], payload,
                    bytes(row[7]), bytes(row[8]), lp(row[10].encode()),
                )  # fmt: skip
                if recomputed != bytes(row[9]):
                    raise LedgerCorrupted(
                        f"event at position {position} (session {row[1]} version {row[2]}) does "
                        "not match its stored hash: the ledger was altered; run verify"
                    )
            sealed = bytes(row[6]) if row[6] is not None else None
        except (TypeError, AttributeError) as e:
            raise LedgerCorrupted(f"event at position {position} is malformed: {e}") from e
        return LedgerStoredEvent(
            originator_id=originator_id,
            originator_version=row[2],
            topic=row[3],
            state=payload,
            sealed=sealed,
            position=position,
        )
