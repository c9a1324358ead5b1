"""The ledger's guarantees on PostgreSQL: chains, signatures, append-only, concurrency, schema."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
import pytest
from eventsourcing.domain import Aggregate, event
from l2_session.infrastructure.clock import ManualClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import (
    ConcurrencyConflict,
    LedgerError,
    LedgerNotFound,
    NotALedger,
    SessionLedger,
    pg_schema,
)
from l2_session.infrastructure.ledger.pg_application import PostgresSessionLedger
from l2_session.infrastructure.ledger.pg_schema import NODE_ROLE, SCHEMA_VERSION
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from l2_session.infrastructure.ledger.verify import ProblemKind, verify

pytestmark = pytest.mark.postgres


class Counter(Aggregate):
    secret_fields = ("key",)

    @event("Opened")
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.total = 0
        self.key = b""

    @event("Added")
    def add(self, amount: int) -> None:
        self.total += amount

    class KeyRotated(Aggregate.Event):
        secret_fields = ("key",)
        key: bytes

        def apply(self, aggregate: Any) -> None:
            aggregate.key = self.key

    def rotate(self, key: bytes) -> None:
        self.trigger_event(self.KeyRotated, key=key)


@pytest.fixture
def open_pg(pg_url: str) -> Any:
    opened: list[SessionLedger] = []
    storage_key = os.urandom(32)

    def open_ledger(url: str = pg_url, **kwargs: Any) -> SessionLedger:
        kwargs.setdefault("identity", NodeIdentity.generate())
        kwargs.setdefault("storage_key", storage_key)
        ledger = SessionLedger(url, **kwargs)
        opened.append(ledger)
        return ledger

    yield open_ledger
    for ledger in opened:
        ledger.close()


def owner(location: PostgresLocation) -> psycopg.Connection[Any]:
    return psycopg.connect(autocommit=True, **location.connect_kwargs())


def test_a_postgresql_url_opens_the_postgresql_ledger_and_replays(open_pg: Any) -> None:
    ledger = open_pg(snapshot_interval=3)
    assert isinstance(ledger, PostgresSessionLedger)
    session = Counter("peer-a")
    for i in range(7):
        session.add(i)
    session.rotate(b"resumption secret")
    ledger.save(session)
    again = ledger.repository.get(session.id)
    assert (again.total, again.key, again.version) == (21, b"resumption secret", 9)
    report = verify(ledger)
    assert report.ok, report.summary()
    assert (report.events_checked, report.head_position) == (9, 9)


def test_secret_fields_are_sealed_in_the_database(
    open_pg: Any, pg_location: PostgresLocation
) -> None:
    ledger = open_pg()
    session = Counter("peer")
    session.rotate(b"TOP-SECRET-SESSION-KEY")
    ledger.save(session)
    with owner(pg_location) as conn:
        blobs = conn.execute(
            f"SELECT payload, sealed FROM {pg_location.schema}.ledger_events"
        ).fetchall()
    assert all(b"TOP-SECRET" not in bytes(p) + bytes(s or b"") for p, s in blobs)
    assert any(s is not None for _, s in blobs)


def test_history_tables_refuse_update_delete_and_truncate_even_for_the_owner(
    open_pg: Any, pg_location: PostgresLocation
) -> None:
    ledger = open_pg()
    ledger.save(Counter("peer"))
    table = f"{pg_location.schema}.ledger_events"
    with owner(pg_location) as conn:
        for statement, op in (
            (f"UPDATE {table} SET payload = 'x'", "UPDATE"),
            (f"DELETE FROM {table}", "DELETE"),
            (f"TRUNCATE {table}", "TRUNCATE"),
            (f"DELETE FROM {pg_location.schema}.ledger_signers", "DELETE"),
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"append-only: {op}"):
                conn.execute(statement)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)


def test_the_node_role_may_append_and_read_but_not_rewrite(
    open_pg: Any, pg_location: PostgresLocation
) -> None:
    import pgserver

    open_pg().close()  # the owner creates the schema and grants the node role
    admin = pgserver.admin_location()
    login = pgserver.create_login_role(admin, NODE_ROLE)
    try:
        node = PostgresLocation(
            pg_location.host, pg_location.port, pg_location.dbname, login, "",
            pg_location.schema, pg_location.options,
        )  # fmt: skip
        ledger = open_pg(node.url(), snapshot_interval=2)
        session = Counter("peer")
        for i in range(5):
            session.add(i)
        ledger.save(session)  # events, a snapshot, the signer row
        ledger.checkpoint()
        assert ledger.repository.get(session.id).total == 10
        with psycopg.connect(autocommit=True, **node.connect_kwargs()) as conn:
            for statement in (
                f"UPDATE {node.schema}.ledger_events SET payload = 'x'",
                f"DELETE FROM {node.schema}.ledger_events",
                f"TRUNCATE {node.schema}.ledger_checkpoints",
                f"UPDATE {node.schema}.ledger_meta SET value = 'x'",
                f"LOCK TABLE {node.schema}.ledger_events IN EXCLUSIVE MODE",
            ):
                with (
                    pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
                    conn.transaction(),  # LOCK TABLE is only allowed inside one
                ):
                    conn.execute(statement)
        ledger.close()
        assert verify(node.url()).ok
    finally:
        pgserver.drop_role(admin, login)


def test_two_nodes_appending_the_same_session_version_one_wins(open_pg: Any) -> None:
    first, second = open_pg(), open_pg()
    session = Counter("peer")
    first.save(session)
    a, b = first.repository.get(session.id), second.repository.get(session.id)
    a.add(1)
    b.add(2)
    first.save(a)
    with pytest.raises(ConcurrencyConflict, match=rf"session {session.id.hex} version 2"):
        second.save(b)
    assert first.repository.get(session.id).total == 1
    report = verify(first)
    assert report.ok and report.events_checked == 2


def test_a_conflict_fails_only_its_own_request_in_a_group_commit(open_pg: Any) -> None:
    # Many threads append at once, so requests share transactions; every tenth one conflicts.
    winner, loser = open_pg(), open_pg()
    contested = Counter("contested")
    winner.save(contested)
    stale = loser.repository.get(contested.id)
    winner_copy = winner.repository.get(contested.id)
    winner_copy.add(1)
    winner.save(winner_copy)
    outcomes: list[str] = []

    def append(i: int) -> None:
        if i % 10 == 0:
            mine = loser.repository.get(contested.id)
            mine.version = stale.version  # stale: version 2 is taken
            mine.add(5)
            try:
                loser.save(mine)
                outcomes.append("saved-stale")
            except ConcurrencyConflict:
                outcomes.append("conflict")
        else:
            loser.save(Counter(f"peer-{i}"))
            outcomes.append("saved")

    threads = [threading.Thread(target=append, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("conflict") == 4 and outcomes.count("saved") == 36
    report = verify(loser)
    assert report.ok, report.summary()
    assert report.events_checked == 2 + 36


def test_nodes_sharing_a_ledger_extend_one_global_chain(open_pg: Any, pg_url: str) -> None:
    nodes = [open_pg() for _ in range(3)]

    def work(node: SessionLedger) -> None:
        for _ in range(20):
            s = Counter("p")
            s.add(1)
            node.save(s)

    threads = [threading.Thread(target=work, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify(pg_url)
    assert report.ok, report.summary()
    assert report.events_checked == report.head_position == 120
    assert set(report.signers_seen) == {n.identity.did for n in nodes if n.identity}


def test_a_tampered_row_is_reported_at_its_position(
    open_pg: Any, pg_location: PostgresLocation
) -> None:
    ledger = open_pg()
    for _ in range(4):
        ledger.save(Counter("peer"))
    cp = ledger.checkpoint()
    table = f"{pg_location.schema}.ledger_events"
    with owner(pg_location) as conn:  # an attacker with the owner's password
        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        conn.execute(f"UPDATE {table} SET payload = payload || ' ' WHERE position = 3")
        conn.execute(f"DELETE FROM {table} WHERE position = 4")
    report = verify(ledger, checkpoint=cp)
    assert ProblemKind.HASH_MISMATCH in report.kinds_at(3)
    assert ProblemKind.CHECKPOINT_MISMATCH in report.kinds_at(4)


def test_a_forged_row_signed_by_an_unknown_key_is_reported(
    open_pg: Any, pg_location: PostgresLocation
) -> None:
    from l2_session.infrastructure.ledger.format import event_hash, lp

    ledger = open_pg()
    for n in range(7):  # the forged row is the 8th: it would complete nodes of 2, 4 and 8
        ledger.save(Counter(f"peer {n}"))
    forger = NodeIdentity.generate()
    with owner(pg_location) as conn:
        pos, prev, ts = conn.execute(
            f"SELECT position, event_hash, timestamp FROM {pg_location.schema}.ledger_events "
            "ORDER BY position DESC LIMIT 1"
        ).fetchone()
        h = event_hash(pos + 1, b"forged", 1, b"t", ts, b"{}", bytes(32), bytes(prev),
                       lp(forger.did.encode()))  # fmt: skip
        conn.execute(
            f"INSERT INTO {pg_location.schema}.ledger_events VALUES "
            "(%s,'forged',1,'t',%s,'{}',NULL,%s,%s,%s,%s,%s)",
            (pos + 1, ts, bytes(32), bytes(prev), h, forger.did, forger.sign(h)),
        )
    report = verify(ledger)
    # The forger's row holds no tree nodes (its tree column is empty): the stored tree tells
    # too, where the row completes nodes (at every even position).
    assert pos + 1 == 8
    assert report.kinds_at(pos + 1) == {ProblemKind.UNKNOWN_SIGNER, ProblemKind.TREE_MISMATCH}


def test_a_changed_node_in_an_events_tree_column_is_reported_where_it_ends(
    open_pg: Any, pg_location: PostgresLocation
) -> None:
    """Format 4 on PostgreSQL: the node of 8 events is the third hash of the 8th event's
    tree column; verify reads the column with the events and names the node."""
    ledger = open_pg()
    for n in range(10):
        ledger.save(Counter(f"peer {n}"))
    assert verify(ledger).ok
    table = f"{pg_location.schema}.ledger_events"
    with owner(pg_location) as conn:  # an attacker with the owner's password
        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        column = conn.execute(f"SELECT tree FROM {table} WHERE position = 8").fetchone()[0]
        assert len(column) == 3 * 32
        conn.execute(f"UPDATE {table} SET tree = %s WHERE position = 8", (column[:64] + bytes(32),))
    report = verify(ledger)
    assert [(p.kind, p.position) for p in report.problems] == [(ProblemKind.TREE_MISMATCH, 8)]
    assert "tree node of level 3: the stored hash differs" in report.problems[0].detail


def test_an_older_schema_is_migrated_by_the_owner_and_refused_otherwise(
    open_pg: Any, pg_location: PostgresLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_pg().save(Counter("before the upgrade"))
    # A later release of the program adds schema version 2 (here: an index).
    index = "ledger_events_by_signer"
    migrations = dict(pg_schema.MIGRATIONS)
    migrations[SCHEMA_VERSION + 1] = lambda schema: [
        f"CREATE INDEX {index} ON {schema}.ledger_events (signer)"
    ]
    monkeypatch.setattr(pg_schema, "MIGRATIONS", migrations)
    monkeypatch.setattr(pg_schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    needs = f"schema version {SCHEMA_VERSION}, this program needs {SCHEMA_VERSION + 1}"
    with pytest.raises(NotALedger, match=needs):
        open_pg(create=False)
    ledger = open_pg()  # the owner, allowed to create: migrates
    assert verify(ledger).events_checked == 1
    meta = f"{pg_location.schema}.ledger_meta"
    with owner(pg_location) as conn:
        assert conn.execute(f"SELECT value FROM {meta} WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION + 1),
        )
        assert conn.execute(
            "SELECT to_regclass(%s)", (f"{pg_location.schema}.{index}",)
        ).fetchone()[0]
    monkeypatch.setattr(pg_schema, "SCHEMA_VERSION", SCHEMA_VERSION)  # the old program again
    with pytest.raises(NotALedger, match=f"version {SCHEMA_VERSION + 1} is newer"):
        open_pg()


def test_a_missing_ledger_and_an_unreachable_server_are_named(
    pg_location: PostgresLocation,
) -> None:
    with pytest.raises(LedgerNotFound, match=f"schema {pg_location.schema} has no ledger_meta"):
        SessionLedger(pg_location.url(), create=False)
    url = "postgresql://someone:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(LedgerError, match="cannot connect to the ledger at") as caught:
        SessionLedger(url, identity=NodeIdentity.generate())
    assert "hunter2" not in str(caught.value)


def test_the_clock_going_backwards_is_refused(open_pg: Any) -> None:
    clock = ManualClock()
    ledger = open_pg(clock=clock)
    ledger.save(Counter("peer"))
    clock.set_wall_us(clock.wall_us() - 1)
    with pytest.raises(LedgerError, match="earlier than the ledger head's timestamp"):
        ledger.save(Counter("peer"))
    assert verify(ledger).events_checked == 1


def test_a_node_cannot_create_the_schema_and_is_told_to_run_pg_migrate(
    open_pg: Any, pg_location: PostgresLocation
) -> None:
    import pgserver

    open_pg(pg_location.with_schema(pg_location.schema + "_other").url()).close()  # role exists
    admin = pgserver.admin_location()
    login = pgserver.create_login_role(admin, NODE_ROLE)
    try:
        node = PostgresLocation(
            pg_location.host, pg_location.port, pg_location.dbname, login, "",
            pg_location.schema, pg_location.options,
        )  # fmt: skip
        with pytest.raises(
            LedgerError,
            match=rf"schema version 0, this program needs {SCHEMA_VERSION}\).*pg-migrate",
        ):
            SessionLedger(node.url(), identity=NodeIdentity.generate())
    finally:
        pgserver.drop_role(admin, login)
