"""agent operator: an agent added with `mailgate agents add --operator` has the operators' pages

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 08:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('agent', schema=None) as batch_op:
        batch_op.add_column(sa.Column('operator', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('agent', schema=None) as batch_op:
        batch_op.drop_column('operator')
