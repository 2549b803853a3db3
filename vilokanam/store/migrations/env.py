"""Alembic environment: migrations run on the connection ``vilokanam.store.migrate`` hands over."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import vilokanam.store.models  # noqa: F401  (registers the tables on SQLModel.metadata)

if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported: use vilokanam.store.migrate")

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through vilokanam.store.migrate (it passes a connection)")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
