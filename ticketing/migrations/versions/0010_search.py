"""search: full-text indexes over ticket subjects and mail text

SQLite: FTS5 tables reading from ticket and message, kept current by triggers.
PostgreSQL: a stored generated tsvector column on each, with a GIN index (a search
ranks its hits from the stored vectors instead of parsing each text again). Both
are filled from the rows already there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 08:30:00
"""

from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# The first characters of a mail's text that PostgreSQL indexes (ticketing.search).
INDEXED_CHARACTERS = 100_000

# Porter stemming (exports finds export), accents folded.
_TOKENIZE = "porter unicode61 remove_diacritics 2"

# A table rebuilt by a later batch migration on SQLite loses its triggers: such a
# migration must create these again.
_SQLITE_INDEXES = (("search_ticket", "ticket", "subject"), ("search_message", "message", "text"))


def _sqlite_upgrade() -> None:
    for index, table, column in _SQLITE_INDEXES:
        op.execute(f"CREATE VIRTUAL TABLE {index} USING fts5({column}, content='{table}', "
                   f"content_rowid='id', tokenize='{_TOKENIZE}')")
        removed = (f"INSERT INTO {index}({index}, rowid, {column}) "
                   f"VALUES ('delete', old.id, old.{column});")
        added = f"INSERT INTO {index}(rowid, {column}) VALUES (new.id, new.{column});"
        op.execute(f"CREATE TRIGGER {index}_insert AFTER INSERT ON {table} BEGIN {added} END")
        op.execute(f"CREATE TRIGGER {index}_delete AFTER DELETE ON {table} BEGIN {removed} END")
        op.execute(f"CREATE TRIGGER {index}_update AFTER UPDATE OF {column} ON {table} "
                   f"BEGIN {removed} {added} END")
        op.execute(f"INSERT INTO {index}({index}) VALUES ('rebuild')")


_POSTGRESQL_INDEXES = (
    ("ticket", "subject"),
    ("message", f"left(text, {INDEXED_CHARACTERS})"),
)


def _postgresql_upgrade() -> None:
    for table, source in _POSTGRESQL_INDEXES:
        op.execute(f"ALTER TABLE {table} ADD COLUMN search_vector tsvector "
                   f"GENERATED ALWAYS AS (to_tsvector('english', {source})) STORED")
        op.execute(f"CREATE INDEX search_{table} ON {table} USING gin (search_vector)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_upgrade()
    else:
        _postgresql_upgrade()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for index, _, _ in _SQLITE_INDEXES:
            for event in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {index}_{event}")
            op.execute(f"DROP TABLE IF EXISTS {index}")
    else:
        for table, _ in _POSTGRESQL_INDEXES:
            op.execute(f"DROP INDEX IF EXISTS search_{table}")
            op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS search_vector")
