"""privacy: suppression list, consent wordings, per-send totals and article clicks

Revision ID: 0f2fb58524b2
Revises: f6fdcb6059ec
Create Date: 2026-12-02 11:00:00

Only new tables: existing rows are untouched.
"""
from alembic import op
import sqlalchemy as sa

import newsletter.models


revision = '0f2fb58524b2'
down_revision = 'f6fdcb6059ec'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('suppression',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('address_hash', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=24), nullable=False),
    sa.Column('created_at', newsletter.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_suppression')),
    sa.UniqueConstraint('address_hash', name=op.f('uq_suppression_address_hash'))
    )
    op.create_table('consent_wording',
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('locale', sa.String(length=8), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', newsletter.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('version', 'locale', name=op.f('pk_consent_wording'))
    )
    op.create_table('send_total',
    sa.Column('digest_id', sa.Integer(), nullable=False),
    sa.Column('sent', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('bounced', sa.Integer(), nullable=False),
    sa.Column('skipped', sa.Integer(), nullable=False),
    sa.Column('complaints', sa.Integer(), nullable=False),
    sa.Column('unsubscribes', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['digest_id'], ['digest.id'], name=op.f('fk_send_total_digest_id_digest'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('digest_id', name=op.f('pk_send_total'))
    )
    op.create_table('article_click',
    sa.Column('digest_id', sa.Integer(), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=False),
    sa.Column('clicks', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['article.id'], name=op.f('fk_article_click_article_id_article'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['digest_id'], ['digest.id'], name=op.f('fk_article_click_digest_id_digest'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('digest_id', 'article_id', name=op.f('pk_article_click'))
    )


def downgrade():
    op.drop_table('article_click')
    op.drop_table('send_total')
    op.drop_table('consent_wording')
    op.drop_table('suppression')
