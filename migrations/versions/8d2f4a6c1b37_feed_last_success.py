"""feed.last_success_at: when a feed was last polled without an error

Revision ID: 8d2f4a6c1b37
Revises: b7c41e2a9d10
Create Date: 2026-12-02 11:10:00

"""
import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "8d2f4a6c1b37"
down_revision = "b7c41e2a9d10"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("feed") as batch_op:
        batch_op.add_column(sa.Column("last_success_at", newsletter.models.UTCDateTime(timezone=True), nullable=True))
    # A feed whose last poll went well had its last success then.
    op.execute("UPDATE feed SET last_success_at = last_fetched_at "
               "WHERE last_status IN ('ok', 'not-modified')")


def downgrade():
    with op.batch_alter_table("feed") as batch_op:
        batch_op.drop_column("last_success_at")
