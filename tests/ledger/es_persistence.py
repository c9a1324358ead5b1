"""eventsourcing persistence modules that store into the signed ledger — for tests only.

eventsourcing runs its application test cases (``eventsourcing.tests.application``) once per
persistence module, chosen by the ``PERSISTENCE_MODULE`` environment variable. These factories
give a plain eventsourcing ``Application`` the ledger's own recorders (SignedSQLiteRecorder or
SignedPostgresRecorder, and the signed snapshot recorders), each node key generated, so that
those test cases run unchanged against them. ``SessionLedger`` itself takes no configuration
from the environment; this is the glue a ``create_recorder()`` is for the recorder test cases.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import AggregateRecorder, ApplicationRecorder
from eventsourcing.postgres import PostgresFactory
from eventsourcing.sqlite import SQLiteFactory
from eventsourcing.utils import Environment, EnvType
from l2_session.infrastructure.clock import SystemClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger.chain import LedgerChain
from l2_session.infrastructure.ledger.pg_application import PostgresSnapshotRecorder
from l2_session.infrastructure.ledger.pg_recorder import SignedPostgresRecorder
from l2_session.infrastructure.ledger.pg_schema import open_meta
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from l2_session.infrastructure.ledger.recorder import SignedSQLiteRecorder
from l2_session.infrastructure.ledger.snapshots import SignedSnapshotRecorder
from l2_session.infrastructure.ledger.sqlite_store import LedgerDatastore


class _LedgerRecorders:
    """What both factories share: one node key, the application recorder made first (the
    snapshot recorder writes through it), closing it before the datastore."""

    identity: NodeIdentity
    recorder: LedgerChain | None

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        if purpose != "snapshots" or self.recorder is None:
            raise NotImplementedError(
                f"the ledger stores events in its application recorder, not {purpose!r}"
            )
        return self.snapshot_recorder(self.recorder)

    def snapshot_recorder(self, recorder: Any) -> AggregateRecorder:
        raise NotImplementedError

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        super().close()  # type: ignore[misc]


class SignedLedgerSQLiteFactory(_LedgerRecorders, SQLiteFactory):
    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        db_name = self.datastore.pool.db_name
        self.datastore.close()
        self.datastore = LedgerDatastore(db_name, "normal", lock_timeout=30)
        self.identity = NodeIdentity.generate()
        self.recorder = None

    def application_recorder(self) -> ApplicationRecorder:
        recorder = SignedSQLiteRecorder(self.datastore, identity=self.identity, clock=SystemClock())
        recorder.create_table()
        self.recorder = recorder
        return recorder

    def snapshot_recorder(self, recorder: Any) -> AggregateRecorder:
        return SignedSnapshotRecorder(self.datastore, identity=self.identity, write=recorder.write)


class SignedLedgerPostgresFactory(_LedgerRecorders, PostgresFactory):
    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        self.identity = NodeIdentity.generate()
        self.recorder = None

    def application_recorder(self) -> ApplicationRecorder:
        datastore = self.datastore
        location = PostgresLocation(
            datastore.pool.kwargs["host"],
            int(datastore.pool.kwargs["port"]),
            datastore.pool.kwargs["dbname"],
            datastore.pool.kwargs["user"],
            datastore.pool.kwargs["password"],
            datastore.schema,
            (),
        )
        clock = SystemClock()
        meta = open_meta(location, create=True, created_at_us=clock.wall_us())
        recorder = SignedPostgresRecorder(datastore, identity=self.identity, clock=clock)
        recorder.set_meta(meta)
        self.recorder = recorder
        return recorder

    def snapshot_recorder(self, recorder: Any) -> AggregateRecorder:
        return PostgresSnapshotRecorder(
            self.datastore, identity=self.identity, write=recorder.write
        )
