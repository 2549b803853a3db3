"""Delivery at scale: per-channel recording settings, VOD recordings, CDN log cursors,
segment durations per stream session (for CDN log billing after the stream).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("channel") as batch:
        batch.add_column(sa.Column("record", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("vod_retention_days", sa.Integer(), nullable=True))

    with op.batch_alter_table("streamsession") as batch:
        batch.add_column(sa.Column("durations_ms", sa.JSON(), nullable=True))

    op.create_table(
        "recording",
        sa.Column(
            "session_id",
            sa.Integer(),
            sa.ForeignKey("streamsession.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "channel_id",
            sa.Integer(),
            sa.ForeignKey("channel.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("prefix", sa.String(255), nullable=False),
        sa.Column("storage", sa.String(16), nullable=False),
        sa.Column("renditions", sa.JSON(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("segments", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("thumbnail", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=True),
    )
    op.create_index("ix_recording_channel_id", "recording", ["channel_id"])
    op.create_index("ix_recording_expires_at", "recording", ["expires_at"])

    op.create_table(
        "log_cursor",
        sa.Column("source", sa.String(255), primary_key=True),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.BigInteger(), nullable=False),
        sa.Column("fetches", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("log_cursor")
    op.drop_table("recording")
    with op.batch_alter_table("streamsession") as batch:
        batch.drop_column("durations_ms")
    with op.batch_alter_table("channel") as batch:
        batch.drop_column("vod_retention_days")
        batch.drop_column("record")
