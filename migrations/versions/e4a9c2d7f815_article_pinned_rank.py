"""article.pinned and article.digest_rank: an editor puts an older article in the coming digest
and orders the articles of a section

Revision ID: e4a9c2d7f815
Revises: c5e8a1f3b962
Create Date: 2026-12-02 12:00:00

"""
import sqlalchemy as sa
from alembic import op

revision = "e4a9c2d7f815"
down_revision = "c5e8a1f3b962"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("article") as batch_op:
        batch_op.add_column(sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("digest_rank", sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table("article") as batch_op:
        batch_op.drop_column("digest_rank")
        batch_op.drop_column("pinned")
