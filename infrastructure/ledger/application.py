"""SessionLedger: the eventsourcing Application whose store is the signed, chained ledger."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, cast
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    ProgrammingError,
    Repository,
)
from eventsourcing.domain import (
    BaseAggregate,
    CanMutateProtocol,
    DomainEventProtocol,
    MutableOrImmutableAggregate,
)
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    EventStore,
    InfrastructureFactory,
    Mapper,
    Recording,
    Transcoding,
)
from eventsourcing.sqlite import SQLiteFactory
from eventsourcing.utils import Environment
from l2_session.domain.session.states import TRANSITIONS, State, Trigger
from l2_session.infrastructure.clock import SystemClock, TimeSource
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger.chain import LedgerRecorder
from l2_session.infrastructure.ledger.checkpoint import Checkpoint
from l2_session.infrastructure.ledger.codec import (
    CanonicalJSONTranscoder,
    FieldSealer,
    LedgerMapper,
)
from l2_session.infrastructure.ledger.errors import ProofRequestError
from l2_session.infrastructure.ledger.groupcommit import GroupCommitConfig
from l2_session.infrastructure.ledger.live import (
    live_sessions_parameters,
    live_sessions_statement,
    session_ids,
)
from l2_session.infrastructure.ledger.recorder import SignedSQLiteRecorder
from l2_session.infrastructure.ledger.schema import (
    CHECKPOINTS_TABLE,
    COSIGNATURES_TABLE,
    EVENTS_TABLE,
    SIGNERS_TABLE,
    check_sqlite_ledger_file,
)
from l2_session.infrastructure.ledger.snapshots import SignedSnapshotRecorder, StorageCipher
from l2_session.infrastructure.ledger.sqlite_store import SYNCHRONOUS, Durability, LedgerDatastore
from l2_session.infrastructure.ledger.tree import ConsistencyProof, InclusionProof

log = logging.getLogger(__name__)

# -- replay without eventsourcing's per-event runtime-protocol check ---------------------------
_MUTABLE_EVENT_TYPES: set[type] = set()


def replay_events(aggregate: Any, events: Iterable[Any]) -> Any:
    """eventsourcing's ``project_aggregate``, checking each event *type* once, not each event.

    ``project_aggregate`` asserts ``isinstance(event, CanMutateProtocol)`` for every event: a
    runtime-checkable protocol, which costs about half of replaying a decoded event on Python
    3.11. The check answers the same for every instance of a class (``mutate`` is a method), so
    it is made once per event class and remembered; then each event is applied with its own
    ``mutate``, exactly as ``project_aggregate`` does. An event that cannot mutate raises
    ``ProgrammingError`` naming its class (``project_aggregate`` fails a bare assert).
    """
    known = _MUTABLE_EVENT_TYPES
    for event in events:
        cls = type(event)
        if cls not in known:
            if not isinstance(event, CanMutateProtocol):
                raise ProgrammingError(
                    f"cannot replay {cls.__qualname__}: it has no mutate() (CanMutateProtocol)"
                )
            known.add(cls)
        aggregate = event.mutate(aggregate)
    return aggregate


# -- extra snapshots where a resumption starts ---------------------------------------------
SnapshotWhen = Callable[[Any], bool]
"""Given an event being saved, whether to snapshot its session at that event's version."""

#: The states a resumption starts from (``initiate_resumption`` is accepted there: the table,
#: domain/session/states.py).
RESUMABLE_STATES: Final = frozenset(
    s.value for s, row in TRANSITIONS.items() if Trigger.INITIATE_RESUMPTION in row
)
# (trigger, state) of the events that *enter* a resumable state from another state, derived
# from the transition table: a trigger that only loops in those states (a message queued while
# suspended) is not among them, so a long silence does not snapshot every queued message.
_ENTERING_RESUMABLE: Final = frozenset(
    (trigger.value, target.value)
    for source, row in TRANSITIONS.items()
    for trigger, target in row.items()
    if isinstance(target, State) and target.value in RESUMABLE_STATES and target != source
)


