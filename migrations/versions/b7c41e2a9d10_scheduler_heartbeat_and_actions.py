"""scheduler heartbeat and its last actions

Revision ID: b7c41e2a9d10
Revises: e4a9c2d7f815
Create Date: 2026-12-02 11:00:00.000000

"""
from alembic import op
import sqlalchemy as sa

import newsletter.models


# revision identifiers, used by Alembic.
revision = 'b7c41e2a9d10'
down_revision = 'e4a9c2d7f815'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('scheduler_heartbeat',
    sa.Column('instance', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('started_at', newsletter.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('seen_at', newsletter.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('instance', name=op.f('pk_scheduler_heartbeat'))
    )
    with op.batch_alter_table('scheduler_heartbeat', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scheduler_heartbeat_seen_at'), ['seen_at'], unique=False)

    op.create_table('scheduler_action',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', newsletter.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.String(length=300), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scheduler_action'))
    )
    with op.batch_alter_table('scheduler_action', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scheduler_action_at'), ['at'], unique=False)


def downgrade():
    with op.batch_alter_table('scheduler_action', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scheduler_action_at'))
    op.drop_table('scheduler_action')
    with op.batch_alter_table('scheduler_heartbeat', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scheduler_heartbeat_seen_at'))
    op.drop_table('scheduler_heartbeat')
