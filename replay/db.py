"""Engines and sessions for tutord's database (SQLite by default, PostgreSQL in production).

It makes engines with the right per-backend settings (SQLite: WAL, foreign keys, a
busy timeout) and a session factory, and refuses a URL it cannot use (not a URL, a
database other than SQLite or PostgreSQL, a driver that is not installed) with a
`DatabaseURLError` that says which are supported. It does not create tables: that is
Alembic's job (`migrations/`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

SUPPORTED_DRIVERS: dict[str, tuple[str, ...]] = {
    "sqlite": ("pysqlite",),
    "postgresql": ("psycopg", "psycopg2"),
}
"""The databases tutord runs on, each with the drivers it accepts (the first is preferred)."""
SUPPORTED = (
    "sqlite (sqlite:////path/to/tutord.db) "
    "or postgresql+psycopg (postgresql+psycopg://user@host:5432/db)"
)


class DatabaseURLError(ValueError):
    """A database URL tutord cannot use; the message says why and what would do."""


def check_url(url: str) -> URL:
    """`url` parsed, if it names a supported database and driver; else `DatabaseURLError`.

    An unparseable URL is not repeated in the message (it may hold a password).

    >>> check_url("sqlite:///tutord.db").get_backend_name()
    'sqlite'
    >>> check_url("postgresql+psycopg://me@db/tutord").drivername
    'postgresql+psycopg'
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseURLError(
            f"not a database URL (SQLAlchemy cannot parse it); use {SUPPORTED}"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    drivers = SUPPORTED_DRIVERS.get(backend)
    if drivers is None:
        raise DatabaseURLError(
            f"unsupported database {backend!r} in {shown}: tutord runs on {SUPPORTED}"
        )
    driver = parsed.drivername.partition("+")[2]
    if driver and driver not in drivers:
        raise DatabaseURLError(
            f"unsupported driver {driver!r} for {backend} in {shown}: tutord runs on {SUPPORTED}"
        )
    return parsed


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite connections get WAL, foreign keys and a busy timeout;
    PostgreSQL ones are named `tutord-<pid>` (application_name). A URL that `check_url`
    refuses, or whose driver is not installed, raises `DatabaseURLError`."""
    parsed = check_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if parsed.database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        # Names each process's sessions in pg_stat_activity (operators, and tests that cut
        # one process's connections).
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("application_name", f"tutord-{os.getpid()}")
        kwargs["connect_args"] = connect_args
    try:
        return create_engine(url, pool_pre_ping=True, **kwargs)
    except ImportError as exc:  # the driver module (e.g. psycopg2) is not installed
        shown = parsed.render_as_string(hide_password=True)
        raise DatabaseURLError(
            f"the driver of {shown} is not installed ({exc}); "
            f"use {parsed.get_backend_name()}+psycopg, which tutord installs"
        ) from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to `engine`; objects stay usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back on an exception."""
    with session_factory(engine).begin() as session:
        yield session


def is_sqlite(engine: Engine) -> bool:
    """Whether `engine` talks to SQLite."""
    return engine.dialect.name == "sqlite"


def insert_ignoring_duplicates(
    conn: Connection, table: Table, rows: list[dict[str, Any]], key: list[str]
) -> int:
    """INSERT rows, skipping those whose `key` columns hit an existing unique key; return how
    many were new. For modest row counts (the ingest has its own bulk path)."""
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    stmt = dialect_insert(table).on_conflict_do_nothing(index_elements=key)
    return sum(int(conn.execute(stmt, [row]).rowcount) for row in rows)