def snapshot_on_entering_resumable_state(event: Any) -> bool:
    """The session manager's default ``snapshot_when``: the event that takes a session into
    ``suspended`` or ``failed`` (SPEC-018 §3.1), the states ``resume`` starts from. Restoring
    such a session after a restart then starts from that snapshot and replays only what
    followed it (usually nothing). Events without ``trigger``/``state`` (other aggregates)
    never match."""
    return (getattr(event, "trigger", None), getattr(event, "state", None)) in _ENTERING_RESUMABLE


# Inclusion proofs asked together are read this many to a statement (a statement's parameters
# and parts are bounded: SQLite takes at most 32,766 and 500).
PROOFS_PER_READ = 1000


class LedgerRepository(Repository[UUID]):
    """eventsourcing's Repository, with a cheap answer for a session the ledger does not hold.

    With snapshots, eventsourcing looks a session up twice (its newest snapshot, then the events
    after it), each in its own read transaction. A session manager asks about sessions it has
    never seen on every new handshake (``SessionManager._find``: is this conversation one it
    had before a restart?); one probe for the session's first event answers those in one read,
    at the price of that probe for sessions that exist (whose replay costs far more).

    Replay uses ``replay_events`` unless a ``projector_func`` is passed: the same state as
    eventsourcing's ``project_aggregate``, without its per-event runtime-protocol check.
    """

    def get(self, aggregate_id: UUID, *, version: int | None = None, **kwargs: Any) -> Any:
        probe = self.snapshot_store is not None and version is None and not self.cache
        if probe and not self._holds(aggregate_id):
            raise AggregateNotFoundError(aggregate_id)
        kwargs.setdefault("projector_func", replay_events)
        return super().get(aggregate_id, version=version, **kwargs)

    def _holds(self, aggregate_id: UUID) -> bool:
        recorder = self.event_store.recorder
        if isinstance(recorder, SignedSQLiteRecorder):
            return recorder.has_session(aggregate_id)
        return bool(recorder.select_events(aggregate_id, limit=1))


_FLAVOURS: list[tuple[Callable[[str | Path], bool], Callable[[], type[SessionLedger]]]] = []
"""The stores besides SQLite: (accepts a location, the ``SessionLedger`` subclass for it)."""


