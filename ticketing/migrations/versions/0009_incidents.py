"""incidents: the status page's incidents, their updates and the tickets attached

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 06:30:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('incident',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('title', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('components', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('opened_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('resolved_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('incident', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_incident_state'), ['state'], unique=False)

    op.create_table('incidentupdate',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('incident_id', sa.Integer(), nullable=False),
    sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('author', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
    sa.ForeignKeyConstraint(['incident_id'], ['incident.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('incidentupdate', schema=None) as batch_op:
        batch_op.create_index('ix_incidentupdate_incident', ['incident_id', 'id'], unique=False)

    op.create_table('incidentticket',
    sa.Column('incident_id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('attached_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('attached_by', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
    sa.ForeignKeyConstraint(['incident_id'], ['incident.id'], ),
    sa.ForeignKeyConstraint(['ticket_id'], ['ticket.id'], ),
    sa.PrimaryKeyConstraint('incident_id', 'ticket_id')
    )
    with op.batch_alter_table('incidentticket', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_incidentticket_ticket_id'), ['ticket_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('incidentticket', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_incidentticket_ticket_id'))
    op.drop_table('incidentticket')
    with op.batch_alter_table('incidentupdate', schema=None) as batch_op:
        batch_op.drop_index('ix_incidentupdate_incident')
    op.drop_table('incidentupdate')
    with op.batch_alter_table('incident', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_incident_state'))
    op.drop_table('incident')
