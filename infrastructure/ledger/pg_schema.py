"""The ledger's PostgreSQL schema: created and migrated by this program, versioned in ledger_meta.

Same tables and columns as on SQLite (schema.py), so the rows — and the bytes hashed and
signed — are the same. The database enforces what SQLite's triggers enforce, and more:

* triggers refuse UPDATE, DELETE and TRUNCATE on the history tables, even for the owner;
* nodes connect as members of a *node role* that may only SELECT and INSERT the history
  (and replace snapshots, which are a checked cache), so a node cannot even try to rewrite.

``migrate()`` runs as the schema's owner (an administrator), under an advisory lock so that
several nodes starting at once do not race; it applies the migrations the schema lacks and
records ``schema_version``. Nodes that connect with the node role only check the version.
"""

from __future__ import annotations

import uuid
from typing import Any

from blake3 import blake3
from l2_session.infrastructure.ledger.errors import LedgerError, LedgerNotFound, NotALedger
from l2_session.infrastructure.ledger.format import FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS
from l2_session.infrastructure.ledger.pg_url import PostgresLocation
from l2_session.infrastructure.ledger.schema import (
    CHECKPOINTS_TABLE,
    COSIGNATURES_TABLE,
    EVENTS_TABLE,
    META_TABLE,
    SIGNERS_TABLE,
    SNAPSHOTS_TABLE,
)
from l2_session.infrastructure.ledger.tree import MIGRATED_VERSION, TREE_TABLE, TreeSQL, build_rows

SCHEMA_VERSION = 3
NODE_ROLE = "l2s_node"
HISTORY_TABLES = (EVENTS_TABLE, SIGNERS_TABLE, CHECKPOINTS_TABLE, TREE_TABLE, COSIGNATURES_TABLE)


