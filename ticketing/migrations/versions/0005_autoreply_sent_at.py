"""automatic mail log: an index on the send time, for the overall hourly ceiling

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 05:20:00
"""

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('autoreplylog', schema=None) as batch_op:
        batch_op.create_index('ix_autoreply_sent_at', ['sent_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('autoreplylog', schema=None) as batch_op:
        batch_op.drop_index('ix_autoreply_sent_at')
