"""status subscribers: addresses that get the status page's updates by mail

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 08:10:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('statussubscriber',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('confirmed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('confirm_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('confirm_expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('address')
    )
    with op.batch_alter_table('statussubscriber', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_statussubscriber_confirmed_at'), ['confirmed_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('statussubscriber', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_statussubscriber_confirmed_at'))
    op.drop_table('statussubscriber')
