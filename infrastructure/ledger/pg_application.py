"""PostgresSessionLedger: the SessionLedger on PostgreSQL, for several nodes sharing one ledger.

``SessionLedger("postgresql://...")`` returns one of these. Opening it checks the ledger schema
(creating or migrating it when allowed — that needs the schema owner's credentials, nodes
normally connect with the node role). The node registers as a signer with its first write
(chain.py). Everything else — mapper, sealed fields, snapshots, checkpoints, group commit,
closing — is the SessionLedger's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    StoredEvent,
)
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresDatastore, PostgresFactory
from eventsourcing.utils import Environment
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger.application import SessionLedger
from l2_session.infrastructure.ledger.chain import session_key, version_filter
from l2_session.infrastructure.ledger.live import (
    live_sessions_parameters,
    live_sessions_statement,
    session_ids,
)
from l2_session.infrastructure.ledger.pg_recorder import SignedPostgresRecorder
from l2_session.infrastructure.ledger.pg_schema import open_meta
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from l2_session.infrastructure.ledger.schema import (
    CHECKPOINTS_TABLE,
    COSIGNATURES_TABLE,
    EVENTS_TABLE,
    SIGNERS_TABLE,
    SNAPSHOTS_TABLE,
)
from l2_session.infrastructure.ledger.snapshots import (
    WriteTransaction,
    read_only,
    snapshot_row,
    snapshot_select,
    trusted_snapshots,
    unanchored,
)
from psycopg.rows import tuple_row

POOL_SIZE = 4  # appends use one connection at a time (group commit); reads and LISTEN the rest


class PostgresSnapshotRecorder(PostgresAggregateRecorder):
    """Signed snapshots (snapshots.py) in the PostgreSQL ledger schema."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        identity: NodeIdentity | None,
        write: WriteTransaction,
    ) -> None:
        super().__init__(datastore, events_table_name=SNAPSHOTS_TABLE)
        self.sql_create_statements = []  # created with the ledger schema
        self.datastore.db_type_names.discard(self.stored_event_type_name)
        self.identity = identity
        self.write = write
        self.rejected = 0  # snapshots found untrustworthy and skipped
        schema = datastore.schema
        self._anchor = (
            f"SELECT event_hash FROM {schema}.{EVENTS_TABLE} WHERE session_id=%s AND version=%s"
        )
        self._upsert = (
            f"INSERT INTO {schema}.{SNAPSHOTS_TABLE} (session_id, version, topic, state, "
            "head_hash, signer, signature) VALUES (%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (session_id, version) DO UPDATE SET topic=EXCLUDED.topic, "
            "state=EXCLUDED.state, head_hash=EXCLUDED.head_hash, signer=EXCLUDED.signer, "
            "signature=EXCLUDED.signature"
        )
        # snapshot_select names unqualified tables; the schema goes in front of each.
        self._select = (
            snapshot_select("%s")
            .replace(f"FROM {SNAPSHOTS_TABLE} ", f"FROM {schema}.{SNAPSHOTS_TABLE} ")
            .replace(f"JOIN {EVENTS_TABLE} ", f"JOIN {schema}.{EVENTS_TABLE} ")
            .replace(f"JOIN {SIGNERS_TABLE} ", f"JOIN {schema}.{SIGNERS_TABLE} ")
        )

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return None
        if self.identity is None:
            raise read_only()
        with self.write() as cur:
            for s in stored_events:
                row = cur.execute(
                    self._anchor, (session_key(s.originator_id), s.originator_version)
                ).fetchone()
                if row is None:
                    raise unanchored(s)
                cur.execute(self._upsert, snapshot_row(self.identity, s, bytes(row[0])))
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
        # The limit counts trusted snapshots only, so rows are read in growing pages until
        # enough are trusted: a long session has hundreds of snapshots, and reading them all
        # on every replay cost ~10 ms on SQLite (docs/benchmarks.md).
        tail, params = version_filter("s.version", "%s", gt=gt, lte=lte, desc=desc, limit=None)
        statement = self._select + tail + " LIMIT %s OFFSET %s"
        params.insert(0, session_key(originator_id))
        found: list[StoredEvent] = []
        page, offset = 4, 0
        with (
            self.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cur,
        ):
            while True:
                rows = cur.execute(statement, [*params, page, offset]).fetchall()
                wanted = None if limit is None else limit - len(found)
                found += trusted_snapshots(self, originator_id, rows, wanted)
                if len(rows) < page or (limit is not None and len(found) >= limit):
                    return found
                offset, page = offset + page, page * 4


