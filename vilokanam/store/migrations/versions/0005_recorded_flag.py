"""Whether a stream session is recorded, decided when it starts: media of sessions known not to
be recorded is deleted ``hls.keep_ended`` seconds after they end (NULL: from before this
revision, never deleted automatically). On SQLite the table is rebuilt with AUTOINCREMENT: a
session id is never handed out again after the newest sessions went with their channel (ids name
media folders and segment URLs, which must never be reused).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table(
        "streamsession",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True} if sqlite else {},
    ) as batch:
        batch.add_column(sa.Column("recorded", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("streamsession") as batch:
        batch.drop_column("recorded")