def lock_key(schema: str, purpose: str) -> int:
    """A 64-bit advisory lock key, distinct per ledger schema and purpose."""
    digest = blake3(f"l2-session/pg-lock/{purpose}\n{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _append_only(schema: str, table: str) -> list[str]:
    # SPEC: append-only is enforced by the store itself; TRUNCATE skips row triggers, so it
    # gets its own statement trigger.
    return [
        f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {schema}.{table} "
        f"FOR EACH ROW EXECUTE FUNCTION {schema}.l2s_refuse_change()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {schema}.{table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.l2s_refuse_change()",
    ]


def _v1(schema: str) -> list[str]:
    return [
        f"CREATE TABLE {schema}.{META_TABLE} (key text PRIMARY KEY, value text NOT NULL)",
        f"""CREATE TABLE {schema}.{EVENTS_TABLE} (
            position bigint PRIMARY KEY,
            session_id text NOT NULL,
            version bigint NOT NULL,
            topic text NOT NULL,
            timestamp bigint NOT NULL,
            payload bytea NOT NULL,
            sealed bytea,
            prev_session_hash bytea NOT NULL,
            prev_global_hash bytea NOT NULL,
            event_hash bytea NOT NULL,
            signer text NOT NULL,
            signature bytea NOT NULL,
            UNIQUE (session_id, version)
        )""",
        f"""CREATE TABLE {schema}.{SIGNERS_TABLE} (
            did text PRIMARY KEY,
            registered_at bigint NOT NULL,
            signature bytea NOT NULL
        )""",
        f"""CREATE TABLE {schema}.{CHECKPOINTS_TABLE} (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            position bigint NOT NULL,
            text text NOT NULL
        )""",
        # Snapshots are a cache, not history: they may be replaced, and each is checked against
        # the chain before it is used.
        f"""CREATE TABLE {schema}.{SNAPSHOTS_TABLE} (
            session_id text NOT NULL,
            version bigint NOT NULL,
            topic text NOT NULL,
            state bytea NOT NULL,
            head_hash bytea NOT NULL,
            signer text NOT NULL,
            signature bytea NOT NULL,
            PRIMARY KEY (session_id, version)
        )""",
        f"""CREATE FUNCTION {schema}.l2s_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$""",
        *(
            stmt
            for table in (EVENTS_TABLE, SIGNERS_TABLE, CHECKPOINTS_TABLE)
            for stmt in _append_only(schema, table)
        ),
    ]


def _v2(schema: str) -> list[str]:
    """Ledger format 2: the Merkle tree (tree.py) and witnesses' cosignatures (witness.py)."""
    return [
        f"""CREATE TABLE {schema}.{TREE_TABLE} (
            node bigint PRIMARY KEY,
            hash bytea NOT NULL
        )""",
        *_append_only(schema, TREE_TABLE),
        f"""CREATE TABLE {schema}.{COSIGNATURES_TABLE} (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            checkpoint_id bigint NOT NULL,
            witness text NOT NULL,
            cosignature text NOT NULL,
            received_at bigint NOT NULL
        )""",
        *_append_only(schema, COSIGNATURES_TABLE),
    ]


def _v3(schema: str) -> list[str]:
    """Ledger format 4: the tree's nodes in the row of the event that completes them. A ledger
    of an older format keeps its layout: the column stays empty in its rows."""
    return [f"ALTER TABLE {schema}.{EVENTS_TABLE} ADD COLUMN tree bytea"]


def build_tree(cur: Any, schema: str) -> None:
    """The tree of every event in a format-1 ledger, in format 3 (an empty ledger_tree is
    filled; the events' rows are not changed), and that format version: after _v2, in the
    migration's transaction (a failure leaves the schema at version 1)."""
    sql = TreeSQL("%s", f"{schema}.{EVENTS_TABLE}", f"{schema}.{TREE_TABLE}", "tiles")

    cur.execute(f"SELECT position, event_hash FROM {schema}.{EVENTS_TABLE} ORDER BY position")
    for rows in build_rows(cur.fetchall(), damaged=NotALedger):
        cur.executemany(sql.insert, rows)
    cur.execute(
        f"UPDATE {schema}.{META_TABLE} SET value=%s WHERE key='format_version'",
        (MIGRATED_VERSION,),
    )


# Schema version -> statements taking the schema from the previous version to this one, and
# what runs after them (with the cursor) where statements alone cannot do it.
MIGRATIONS: dict[int, Any] = {1: _v1, 2: _v2, 3: _v3}
AFTER_MIGRATION: dict[int, Any] = {2: build_tree}


def _ensure_node_role(cur: Any, schema: str, role: str) -> None:
    # Roles are cluster-wide; another ledger may have created this one already.
    cur.execute(
        "DO $$ BEGIN CREATE ROLE " + role + " NOLOGIN; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    cur.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    cur.execute(f"GRANT SELECT ON {schema}.{META_TABLE} TO {role}")
    for table in HISTORY_TABLES:
        cur.execute(f"GRANT SELECT, INSERT ON {schema}.{table} TO {role}")
    cur.execute(f"GRANT SELECT, INSERT, UPDATE ON {schema}.{SNAPSHOTS_TABLE} TO {role}")


def read_meta(cur: Any, schema: str) -> dict[str, str] | None:
    """The ledger_meta of ``schema``, or None when the schema holds no ledger."""
    cur.execute("SELECT to_regclass(%s)", (f"{schema}.{META_TABLE}",))
    row = cur.fetchone()
    if row is None or row[0] is None:
        return None
    cur.execute(f"SELECT key, value FROM {schema}.{META_TABLE}")
    return {k: v for k, v in cur.fetchall()}


def check_meta(
    location: PostgresLocation, meta: dict[str, str] | None, *, reading: bool = False
) -> None:
    """Raise NotALedger / LedgerNotFound unless ``meta`` is a current ledger's (``reading``:
    one of an older schema version will do, as it is: verify reads it without migrating)."""
    where = location.redacted()
    if meta is None:
        raise LedgerNotFound(f"no ledger at {where}: schema {location.schema} has no {META_TABLE}")
    if meta.get("format") != FORMAT_NAME:
        raise NotALedger(f"{where}: ledger_meta names format {meta.get('format')!r}")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise NotALedger(
            f"{where}: ledger format version {meta.get('format_version')!r} is not supported "
            f"(this program reads versions {', '.join(READABLE_VERSIONS)})"
        )
    found = int(meta.get("schema_version", "0"))
    if found > SCHEMA_VERSION:
        raise NotALedger(
            f"{where}: PostgreSQL schema version {found} is newer than this program's "
            f"({SCHEMA_VERSION}); upgrade l2-session"
        )
    if found < SCHEMA_VERSION and not reading:
        raise NotALedger(
            f"{where}: PostgreSQL schema version {found}, this program needs {SCHEMA_VERSION}; "
            "run the migration as the schema owner (l2_session.infrastructure.ledger.pg_schema"
            ".migrate, or open the ledger once with the owner's credentials)"
        )


def migrate(
    location: PostgresLocation,
    *,
    created_at_us: int,
    node_role: str = NODE_ROLE,
    ledger_id: str | None = None,
) -> dict[str, str]:
    """Create or upgrade the ledger schema at ``location``; return its ledger_meta.

    ``ledger_id`` names the ledger a new schema is created for (pg_import.py moves a SQLite
    ledger, whose chain starts from its own id); by default a new ledger gets a fresh id.
    """
    schema = location.schema
    import psycopg

    current = 0
    with location.connect(autocommit=False) as conn, conn.cursor() as cur:
        try:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema, "migrate"),))
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            meta = read_meta(cur, schema)
            if meta is not None and meta.get("format") != FORMAT_NAME:
                raise NotALedger(
                    f"{location.redacted()}: schema {schema} holds a {META_TABLE} table that is "
                    "not an l2-session ledger's"
                )
            current = int(meta.get("schema_version", "0")) if meta else 0
            if current > SCHEMA_VERSION:
                check_meta(location, meta)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version](schema):
                    cur.execute(statement)
                if version in AFTER_MIGRATION:
                    AFTER_MIGRATION[version](cur, schema)
            if meta is None:
                cur.execute(
                    f"INSERT INTO {schema}.{META_TABLE} (key, value) VALUES "
                    "('format', %s), ('format_version', %s), ('ledger_id', %s), "
                    "('created_at', %s)",
                    (
                        FORMAT_NAME,
                        str(FORMAT_VERSION),
                        ledger_id or uuid.uuid4().hex,
                        str(created_at_us),
                    ),
                )
            cur.execute(
                f"INSERT INTO {schema}.{META_TABLE} (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )
            _ensure_node_role(cur, schema, node_role)
            meta = read_meta(cur, schema)
            conn.commit()
        except psycopg.errors.InsufficientPrivilege as e:
            conn.rollback()
            raise LedgerError(
                f"cannot create or migrate the ledger schema at {location.redacted()} "
                f"(schema version {current}, this program needs {SCHEMA_VERSION}): {e} — "
                "run `l2-session pg-migrate` as the schema owner; nodes use the node role"
            ) from e
    assert meta is not None
    return meta


def open_meta(location: PostgresLocation, *, create: bool, created_at_us: int) -> dict[str, str]:
    """Check (and, when allowed, create or migrate) the ledger at ``location``."""
    with location.connect() as conn, conn.cursor() as cur:
        meta = read_meta(cur, location.schema)
    if meta is not None and meta.get("schema_version") == str(SCHEMA_VERSION):
        check_meta(location, meta)
        return meta
    if not create:
        check_meta(location, meta)
    return migrate(location, created_at_us=created_at_us)