class PostgresSessionLedger(SessionLedger):
    """A SessionLedger whose store is a PostgreSQL schema (see pg_url.py for the URL)."""

    pg: PostgresLocation

    def _open_location(self, location: str | Path, *, create: bool) -> tuple[dict[str, str], bool]:
        self.pg = PostgresLocation.parse(location)
        self.location = self.pg.redacted()
        self._meta = open_meta(self.pg, create=create, created_at_us=self.clock.wall_us())
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": self.pg.dbname,
            "POSTGRES_HOST": self.pg.host,
            "POSTGRES_PORT": str(self.pg.port),
            "POSTGRES_USER": self.pg.user,
            "POSTGRES_PASSWORD": self.pg.password,
            "POSTGRES_SCHEMA": self.pg.schema,
            "POSTGRES_LOCK_TIMEOUT": str(self._lock_timeout),
            "POSTGRES_POOL_SIZE": str(POOL_SIZE),
            "POSTGRES_MAX_OVERFLOW": str(POOL_SIZE),
        }
        return env, False

    def construct_factory(self, env: Environment) -> InfrastructureFactory[Any]:
        factory = PostgresFactory(env)
        # libpq options from the URL (sslmode, sslrootcert, ...) that eventsourcing's datastore
        # has no setting for; the pool has not connected yet.
        kwargs = factory.datastore.pool.kwargs
        assert isinstance(kwargs, dict)
        kwargs.update(dict(self.pg.options))
        return factory

    @property
    def datastore(self) -> PostgresDatastore:  # type: ignore[override]
        factory = self.factory
        assert isinstance(factory, PostgresFactory)
        return factory.datastore

    def construct_recorder(self) -> ApplicationRecorder:
        return SignedPostgresRecorder(
            self.datastore,
            identity=self.identity,
            clock=self.clock,
            group_commit=self._group_commit,
            durability=self._durability,
        )

    def _snapshot_recorder(self) -> AggregateRecorder:
        return PostgresSnapshotRecorder(
            self.datastore, identity=self.identity, write=self.ledger_recorder.write
        )

    def _open_recorder(self, must_create: bool) -> None:
        recorder = self.recorder
        assert isinstance(recorder, SignedPostgresRecorder)
        recorder.set_meta(self._meta)

    _mark = "%s"

    @property
    def _checkpoints_table(self) -> str:  # type: ignore[override]
        return f"{self.pg.schema}.{CHECKPOINTS_TABLE}"

    @property
    def _cosignatures_table(self) -> str:  # type: ignore[override]
        return f"{self.pg.schema}.{COSIGNATURES_TABLE}"

    @property
    def _signers_table(self) -> str:  # type: ignore[override]
        return f"{self.pg.schema}.{SIGNERS_TABLE}"

    def signers(self) -> set[str]:
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(f"SELECT did FROM {self.pg.schema}.{SIGNERS_TABLE}").fetchall()
        return {row[0] for row in rows}

    def live_session_ids(self, opened_topic: str, final_topics: Sequence[str]) -> list[UUID]:
        signer = None if self.identity is None else self.identity.did
        statement = live_sessions_statement(
            f"{self.pg.schema}.{EVENTS_TABLE}", "%s", final_topics, by_signer=signer is not None
        )
        parameters = live_sessions_parameters(opened_topic, final_topics, signer)
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            return session_ids(cur.execute(statement, parameters).fetchall())
