"""digest.html_sizes: the HTML size of each language's largest variant, measured when compiled

Revision ID: c5e8a1f3b962
Revises: 8d2f4a6c1e73
Create Date: 2026-12-02 11:50:00

"""
import sqlalchemy as sa
from alembic import op

revision = "c5e8a1f3b962"
down_revision = "8d2f4a6c1e73"
branch_labels = None
depends_on = None


def upgrade():
    # Digests compiled before have none (NULL): the admin shows no size for them.
    with op.batch_alter_table("digest") as batch_op:
        batch_op.add_column(sa.Column("html_sizes", sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table("digest") as batch_op:
        batch_op.drop_column("html_sizes")
