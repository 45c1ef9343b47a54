"""Full-text search over tickets: their subjects and the text of every mail on them.

SQLite keeps FTS5 tables beside `ticket` and `message`, kept current by triggers;
PostgreSQL keeps the same text as a generated tsvector column (`search_vector`) on
each, with a GIN index. Either way the index changes in the transaction that stores
the mail, and a search reads only the index.

What people type is reduced to its words, each one quoted, so no character of the
search syntax (quotes, `*`, `-`, `NEAR`, parentheses) reaches the query language:
whatever is typed, the answer is a list of tickets, never an error.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Float, Integer, Subquery, text
from sqlmodel import Session

# A search uses at most this many words, each cut to this many characters.
MAX_WORDS = 8
MAX_WORD = 64
# PostgreSQL indexes the first 100,000 characters of a mail's text only (the migration
# says so): a tsvector holds at most 1 MB, and one too large would refuse the mail.
# Search objects in the database that the models do not describe (the FTS5 tables and
# their shadow tables, the tsvector columns and their indexes): every name starts so.
PREFIX = "search_"
_WORD = re.compile(r"\w+")


def words(typed: str) -> list[str]:
    """The words of what was typed, lower case, without any search syntax."""
    return [word[:MAX_WORD] for word in _WORD.findall(typed.lower())[:MAX_WORDS]]


def fts5_query(found: list[str]) -> str:
    """Each word a quoted string (a quote inside doubled), all of them required."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in found)


# A hit in the subject counts twice as much as one in a mail. bm25() works only where the
# FTS table is scanned first: the mails' hits are scored alone, then joined to their tickets.
_SQLITE = """
WITH mail_hits AS MATERIALIZED (
    SELECT rowid AS id, bm25(search_message) AS score
    FROM search_message WHERE search_message MATCH :query
)
SELECT ticket_id, min(score) AS score FROM (
    SELECT rowid AS ticket_id, 2 * bm25(search_ticket) AS score
    FROM search_ticket WHERE search_ticket MATCH :query
    UNION ALL
    SELECT message.ticket_id AS ticket_id, mail_hits.score AS score
    FROM mail_hits JOIN message ON message.id = mail_hits.id
    WHERE message.ticket_id IS NOT NULL
) AS hits GROUP BY ticket_id
"""

_POSTGRESQL = """
SELECT ticket_id, min(score) AS score FROM (
    SELECT ticket.id AS ticket_id, -2 * ts_rank(ticket.search_vector, query) AS score
    FROM ticket, plainto_tsquery('english', :query) AS query
    WHERE ticket.search_vector @@ query
    UNION ALL
    SELECT message.ticket_id AS ticket_id, -ts_rank(message.search_vector, query) AS score
    FROM message, plainto_tsquery('english', :query) AS query
    WHERE message.search_vector @@ query AND message.ticket_id IS NOT NULL
) AS hits GROUP BY ticket_id
"""


def matching(session: Session, typed: str) -> Subquery | None:
    """The tickets whose subject, or one of whose mails, holds every word typed: rows of
    (ticket_id, score), a lower score a better match. None when nothing was typed that
    could match (no words)."""
    found = words(typed)
    if not found:
        return None
    if session.get_bind().dialect.name == "postgresql":
        sql, query = _POSTGRESQL, " ".join(found)
    else:
        sql, query = _SQLITE, fts5_query(found)
    statement = text(sql).bindparams(query=query).columns(ticket_id=Integer, score=Float)
    return statement.subquery("search")


def not_search_object(name: str | None, type_: str, parent_names: Any) -> bool:
    """For schema comparisons: the search tables and indexes are the migrations' alone."""
    return not (name or "").startswith(PREFIX)
