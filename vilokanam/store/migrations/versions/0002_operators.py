"""Operator fields: channel metadata and ladder, revocable keys, session details, webhook outbox.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

FK = "streamsession_channel_id_fkey"  # PostgreSQL's name for create_all's FK; SQLite gets it too
FK_NAMES = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}  # names SQLite's unnamed FK alike
DELIVERY_STATE = sa.Enum("PENDING", "DELIVERED", "FAILED", name="deliverystate")
CHANNEL_TIMES = ("key_rotated_at", "created_at")
SESSION_TIMES = {"started_at": False, "live_at": True, "ended_at": True}


def _to_utc(batch: op.BatchOperations, column: str, nullable: bool, aware: bool) -> None:
    """Naive UTC timestamps become timezone-aware ones (only PostgreSQL stores the difference)."""
    batch.alter_column(
        column,
        existing_type=sa.DateTime(timezone=not aware),
        type_=sa.DateTime(timezone=aware),
        existing_nullable=nullable,
        postgresql_using=f"{column} AT TIME ZONE 'UTC'",
    )


def upgrade() -> None:
    with op.batch_alter_table("channel") as batch:
        batch.add_column(sa.Column("category", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(
            sa.Column("price_per_second", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("ladder", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.alter_column("stream_key_hash", existing_type=sa.String(64), nullable=True)
        for column in CHANNEL_TIMES:
            _to_utc(batch, column, nullable=False, aware=True)
    op.execute("UPDATE channel SET updated_at = created_at")
    with op.batch_alter_table("channel") as batch:
        batch.alter_column("updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)

    with op.batch_alter_table("streamsession", naming_convention=FK_NAMES) as batch:
        batch.add_column(
            sa.Column("peak_viewers", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("publisher", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("end_reason", sa.String(), nullable=True))
        batch.add_column(sa.Column("recording_location", sa.String(), nullable=True))
        for column, nullable in SESSION_TIMES.items():
            _to_utc(batch, column, nullable=nullable, aware=True)
        batch.drop_constraint(FK, type_="foreignkey")
        batch.create_foreign_key(FK, "channel", ["channel_id"], ["id"], ondelete="CASCADE")

    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", DELIVERY_STATE, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_webhook_delivery_event_id", "webhook_delivery", ["event_id"])
    op.create_index("ix_webhook_delivery_next_attempt_at", "webhook_delivery", ["next_attempt_at"])
    op.create_index("ix_webhook_delivery_state", "webhook_delivery", ["state"])


def downgrade() -> None:
    op.drop_table("webhook_delivery")
    DELIVERY_STATE.drop(op.get_bind(), checkfirst=True)

    with op.batch_alter_table("streamsession", naming_convention=FK_NAMES) as batch:
        batch.drop_constraint(FK, type_="foreignkey")
        batch.create_foreign_key(FK, "channel", ["channel_id"], ["id"])
        for column, nullable in SESSION_TIMES.items():
            _to_utc(batch, column, nullable=nullable, aware=False)
        for column in ("recording_location", "end_reason", "publisher", "peak_viewers"):
            batch.drop_column(column)

    # The old schema has no revoked keys: give such channels a hash no key can match.
    op.execute(
        "UPDATE channel SET stream_key_hash = 'revoked-' || CAST(id AS VARCHAR) "
        "WHERE stream_key_hash IS NULL"
    )
    with op.batch_alter_table("channel") as batch:
        batch.alter_column("stream_key_hash", existing_type=sa.String(64), nullable=False)
        for column in CHANNEL_TIMES:
            _to_utc(batch, column, nullable=False, aware=False)
        for column in ("updated_at", "ladder", "price_per_second", "tags", "category"):
            batch.drop_column(column)
