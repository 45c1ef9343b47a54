"""ticket events: the audit trail of status, severity, assignee, followers and pages

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 05:30:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ticketevent',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
    sa.Column('actor_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('route', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('what', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('old', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
    sa.Column('new', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['ticket.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ticketevent', schema=None) as batch_op:
        batch_op.create_index('ix_ticketevent_ticket', ['ticket_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ticketevent', schema=None) as batch_op:
        batch_op.drop_index('ix_ticketevent_ticket')
    op.drop_table('ticketevent')
