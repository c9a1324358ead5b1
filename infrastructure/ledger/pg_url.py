"""PostgreSQL ledger locations: ``postgresql://user[:password]@host[:port]/dbname[?params]``.

``schema=<name>`` (default ``public``) picks the PostgreSQL schema holding the ledger's tables,
so one database can hold several ledgers. Every other query parameter (``sslmode``,
``sslrootcert``, ``application_name``, ``target_session_attrs``, ...) goes to libpq unchanged.
A password may also come from ``PGPASSWORD`` or ``~/.pgpass``, as for any libpq client; it is
never shown by ``redacted()``, which is what error messages and reports print.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from l2_session.infrastructure.ledger.errors import LedgerError

SCHEMES = ("postgresql", "postgres")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def is_postgres_url(location: object) -> bool:
    return isinstance(location, str) and location.split("://", 1)[0].lower() in SCHEMES


@dataclass(frozen=True)
class PostgresLocation:
    host: str
    port: int
    dbname: str
    user: str
    password: str = field(repr=False)
    schema: str = "public"
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, url: str | Path) -> PostgresLocation:
        text = str(url)
        if not is_postgres_url(text):
            raise LedgerError(
                f"not a PostgreSQL URL: {text!r} (expected postgresql://user@host:port/dbname)"
            )
        parts = urlsplit(text)
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname or "/" in dbname:
            raise LedgerError(
                f"the PostgreSQL URL {redact(text)} names no database "
                "(expected postgresql://user@host:port/dbname)"
            )
        try:
            port = parts.port or 5432
        except ValueError:
            raise LedgerError(f"the PostgreSQL URL {redact(text)} has an invalid port") from None
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        schema = params.pop("schema", "public")
        if not _SCHEMA_NAME.fullmatch(schema):
            # The schema name is spliced into SQL identifiers and a NOTIFY channel: keep it plain.
            raise LedgerError(
                f"schema {schema!r} in {redact(text)} is not a plain lower-case identifier "
                "(letters, digits, underscore; at most 63 characters)"
            )
        return cls(
            host=parts.hostname or "localhost",
            port=port,
            dbname=dbname,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            schema=schema,
            options=tuple(sorted(params.items())),
        )

    def redacted(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in (("schema", self.schema), *self.options))
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}?{query}"

    def with_schema(self, schema: str) -> PostgresLocation:
        return PostgresLocation(
            self.host, self.port, self.dbname, self.user, self.password, schema, self.options
        )

    def url(self) -> str:
        """The full URL, password included (for handing to a child process, not for printing)."""
        auth = self.user + (f":{self.password}" if self.password else "")
        query = "&".join(f"{k}={v}" for k, v in (("schema", self.schema), *self.options))
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.dbname}?{query}"

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
        }
        if self.password:
            kwargs["password"] = self.password
        kwargs.update(self.options)
        return kwargs

    def connect(self, *, autocommit: bool = True, connect_timeout: int = 10) -> Any:
        """A plain psycopg connection (tuple rows), for schema work, verify and projections."""
        import psycopg

        try:
            return psycopg.connect(
                autocommit=autocommit, connect_timeout=connect_timeout, **self.connect_kwargs()
            )
        except psycopg.OperationalError as e:
            raise LedgerError(f"cannot connect to the ledger at {self.redacted()}: {e}") from e


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)
