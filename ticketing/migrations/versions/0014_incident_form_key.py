"""incident update form key: the same desk form sent twice posts one update

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 10:00:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('incidentupdate', schema=None) as batch_op:
        batch_op.add_column(sa.Column('form_key', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True))
        batch_op.create_index(batch_op.f('ix_incidentupdate_form_key'), ['form_key'],
                              unique=True)


def downgrade() -> None:
    with op.batch_alter_table('incidentupdate', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_incidentupdate_form_key'))
        batch_op.drop_column('form_key')