class SessionLedger(Application[UUID]):
    """Sessions (any eventsourcing aggregates) saved as signed, hash-chained ledger events.

    ``SessionLedger(path, identity=..., storage_key=...)`` opens or creates a ledger file.
    ``save(*aggregates)`` appends their new events (group-committed, durable on return by
    default); ``repository.get(id)`` replays a session, from a verified snapshot when one exists.
    Without ``identity`` the ledger is read-only (for auditors); without ``storage_key``, secret
    fields cannot be written and read back as ``SealedValue`` placeholders.

    Snapshots (with a storage key and a ``snapshot_interval``): by every save that reaches or
    crosses a multiple of the interval (of the session as that save left it), and by every
    save with an event ``snapshot_when(event)`` accepts — by default the events
    that take a session into a state ``resume`` starts from (``suspended``, ``failed``), so a
    session restored to be resumed replays (nearly) nothing, whatever the interval. Pass
    ``snapshot_when=None`` for interval snapshots only; ``snapshot_interval=None`` turns all
    snapshots off.

    ``location`` may also be a ``postgresql://`` URL: like ``pathlib.Path``, the constructor
    then returns the PostgreSQL flavour, ``PostgresSessionLedger`` (pg_application.py). A
    flavour is a subclass that registers itself with ``add_flavour`` (the package's
    ``__init__.py`` does it for PostgreSQL), so this class names none of them.
    """

    name = "SessionLedger"
    # The largest page ``notification_log`` serves (eventsourcing's default is 10, too small
    # for the ledger's readers: a projection reads 500 positions a page by default). 1,000
    # events are ~0.3 MB typically and 64 MiB at most (the payload limit, format.py).
    log_section_size = 1000

    @staticmethod
    def add_flavour(
        opens: Callable[[str | Path], bool], flavour: Callable[[], type[SessionLedger]]
    ) -> None:
        """``SessionLedger(location)`` returns a ``flavour()`` for a location that ``opens``
        accepts (the flavour's class is asked for only then, so that its imports wait)."""
        _FLAVOURS.append((opens, flavour))

    def __new__(cls, location: str | Path, *args: Any, **kwargs: Any) -> SessionLedger:
        if cls is SessionLedger:
            for opens, flavour in _FLAVOURS:
                if opens(location):
                    return super().__new__(flavour())
        return super().__new__(cls)

    def __init__(
        self,
        location: str | Path,
        *,
        identity: NodeIdentity | None = None,
        storage_key: bytes | None = None,
        clock: TimeSource | None = None,
        create: bool = True,
        durability: Durability = "full",
        group_commit: GroupCommitConfig | None = None,
        snapshot_interval: int | None = 20,
        snapshot_when: SnapshotWhen | None = snapshot_on_entering_resumable_state,
        lock_timeout: int = 30,
        transcodings: Iterable[Transcoding] = (),
    ) -> None:
        if durability not in SYNCHRONOUS:
            raise ValueError(f"durability must be one of {sorted(SYNCHRONOUS)}, got {durability!r}")
        if snapshot_interval is not None and snapshot_interval < 1:
            raise ValueError(f"snapshot_interval must be >= 1 or None, got {snapshot_interval!r}")
        self.identity = identity
        self.clock: TimeSource = clock or SystemClock()
        self._storage_key = storage_key
        self._durability: Durability = durability
        self._group_commit = group_commit
        self._lock_timeout = lock_timeout
        self._transcodings = tuple(transcodings)
        self.snapshot_interval = snapshot_interval if storage_key is not None else None
        self.snapshot_when = snapshot_when
        env, must_create = self._open_location(location, create=create and identity is not None)
        env["CREATE_TABLE"] = "n"
        env["IS_SNAPSHOTTING_ENABLED"] = "y" if self.snapshot_interval else "n"
        self.snapshot_failures = 0  # automatic snapshots that could not be written (logged)
        # Called after each save with the events it appended and their aggregates (on the
        # saving thread); what one raises is logged, never the save's failure (it committed).
        self.on_saved: list[Callable[[ProcessingEvent[UUID]], None]] = []
        super().__init__(env=env)
        self._open_recorder(must_create)

    # -- backend hooks (pg_application.py overrides these) ----------------------------------
    def _open_location(self, location: str | Path, *, create: bool) -> tuple[dict[str, str], bool]:
        """Check the ledger file before anything is written; eventsourcing's settings for it."""
        self.path = Path(location)
        must_create = check_sqlite_ledger_file(self.path, create=create)
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(self.path)}, (
            must_create
        )

    def _open_recorder(self, must_create: bool) -> None:
        recorder = self.recorder
        assert isinstance(recorder, SignedSQLiteRecorder)
        if must_create:
            recorder.create_table()
        else:
            recorder.load_meta()

    _checkpoints_table = CHECKPOINTS_TABLE
    _cosignatures_table = COSIGNATURES_TABLE
    _signers_table = SIGNERS_TABLE
    _mark = "?"

    # -- eventsourcing construction hooks ---------------------------------------------------
    def construct_env(self, name: str, env: Any = None) -> Environment:
        return Environment(
            name, dict(env or {})
        )  # never read os.environ: configuration is explicit

    def construct_factory(self, env: Environment) -> InfrastructureFactory[Any]:
        factory = SQLiteFactory(env)
        factory.datastore.close()
        factory.datastore = LedgerDatastore(str(self.path), self._durability, self._lock_timeout)
        return factory

    @property
    def datastore(self) -> LedgerDatastore:
        factory = self.factory
        assert isinstance(factory, SQLiteFactory)
        assert isinstance(factory.datastore, LedgerDatastore)
        return factory.datastore

    def construct_mapper(self) -> Mapper[UUID]:
        mapper = LedgerMapper(FieldSealer(self._storage_key))
        for transcoding in self._transcodings:
            mapper.transcoder.register(transcoding)  # type: ignore[attr-defined]
        return mapper

    def construct_repository(self) -> Repository[UUID]:
        return LedgerRepository(event_store=self.events, snapshot_store=self.snapshots)

    def construct_recorder(self) -> ApplicationRecorder:
        return SignedSQLiteRecorder(
            self.datastore,
            identity=self.identity,
            clock=self.clock,
            group_commit=self._group_commit,
        )

    def construct_snapshot_store(self) -> EventStore[UUID]:
        assert self._storage_key is not None
        transcoder = CanonicalJSONTranscoder()
        for transcoding in self._transcodings:
            transcoder.register(transcoding)
        mapper: Mapper[UUID] = Mapper(
            transcoder=transcoder, cipher=StorageCipher(self._storage_key)
        )
        return EventStore(mapper=mapper, recorder=self._snapshot_recorder())

    def _snapshot_recorder(self) -> AggregateRecorder:
        return SignedSnapshotRecorder(
            self.datastore, identity=self.identity, write=self.ledger_recorder.write
        )

    @property
    def ledger_recorder(self) -> LedgerRecorder:
        return cast(LedgerRecorder, self.recorder)

    @property
    def ledger_id(self) -> str:
        return self.ledger_recorder.ledger_id

    def save(
        self,
        *objs: MutableOrImmutableAggregate[UUID] | DomainEventProtocol[UUID] | None,
        **kwargs: Any,
    ) -> list[Recording[UUID]]:
        """Append the new events of ``objs`` (Application.save, with a cheaper collection)."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for obj in objs:
            # eventsourcing checks every object against runtime-checkable protocols, which costs
            # more than the rest of collecting on Python 3.11; an Aggregate is collected directly.
            if isinstance(obj, BaseAggregate):
                processing_event.events.extend(obj.collect_events())
                processing_event.aggregates[obj.id] = obj
            else:
                processing_event.collect_events(obj)
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        for listener in self.on_saved:
            try:
                listener(processing_event)
            except Exception:
                log.exception("a listener of the ledger's saves raised; the save stands")
        return recordings

    def close(self) -> None:
        """Close the ledger. Saves already under way are committed first; a save after this
        raises ``LedgerClosed``. Idempotent."""
        self.ledger_recorder.close()
        super().close()

    # -- snapshots: where a save crosses a multiple of `snapshot_interval`, and where ------
    # -- `snapshot_when` says; of the session as this save left it -----------------------
    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        interval = self.snapshot_interval
        if not interval or self.snapshots is None or self.identity is None:
            return
        when = self.snapshot_when
        due: dict[UUID, int] = {}  # session -> the newest version of this save that is due
        for event in processing_event.events:
            version = event.originator_version
            if version % interval and not (when is not None and when(event)):
                continue
            due[event.originator_id] = version
        for session, version in due.items():
            try:
                self._take_snapshot(processing_event, session, version)
            except Exception:
                # The events are committed: a snapshot is a cache, and failing to write one
                # must not report a committed save as failed (its caller would retry or give
                # up wrongly). Replay then starts from an older snapshot.
                self.snapshot_failures += 1
                log.warning(
                    "snapshot of session %s at version %s not written (the save is committed; "
                    "replay starts from an older snapshot)", session, version,
                    exc_info=True,
                )  # fmt: skip

    def _take_snapshot(
        self, processing_event: ProcessingEvent[UUID], session: UUID, version: int
    ) -> None:
        """A snapshot of ``session`` at or after the due ``version``. A saved aggregate is
        snapshotted as it is in memory, at the version this save left it: every event up to
        that version has just committed, and a snapshot is a cache that replay may start from
        at any version (a save of many events that crosses the interval snapshots once, at
        its end, instead of replaying the ledger up to each multiple). Events saved without
        their aggregate are snapshotted at ``version`` from the ledger."""
        assert self.snapshots is not None
        aggregate = processing_event.aggregates.get(session)
        if aggregate is not None and aggregate.version >= version:
            snapshot_class: Any = getattr(type(aggregate), "Snapshot")  # noqa: B009
            self.snapshots.put([snapshot_class.take(aggregate)])
        else:
            self.take_snapshot(session, version=version, projector_func=replay_events)

    # -- checkpoints and signers ----------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        """Sign the ledger's current tree head (size, Merkle root, head event hash, time) as a
        C2SP checkpoint and record it in the ledger, read and written in one transaction."""
        if self.identity is None:
            raise PermissionError("a read-only ledger (no identity) cannot sign checkpoints")
        recorder = self.ledger_recorder
        with recorder.write() as cur:
            size, head, tree_root = recorder.tree_head(cur)
            cp = Checkpoint.sign(
                self.identity, self.ledger_id, size, head, self.clock.wall_us(), tree_root
            )
            mark = self._mark
            cur.execute(
                f"INSERT INTO {self._checkpoints_table} (position, text) VALUES ({mark}, {mark})",
                (size, cp.to_text()),
            )
        return cp

    def checkpoints(self) -> list[Checkpoint]:
        """The checkpoints recorded in the ledger, oldest first (as stored: verify() checks
        them)."""
        return [cp for _, cp in self.stored_checkpoints()]

    def stored_checkpoints(self, *, newest: int | None = None) -> list[tuple[int, Checkpoint]]:
        """(row id, checkpoint) of the checkpoints recorded in the ledger, oldest first; the
        ``newest`` few only, if given."""
        with self.ledger_recorder.reading() as cur:
            if newest is None:
                cur.execute(f"SELECT id, text FROM {self._checkpoints_table} ORDER BY id")
            else:
                cur.execute(
                    f"SELECT id, text FROM {self._checkpoints_table} ORDER BY id DESC "
                    f"LIMIT {self._mark}",
                    (newest,),
                )
            rows = cur.fetchall()
        found = [(int(row_id), Checkpoint.parse(text)) for row_id, text in rows]
        return found if newest is None else found[::-1]

    def record_cosignature(
        self, checkpoint_id: int, witness: str, cosignature: str, received_at_us: int
    ) -> None:
        """Keep a witness's cosignature beside the checkpoint (row ``checkpoint_id``) it signs;
        witness.py checks it first."""
        mark = self._mark
        with self.ledger_recorder.write() as cur:
            cur.execute(
                f"INSERT INTO {self._cosignatures_table} "
                f"(checkpoint_id, witness, cosignature, received_at) "
                f"VALUES ({mark}, {mark}, {mark}, {mark})",
                (checkpoint_id, witness, cosignature, received_at_us),
            )

    def cosignatures_of(self, checkpoint_id: int) -> list[tuple[str, str]]:
        """(witness did, cosignature line) of the cosignatures kept for one checkpoint."""
        with self.ledger_recorder.reading() as cur:
            cur.execute(
                f"SELECT witness, cosignature FROM {self._cosignatures_table} "
                f"WHERE checkpoint_id={self._mark} ORDER BY id",
                (checkpoint_id,),
            )
            return [(str(a), str(b)) for a, b in cur.fetchall()]

    def cosignatures(self) -> list[tuple[int, str, str]]:
        """(checkpoint id, witness did, cosignature line) of every cosignature kept, oldest
        first."""
        with self.ledger_recorder.reading() as cur:
            cur.execute(
                f"SELECT checkpoint_id, witness, cosignature FROM {self._cosignatures_table} "
                "ORDER BY id"
            )
            return [(int(a), str(b), str(c)) for a, b, c in cur.fetchall()]

    # -- the Merkle tree and its proofs (tree.py) ------------------------------------------
    def tree_head(self) -> tuple[int, bytes]:
        """(size, Merkle root) of the ledger now: the tree of every event appended."""
        with self.ledger_recorder.reading() as cur:
            size, _, tree_root = self.ledger_recorder.tree_head(cur)
        return size, tree_root

    def inclusion_proof(self, position: int, size: int | None = None) -> InclusionProof:
        """The proof that the event at ``position`` is in the tree of the first ``size``
        events (default: all of them): O(log size) stored hashes, read in one statement (and
        the head, when ``size`` is not given or not known to be stored)."""
        recorder = self.ledger_recorder
        if isinstance(position, bool) or not isinstance(position, int):
            raise ProofRequestError(f"position {position!r} is not a whole number")
        with recorder.lone_read() as cur:
            size = self._size(cur, size)
            if not 1 <= position <= size:
                raise ProofRequestError(
                    f"position {position} is not in a tree of {size} events (positions 1..{size})"
                )
            event_hash, hashes, tree_root = recorder.tree_sql.inclusion_proof(
                cur, position - 1, size
            )
        return InclusionProof(self.ledger_id, position, size, event_hash, tree_root, tuple(hashes))

    def inclusion_proofs(
        self, positions: Sequence[int], size: int | None = None
    ) -> list[InclusionProof]:
        """``inclusion_proof`` of each of ``positions``, from one statement per
        ``PROOFS_PER_READ`` of them, in one read transaction: what an export of many events
        asks (their shared upper nodes are read once)."""
        recorder = self.ledger_recorder
        for position in positions:
            if isinstance(position, bool) or not isinstance(position, int):
                raise ProofRequestError(f"position {position!r} is not a whole number")
        with recorder.lone_read() as cur:
            size = self._size(cur, size)
            for position in positions:
                if not 1 <= position <= size:
                    raise ProofRequestError(
                        f"position {position} is not in a tree of {size} events "
                        f"(positions 1..{size})"
                    )
            found: list[tuple[bytes, list[bytes]]] = []
            tree_root = recorder.tree_sql.root(cur, size)
            for start in range(0, len(positions), PROOFS_PER_READ):
                some, _ = recorder.tree_sql.inclusion_proofs(
                    cur, [p - 1 for p in positions[start : start + PROOFS_PER_READ]], size
                )
                found += some
        ledger_id = self.ledger_id
        return [
            InclusionProof(ledger_id, p, size, event, tree_root, tuple(hashes))
            for p, (event, hashes) in zip(positions, found, strict=True)
        ]

    def consistency_proof(self, old_size: int, size: int | None = None) -> ConsistencyProof:
        """The proof that the tree of ``old_size`` events is a prefix of the tree of ``size``
        (default: all events): nothing in the first was changed or removed since."""
        recorder = self.ledger_recorder
        if isinstance(old_size, bool) or not isinstance(old_size, int):
            raise ProofRequestError(f"old size {old_size!r} is not a whole number")
        with recorder.lone_read() as cur:
            size = self._size(cur, size)
            if not 1 <= old_size <= size:
                raise ProofRequestError(
                    f"no consistency proof from {old_size} to {size} events (1 <= old <= new)"
                )
            hashes, old_root, tree_root = recorder.tree_sql.consistency_proof(cur, old_size, size)
        return ConsistencyProof(self.ledger_id, old_size, size, old_root, tree_root, tuple(hashes))

    def _size(self, cur: Any, size: int | None) -> int:
        """``size``, checked against the ledger's head (default: the head). A ledger only
        grows, so a size at or below a head seen before needs no read."""
        recorder = self.ledger_recorder
        recorder.require_tree()
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise ProofRequestError(f"tree size {size!r} is not a whole number")
        tree = recorder.tree_sql
        if size is None or not 1 <= size <= tree.head_seen:
            tree.seen(recorder._head_in(cur)[0])
        head = tree.head_seen
        if size is None:
            return head
        if not 1 <= size <= head:
            raise ProofRequestError(f"tree size {size!r}: the ledger holds 1..{head} events")
        return size

    def signers(self) -> set[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT did FROM {SIGNERS_TABLE}")
            return {row[0] for row in c.fetchall()}

    def signer_registrations(self) -> list[tuple[str, int, bytes]]:
        """(did, registered_at µs, signature) of every registered signer (§7), as stored."""
        with self.ledger_recorder.reading() as cur:
            cur.execute(
                f"SELECT did, registered_at, signature FROM {self._signers_table} ORDER BY did"
            )
            return [(str(d), int(t), bytes(s)) for d, t, s in cur.fetchall()]

    # -- what a restarted node asks first (live.py) ---------------------------------------
    def live_session_ids(self, opened_topic: str, final_topics: Sequence[str]) -> list[UUID]:
        """The sessions this node opened (first event ``opened_topic``, signed by this
        ledger's identity) whose newest event is none of ``final_topics``: one statement, no
        event decoded (SessionManager.recover, decision 16)."""
        signer = None if self.identity is None else self.identity.did
        statement = live_sessions_statement(
            EVENTS_TABLE, "?", final_topics, by_signer=signer is not None
        )
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, live_sessions_parameters(opened_topic, final_topics, signer))
            return session_ids(c.fetchall())
