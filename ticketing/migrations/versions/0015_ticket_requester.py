"""ticket requester index: a new ticket's notice names the requester's other tickets

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 17:00:00
"""

from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ticket', schema=None) as batch_op:
        batch_op.create_index('ix_ticket_requester', ['requester', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ticket', schema=None) as batch_op:
        batch_op.drop_index('ix_ticket_requester')
