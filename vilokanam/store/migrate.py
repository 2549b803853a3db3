"""Schema migrations (alembic) run from code: ``upgrade(url)`` on start, ``current(url)``.

A database made by the code before migrations (``create_all``: tables, no ``alembic_version``) is
recognised and stamped with the revision its tables match before upgrading, keeping its rows.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, Connection

from vilokanam.store.engine import make_migration_engine, normalize_url

MIGRATIONS = Path(__file__).with_name("migrations")
INITIAL = "0001"
_LOCK_ID = 0x56494C4F  # "VILO": serializes concurrent migrators on PostgreSQL


def config(connection: Connection | None = None) -> Config:
    """An alembic ``Config`` built in code (no alembic.ini), optionally bound to a connection."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision in the code."""
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def revisions() -> list[str]:
    """Every revision, oldest first."""
    scripts = ScriptDirectory.from_config(config()).walk_revisions()
    return [script.revision for script in reversed(list(scripts))]


def _stamped(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _legacy_revision(connection: Connection) -> str | None:
    """The revision an unversioned database's tables match: None (empty), INITIAL or head."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    if "channel" not in tables:
        return None
    columns = {column["name"] for column in inspector.get_columns("channel")}
    if "watch_state" in tables:
        return head()  # made by create_all from today's models
    if "webhook_delivery" in tables and "updated_at" in columns:
        return "0002"  # create_all from the operators-era models
    return INITIAL


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})


def _check_foreign_keys(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"migration left rows with broken foreign keys: {broken[:5]}")


def upgrade(url: str | URL, revision: str = "head") -> list[str]:
    """Bring the database to ``revision`` in one transaction; returns the revisions applied."""
    engine = make_migration_engine(url)
    try:
        with engine.connect() as connection, connection.begin():
            _lock(connection)
            cfg = config(connection)
            before = _stamped(connection)
            if before is None and (legacy := _legacy_revision(connection)) is not None:
                command.stamp(cfg, legacy)
                before = legacy
            command.upgrade(cfg, revision)
            after = _stamped(connection)
            _check_foreign_keys(connection)
    finally:
        engine.dispose()
    return _between(before, after)


def downgrade(url: str | URL, revision: str) -> None:
    """Take the schema back to ``revision`` ("base": no tables). For development and tests."""
    engine = make_migration_engine(url)
    try:
        with engine.connect() as connection, connection.begin():
            _lock(connection)
            command.downgrade(config(connection), revision)
    finally:
        engine.dispose()


def current(url: str | URL) -> str | None:
    """The database's revision: None for an empty one; an unversioned old database reports
    the revision it would be stamped with. Reading never creates a SQLite file."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        return None
    engine = make_migration_engine(parsed)
    try:
        with engine.connect() as connection:
            return _stamped(connection) or _legacy_revision(connection)
    finally:
        engine.dispose()


def pending(url: str | URL) -> list[str]:
    """Revisions ``upgrade`` would apply, oldest first."""
    return _between(current(url), head())


def _between(lower: str | None, upper: str | None) -> list[str]:
    """Revisions after ``lower`` up to and including ``upper``, oldest first."""
    if upper is None or lower == upper:
        return []
    scripts = ScriptDirectory.from_config(config()).iterate_revisions(upper, lower or "base")
    return [script.revision for script in reversed(list(scripts))]
