"""Several prepared mails stored in one transaction: one commit for them all.

Each mail runs in a SAVEPOINT of its own and sees the database as it would in a
transaction of its own. A mail whose statements fail is rolled back alone and stored
afterwards by itself, exactly as ingest stores any one mail (its retries, its count of
tries, the quarantine), so it holds up none of the others. Nothing is told stored
before the commit: when the database fails the commit, every mail of the batch has that
fault (a temporary failure) and none is stored. A commit refused because of what one of
the mails wrote is no fault of the others: each is then stored by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from ticketing.blobs import FolderBlobs
from ticketing.db import StorageError, mail_fault, transaction
from ticketing.inbound import Inbound, Outcome
from ticketing.ingest import Prepared, prepare, record, store, stored
from ticketing.txstate import state_of

if TYPE_CHECKING:
    from ticketing.desk import Desk

log = logging.getLogger(__name__)

Result = Outcome | BaseException


def store_together(desk: Desk, mails: Sequence[Prepared]) -> list[Result]:
    """Store these mails; each one's Outcome, or the exception that is its temporary failure."""
    if len(mails) == 1:
        return [_alone(desk, mails[0])]
    outcomes: dict[int, Outcome] = {}
    alone: list[int] = []
    try:
        with transaction(desk.engine) as session:
            for number, prepared in enumerate(mails):
                outcome = _in_savepoint(session, desk, prepared)
                if outcome is None:
                    alone.append(number)
                else:
                    outcomes[number] = outcome
    except StorageError as exc:
        if not exc.mail_fault:
            log.error("storing %d mails together failed; none is stored: %s", len(mails), exc)
            return [exc] * len(mails)
        log.warning("the commit of %d mails was refused for what one wrote (%s); storing "
                    "each by itself", len(mails), exc)
        return [_alone(desk, prepared) for prepared in mails]
    except DBAPIError as exc:
        if not mail_fault(exc):
            raise  # pragma: no cover (transaction() turns these into StorageError)
        log.warning("the commit of %d mails was refused for what one wrote (%s); storing "
                    "each by itself", len(mails), str(exc).splitlines()[0])
        return [_alone(desk, prepared) for prepared in mails]
    results: list[Result] = []
    for number, prepared in enumerate(mails):
        if number in outcomes:
            stored(prepared, outcomes[number])
            results.append(outcomes[number])
        else:
            results.append(_alone(desk, prepared))
    return results


def prepare_ahead(desk: Desk, inbound: Inbound) -> Prepared | Outcome:
    """Prepare a mail, and write its files to the data folder (when they are kept
    there) before its transaction, outside the one writer's turn: several threads can
    wait on the disk at once. A file left by a transaction that then fails is harmless
    (the same bytes under the same name); the transaction keeps them again, at no cost."""
    prepared = prepare(desk, inbound)
    blobs = desk.blobs
    if isinstance(prepared, Prepared) and isinstance(blobs, FolderBlobs):
        files = {prepared.raw_sha256: inbound.raw}
        files.update((item.sha256, item.data) for item in prepared.mail.attachments)
        try:
            for sha256 in sorted(files):
                blobs.put(None, sha256, files[sha256])
        except StorageError:
            pass  # the transaction meets the same fault and answers for it
    return prepared


def _alone(desk: Desk, prepared: Prepared) -> Result:
    try:
        return store(desk, prepared)
    except Exception as exc:
        return exc


def fresh_view(session: Session) -> None:
    """A fresh view for the next mail of a batch, as in a transaction of its own: no object
    or cached answer of the mails before it (they are written; what it needs it reads
    again), but for the open incidents and the agents, which storing mail never changes."""
    before = state_of(session)
    session.info.clear()
    state_of(session).open_incidents = before.open_incidents
    state_of(session).agents = before.agents
    session.expunge_all()


def _in_savepoint(session: Session, desk: Desk, prepared: Prepared) -> Outcome | None:
    """The mail's own part of the transaction; None when it was rolled back, to be
    stored by itself. A fault of the database ends the whole batch."""
    fresh_view(session)
    try:
        with session.begin_nested():
            return record(session, desk, prepared)
    except DBAPIError as exc:
        if getattr(exc, "connection_invalidated", False) or not mail_fault(exc):
            raise
        log.info("<%s> rolled back in its batch (%s); stored by itself", prepared.label,
                 str(exc).splitlines()[0])
        return None
    except StorageError as exc:
        if not exc.mail_fault:
            raise
        return None
    except Exception as exc:
        log.info("<%s> rolled back in its batch (%s: %s); stored by itself", prepared.label,
                 type(exc).__name__, exc)
        return None
