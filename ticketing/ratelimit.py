"""Rate limits on the mail the system sends on its own account (RFC 3834 section 2)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta

from sqlalchemy import Engine, bindparam, case, delete, func, insert
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from ticketing.addresses import is_machine_address, normalize
from ticketing.db import transaction
from ticketing.mailkind import MailKind
from ticketing.models import Account, AutoReplyLog
from ticketing.settings import LimitSettings
from ticketing.txstate import state_of

log = logging.getLogger(__name__)

WINDOW = timedelta(hours=1)
_LOG = AutoReplyLog.__table__  # type: ignore[attr-defined]
_ACCOUNT = Account.__table__  # type: ignore[attr-defined]
_INSERT_LOG = insert(_LOG)
# A status page update to its confirmed subscribers (MailKind.STATUS_UPDATE) counts
# against each reader's hourly limit, but not against the ceiling on all automatic mail,
# which keeps strangers' mail from making the desk a spam cannon; an operator's update to
# those who asked for it is not that, and must not use up the room the customers'
# confirmations need.
# Built once: each new ticket asks them for every reader of its confirmation and notice.
_SENT_SINCE = (sa_select(func.count()).select_from(_LOG)
               .where(_LOG.c.sent_at > bindparam("since"),
                      _LOG.c.kind != MailKind.STATUS_UPDATE.value))
# Both windows of one address in one query: all its mails, and those about one ticket.
_SENT_TO = (sa_select(func.count(),
                      func.coalesce(func.sum(case((_LOG.c.ticket_id == bindparam("ticket"), 1),
                                                  else_=0)), 0))
            .where(_LOG.c.recipient == bindparam("address"), _LOG.c.sent_at > bindparam("since")))
# A counted mail older than every window counts for nothing: kept a day, then deleted a
# thousand at a time, each batch a short transaction of its own with a pause after it,
# so that storing mail (this process's and others') takes its turn between them.
KEPT = timedelta(days=1)
_PRUNED_AT_ONCE = 1000
_PAUSE = 0.05
_PRUNE = delete(_LOG).where(_LOG.c.id.in_(
    sa_select(_LOG.c.id).where(_LOG.c.sent_at < bindparam("before")).limit(_PRUNED_AT_ONCE)))
_BOUNCING_AMONG = (sa_select(_ACCOUNT.c.address)
                   .where(_ACCOUNT.c.address.in_(bindparam("addresses", expanding=True)),
                          _ACCOUNT.c.bouncing_since.is_not(None)))


def _sent_since(session: Session, since: datetime) -> int:
    """Automatic mails sent after `since`: asked once a transaction for each window,
    then kept current by record_auto_reply()."""
    counts = state_of(session).auto_replies_since
    if since not in counts:
        counts[since] = int(session.connection().execute(_SENT_SINCE, {"since": since}).scalar_one())
    return counts[since]


def _account(session: Session, address: str) -> Account | None:
    return session.exec(select(Account).where(Account.address == address)).first()


def bouncing(session: Session, addresses: Iterable[str]) -> set[str]:
    """Which of these addresses bounce; one query for those not yet asked in this
    transaction (mark_bouncing and clear_bouncing keep the answers current)."""
    known = state_of(session).bouncing
    unknown = [a for a in dict.fromkeys(addresses) if a not in known]
    if unknown:
        # Nothing pending can change the answer (mark_bouncing writes its own, and
        # records it here): asked past the session, with no flush of its new rows first.
        rows = set(session.connection().execute(
            _BOUNCING_AMONG, {"addresses": unknown}).scalars())
        for address in unknown:
            known[address] = address in rows
    return {a for a, bounces in known.items() if bounces}


def may_auto_reply(
    session: Session,
    limits: LimitSettings,
    recipient: str,
    ticket_id: int | None,
    now: datetime,
    own_addresses: Collection[str] = (),
) -> bool:
    """Whether one more automatic mail may go to this address now (each limit 0 = off).

    The windows slide: each counts what went out in the hour before `now`.
    """
    address = normalize(recipient)
    if not address or is_machine_address(address):
        # RFC 3834 2: never answer an address no person reads (noreply,
        # mailer-daemon, list robots): that is how mail loops start.
        return False
    if address in {normalize(a) for a in own_addresses}:
        return False
    if address in bouncing(session, [address]):
        return False
    since = now - WINDOW
    if limits.overall_per_hour and _sent_since(session, since) >= limits.overall_per_hour:
        state = state_of(session)
        if not state.ceiling_told:
            state.ceiling_told = True
            log.warning("the ceiling of %d automatic mails an hour (limits.overall_per_hour) "
                        "is reached: no confirmations or notices to customers until the hour "
                        "has room again", limits.overall_per_hour)
        return False
    if limits.per_recipient_per_hour or limits.per_ticket_recipient_per_hour:
        to_address, to_ticket = session.connection().execute(
            _SENT_TO, {"address": address, "since": since, "ticket": ticket_id}).one()
        if limits.per_recipient_per_hour and to_address >= limits.per_recipient_per_hour:
            return False
        if (ticket_id is not None and limits.per_ticket_recipient_per_hour
                and to_ticket >= limits.per_ticket_recipient_per_hour):
            return False
    return True


def record_auto_reply(
    session: Session, recipient: str, ticket_id: int | None, kind: MailKind, now: datetime
) -> None:
    """Count one automatic mail against the windows; written with the outbox row it goes with."""
    address = normalize(recipient) or recipient.strip().lower()[:320]
    # A plain insert: the row is only ever counted, never read back as an object.
    session.connection().execute(_INSERT_LOG, {"recipient": address, "ticket_id": ticket_id,
                                               "kind": kind[:32], "sent_at": now})
    counts = state_of(session).auto_replies_since
    for since in counts:
        if now > since:
            counts[since] += 1


def mark_bouncing(session: Session, address: str, detail: str, now: datetime) -> None:
    """Stop automatic mail to an address until an operator clears it; keeps the first date."""
    address = normalize(address)
    if not address:
        return
    account = _account(session, address)
    if account is None:
        # Another process may create the same account at the same moment: try in
        # a savepoint, and on a clash use the row it made.
        try:
            with session.begin_nested():
                account = Account(address=address, created_at=now)
                session.add(account)
        except IntegrityError:
            account = _account(session, address)
            if account is None:
                raise
    if account.bouncing_since is None:
        account.bouncing_since = now
    account.bounce_detail = " ".join(detail.split())[:2000]
    session.add(account)
    session.flush()
    state_of(session).bouncing[address] = True


def clear_bouncing(session: Session, address: str) -> bool:
    """Let mail go to the address again; False when it was not marked."""
    account = _account(session, normalize(address))
    if account is None or account.bouncing_since is None:
        return False
    account.bouncing_since = None
    account.bounce_detail = ""
    session.add(account)
    session.flush()
    state_of(session).bouncing[account.address] = False
    return True


def prune_auto_replies(engine: Engine, now: datetime, stop: threading.Event | None = None) -> int:
    """Delete the counted mails older than KEPT; returns how many. Ends early, between
    two batches, once `stop` is set."""
    stop = stop or threading.Event()
    removed = 0
    while True:
        with transaction(engine, durable=False) as session:
            count = session.connection().execute(_PRUNE, {"before": now - KEPT}).rowcount
        removed += count
        if count < _PRUNED_AT_ONCE or stop.wait(_PAUSE):
            return removed
