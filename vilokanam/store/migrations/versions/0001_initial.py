"""The schema before migrations existed (what ``create_all`` made): channels and sessions.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

SESSION_STATE = sa.Enum("STARTING", "LIVE", "ENDED", name="sessionstate")


def upgrade() -> None:
    op.create_table(
        "channel",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("slug", sa.String(63), nullable=False),
        sa.Column("title", sa.String(), nullable=False),
        sa.Column("stream_key_hash", sa.String(64), nullable=False),
        sa.Column("key_rotated_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_channel_slug", "channel", ["slug"], unique=True)
    op.create_index("ix_channel_stream_key_hash", "channel", ["stream_key_hash"], unique=True)
    op.create_table(
        "streamsession",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("channel_id", sa.Integer(), sa.ForeignKey("channel.id"), nullable=False),
        sa.Column("state", SESSION_STATE, nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("live_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("segments", sa.Integer(), nullable=False),
    )
    op.create_index("ix_streamsession_channel_id", "streamsession", ["channel_id"])
    op.create_index("ix_streamsession_state", "streamsession", ["state"])


def downgrade() -> None:
    op.drop_table("streamsession")
    op.drop_table("channel")
    SESSION_STATE.drop(op.get_bind(), checkfirst=True)
