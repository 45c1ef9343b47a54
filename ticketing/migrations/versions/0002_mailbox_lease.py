"""mailbox lease: one IMAP fetcher at a time per mailbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 11:30:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows that exist already get an empty holder: nobody holds the mailbox.
    with op.batch_alter_table('mailboxstate', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held_by', sqlmodel.sql.sqltypes.AutoString(length=100),
                                      nullable=False, server_default=''))
        batch_op.add_column(sa.Column('held_until', sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mailboxstate', schema=None) as batch_op:
        batch_op.drop_column('held_until')
        batch_op.drop_column('held_by')
