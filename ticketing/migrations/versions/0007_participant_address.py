"""participants: an index on the address, for a customer's own tickets on the web

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 05:50:00
"""

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('participant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_participant_address'), ['address'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('participant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_participant_address'))
