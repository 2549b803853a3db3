"""Engines for the store's database URLs: SQLite (embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import NullPool
from sqlmodel import create_engine

from vilokanam.store.errors import StoreError

_PG_ALIASES = {"postgresql", "postgres"}


def normalize_url(url: str | URL) -> URL:
    """``postgresql://`` and ``postgres://`` mean psycopg 3; anything else is taken as given."""
    parsed = make_url(url)
    if parsed.drivername in _PG_ALIASES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StoreError("an in-memory SQLite database cannot be migrated: give a file path")
    return parsed


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_file(url: URL) -> None:
    assert url.database is not None
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str | URL) -> Engine:
    """The engine the store queries through (foreign keys enforced on SQLite)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        _sqlite_file(parsed)
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


def _sqlite_migration_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, open transactions, so DDL is transactional too; foreign keys
    # off, as SQLite requires while batch migrations rebuild a referenced table.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")


def _sqlite_begin_immediate(connection: Any) -> None:
    # IMMEDIATE takes the write lock at once: concurrent migrators queue instead of racing.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_migration_engine(url: str | URL) -> Engine:
    """A one-off engine for migrations: one connection, one transaction for the whole upgrade."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        _sqlite_file(parsed)
        engine = create_engine(parsed, poolclass=NullPool)
        event.listen(engine, "connect", _sqlite_migration_connect)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(parsed, poolclass=NullPool)
