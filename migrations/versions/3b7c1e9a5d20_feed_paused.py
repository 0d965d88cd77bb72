"""feed.paused: an editor may pause a feed (it is not polled; its articles stay)

Revision ID: 3b7c1e9a5d20
Revises: 0f2fb58524b2
Create Date: 2026-12-02 11:20:00

"""
import sqlalchemy as sa
from alembic import op

revision = "3b7c1e9a5d20"
down_revision = "0f2fb58524b2"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("feed") as batch_op:
        batch_op.add_column(sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade():
    with op.batch_alter_table("feed") as batch_op:
        batch_op.drop_column("paused")
