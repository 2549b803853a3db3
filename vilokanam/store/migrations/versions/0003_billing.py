"""Billing: viewers, the double-entry ledger, watch state, settlement batches, chain deposits,
and the creator's payout address on channels.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None

ENTRY_KIND = sa.Enum("DEPOSIT", "WATCH", "PAYOUT", name="entrykind")
BATCH_STATE = sa.Enum("PREPARED", "SUBMITTED", "CONFIRMED", "FAILED", name="batchstate")
TIME = sa.DateTime(timezone=True)


def _indexes(table: str, *columns: str, unique: bool = False) -> None:
    for column in columns:
        op.create_index(f"ix_{table}_{column}", table, [column], unique=unique)


def upgrade() -> None:
    with op.batch_alter_table("channel") as batch:
        batch.add_column(sa.Column("payout_address", sa.String(64), nullable=True))

    op.create_table(
        "viewer",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    _indexes("viewer", "name", "address", "key_hash", unique=True)

    op.create_table(
        "ledger_entry",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("kind", ENTRY_KIND, nullable=False),
        sa.Column("viewer_id", sa.Integer(), nullable=True),
        sa.Column("channel_id", sa.Integer(), nullable=True),
        sa.Column("session_id", sa.Integer(), nullable=True),
        sa.Column("seconds", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.UniqueConstraint("key"),
    )
    _indexes(
        "ledger_entry", "batch_id", "channel_id", "created_at", "kind", "session_id", "viewer_id"
    )

    op.create_table(
        "posting",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("entry_id", sa.Integer(), sa.ForeignKey("ledger_entry.id"), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
    )
    _indexes("posting", "account", "entry_id")

    op.create_table(
        "watch_state",
        sa.Column("viewer_id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.Integer(), primary_key=True),
        sa.Column("first_fetch_at", TIME, nullable=False),
        sa.Column("content_ms", sa.BigInteger(), nullable=False),
        sa.Column("pending_ms", sa.BigInteger(), nullable=False),
        sa.Column("ticks", sa.Integer(), nullable=False),
        sa.Column("sequences", sa.JSON(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )

    op.create_table(
        "settlement_batch",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("state", BATCH_STATE, nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("payouts", sa.JSON(), nullable=False),
        sa.Column("ticks", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("submitted_at", TIME, nullable=True),
        sa.Column("confirmed_at", TIME, nullable=True),
        sa.Column("extrinsic_hash", sa.String(80), nullable=True),
        sa.Column("block_hash", sa.String(80), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("nonce", sa.BigInteger(), nullable=True),
        sa.Column("genesis_hash", sa.String(80), nullable=True),
        sa.Column("submitted_block", sa.Integer(), nullable=True),
    )
    _indexes("settlement_batch", "state")

    op.create_table(
        "chain_deposit",
        sa.Column("key", sa.String(120), primary_key=True),
        sa.Column("viewer_id", sa.Integer(), nullable=True),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    _indexes("chain_deposit", "block_number", "viewer_id")

    op.create_table(
        "chain_cursor",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("block_number", sa.Integer(), nullable=False),
        sa.Column("genesis_hash", sa.String(80), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "chain_cursor",
        "chain_deposit",
        "settlement_batch",
        "watch_state",
        "posting",
        "ledger_entry",
        "viewer",
    ):
        op.drop_table(table)
    BATCH_STATE.drop(op.get_bind(), checkfirst=True)
    ENTRY_KIND.drop(op.get_bind(), checkfirst=True)
    with op.batch_alter_table("channel") as batch:
        batch.drop_column("payout_address")
