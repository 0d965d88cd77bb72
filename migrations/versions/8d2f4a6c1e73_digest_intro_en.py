"""digest.intro_en: the editor's intro in English (digest.intro is the Swedish one)

Revision ID: 8d2f4a6c1e73
Revises: 3b7c1e9a5d20
Create Date: 2026-12-02 11:40:00

"""
import sqlalchemy as sa
from alembic import op

revision = "8d2f4a6c1e73"
down_revision = "3b7c1e9a5d20"
branch_labels = None
depends_on = None


def upgrade():
    # An intro written before this was shown to every language; from now on it is the Swedish
    # one only (the default language's), and English readers get none until one is written.
    with op.batch_alter_table("digest") as batch_op:
        batch_op.add_column(sa.Column("intro_en", sa.Text(), nullable=False, server_default=""))


def downgrade():
    with op.batch_alter_table("digest") as batch_op:
        batch_op.drop_column("intro_en")
