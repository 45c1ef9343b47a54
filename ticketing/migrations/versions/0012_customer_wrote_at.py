"""customer_wrote_at: when the customer side last wrote on each ticket, for the Queue

Filled from the mails already stored: the latest request or reply on the ticket from
its requester, someone copied or a follower.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 09:00:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ALTER TABLE, never a batch copy: on SQLite a copied table would lose
    # the search triggers.
    op.add_column('ticket', sa.Column('customer_wrote_at', sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))
    op.execute(
        "UPDATE ticket SET customer_wrote_at = ("
        " SELECT max(message.created_at) FROM message"
        " WHERE message.ticket_id = ticket.id AND message.direction = 'in'"
        " AND message.kind IN ('request', 'reply')"
        " AND message.from_address IN (SELECT participant.address FROM participant"
        "  WHERE participant.ticket_id = ticket.id"
        "  AND participant.role IN ('requester', 'cc', 'follower')))")


def downgrade() -> None:
    op.execute("ALTER TABLE ticket DROP COLUMN customer_wrote_at")
