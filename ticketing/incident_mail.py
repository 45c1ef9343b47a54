"""What an incident update sends: one mail to each confirmed subscriber, and, when the
operator asks on resolving it, one public answer on each ticket attached to it. Opening,
updating and resolving, as the command line and the desk's pages do it, start here.

All of it is written in the transaction that posts the update, so an update is never
kept without its mails, nor mailed without being kept.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, text
from sqlmodel import Session, col, select

from ticketing.addresses import Address, is_machine_address
from ticketing.compose import compose
from ticketing.conversation import is_ours
from ticketing.db import transaction
from ticketing.incidents import (
    IncidentError,
    NoIncident,
    components_of,
    describe,
    open_incident,
    post_update,
    posted_by_form,
    tickets_of,
)
from ticketing.mailkind import MailKind
from ticketing.models import (
    Account,
    AutoReplyLog,
    Incident,
    IncidentUpdate,
    Message,
    Outbox,
    StatusSubscriber,
    Ticket,
)
from ticketing.notifications import fan_out
from ticketing.ratelimit import WINDOW
from ticketing.returnpath import bounce_address
from ticketing.subscriptions import subscriber_links

if TYPE_CHECKING:
    from ticketing.desk import Desk

log = logging.getLogger(__name__)

LABELS = {"investigating": "Investigating", "identified": "Identified",
          "monitoring": "Monitoring", "resolved": "Resolved"}


@dataclass(frozen=True)
class Told:
    """Who an update reached: subscribers mailed, those left out, tickets answered."""

    subscribers: int
    withheld: int
    tickets: tuple[int, ...] = ()


def publish(session: Session, desk: Desk, incident: Incident, posted: IncidentUpdate,
            now: datetime, *, tell_tickets: bool = False) -> Told:
    """Everything a new update sends, in the caller's transaction."""
    mailed, withheld = mail_subscribers(session, desk, incident, posted, now)
    answered: list[int] = []
    if tell_tickets:
        if incident.state != "resolved":
            raise IncidentError("tickets are told only when the incident is resolved")
        answered = tell_attached_tickets(session, desk, incident, posted, now)
    return Told(mailed, withheld, tuple(answered))


def _recipients(session: Session, desk: Desk, now: datetime) -> tuple[list[Any], int]:
    """Confirmed subscribers who may be mailed now, and how many may not: never our own
    or a machine address, nor one that bounces, nor one over its hourly limit of
    automatic mail (limits.per_recipient_per_hour)."""
    settings = desk.settings
    confirmed = select(StatusSubscriber.address).where(
        col(StatusSubscriber.confirmed_at).is_not(None))
    rows = session.exec(
        select(StatusSubscriber.id, StatusSubscriber.address, StatusSubscriber.key)
        .where(col(StatusSubscriber.confirmed_at).is_not(None))
        .order_by(col(StatusSubscriber.id))
    ).all()
    if not rows:
        return [], 0
    left_out = set(session.exec(
        select(Account.address).where(col(Account.address).in_(confirmed),
                                      col(Account.bouncing_since).is_not(None))
    ).all())
    ceiling = settings.limits.per_recipient_per_hour
    if ceiling:
        left_out.update(session.exec(
            select(AutoReplyLog.recipient)
            .where(col(AutoReplyLog.recipient).in_(confirmed),
                   col(AutoReplyLog.sent_at) > now - WINDOW)
            .group_by(col(AutoReplyLog.recipient)).having(func.count() >= ceiling)
        ).all())
    wanted = [r for r in rows if r[1] not in left_out and not is_machine_address(r[1])
              and not is_ours(r[1], settings)]
    return wanted, len(rows) - len(wanted)


def mail_subscribers(session: Session, desk: Desk, incident: Incident, posted: IncidentUpdate,
                     now: datetime) -> tuple[int, int]:
    """One mail to each confirmed subscriber who may be mailed, queued in the outbox with
    a few bulk statements; returns (mailed, left out)."""
    settings = desk.settings
    support = settings.support
    recipients, withheld = _recipients(session, desk, now)
    if withheld:
        log.info("incident %s update: %d subscriber(s) not mailed (bouncing, machine "
                 "address or hourly limit)", incident.id, withheld)
    if not recipients:
        return 0, withheld
    label = LABELS[posted.state]
    context = {
        "support_name": support.name,
        "title": incident.title,
        "state": posted.state,
        "label": label,
        "text": posted.text,
        "at": posted.at.strftime("%Y-%m-%d %H:%M UTC"),
        "components": components_of(incident),
        "incident_url": f"{settings.web.url}/status/incidents/{incident.id}",
        "status_url": f"{settings.web.url}/status",
    }
    # Rendered once; each reader's own links are put in where the markers stand.
    manage_marker, one_click_marker = (f"mailgate{secrets.token_hex(8)}" for _ in range(2))
    links = {"manage_url": manage_marker, "unsubscribe_url": one_click_marker}
    plain = desk.templates.environment.get_template("status_update.txt").render(context, **links)
    html = desk.templates.environment.get_template("status_update.html").render(context, **links)
    subject = f"[{support.name} status] {incident.title}: {label}"
    rows: list[dict[str, Any]] = []
    counted: list[dict[str, Any]] = []
    for number, (subscriber_id, address, key) in zip(
            _outbox_ids(session, len(recipients)), recipients, strict=True):
        manage, one_click, mailto = subscriber_links(subscriber_id, key, settings)
        mail = compose(
            settings, to=[Address(address)], subject=subject,
            text=plain.replace(manage_marker, manage).replace(one_click_marker, one_click),
            html=html.replace(manage_marker, manage).replace(one_click_marker, one_click),
            now=now, auto_submitted="auto-generated",  # RFC 3834: answer nothing
            extra_headers=[
                # RFC 2369 and RFC 8058: the reader's client offers an unsubscribe
                # button, and a POST to the https address ends it without a page.
                ("List-Unsubscribe", f"<mailto:{mailto}>, <{one_click}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ],
        )
        rows.append({
            "id": number, "ticket_id": None, "kind": MailKind.STATUS_UPDATE,
            "message_id": mail.message_id,
            # Its own return path: a bounce names this mail, and so its reader.
            "mail_from": bounce_address(number, settings),
            "recipients": json.dumps([address]), "raw": mail.raw, "files": "[]",
            "status": "pending", "attempts": 0, "next_attempt_at": now, "claimed_by": "",
            "claimed_until": None, "last_error": "", "created_at": now, "sent_at": None,
        })
        counted.append({"recipient": address, "ticket_id": None, "kind": MailKind.STATUS_UPDATE,
                        "sent_at": now})
    connection = session.connection()
    connection.execute(insert(Outbox), rows)
    connection.execute(insert(AutoReplyLog), counted)
    log.info("incident %s update (%s): mailed to %d subscriber(s)", incident.id, posted.state,
             len(rows))
    return len(rows), withheld


def _outbox_ids(session: Session, count: int) -> list[int]:
    """Numbers for `count` new outbox rows, taken before they are written, so each row is
    written once, with the return path that names it."""
    if session.get_bind().dialect.name == "postgresql":
        return list(session.execute(
            text("SELECT nextval(pg_get_serial_sequence('outbox', 'id')) "
                 "FROM generate_series(1, :count)"), {"count": count}).scalars())
    # SQLite: this transaction has written already (the update), so it holds the
    # database's one write lock and no other writer can take these numbers meanwhile.
    highest = session.execute(select(func.max(Outbox.id))).scalar() or 0
    return list(range(highest + 1, highest + count + 1))


def tell_attached_tickets(session: Session, desk: Desk, incident: Incident,
                          posted: IncidentUpdate, now: datetime) -> list[int]:
    """One public answer on each attached ticket saying the incident is resolved, sent
    as an agent's answer is (threaded, one mail to each participant)."""
    assert incident.id is not None and posted.id is not None
    settings = desk.settings
    template = desk.templates.environment.get_template("incident_resolved.txt")
    told = []
    for number in tickets_of(session, incident.id):
        ticket = session.get(Ticket, number, with_for_update=True)
        if ticket is None:
            continue
        body = template.render(
            support_name=settings.support.name, title=incident.title, text=posted.text,
            incident_url=f"{settings.web.url}/status/incidents/{incident.id}",
        )
        message = Message(
            ticket_id=number, dedupe_key=f"incident-resolved:{incident.id}:{posted.id}:{number}",
            direction="out", kind="reply", route="cli", from_address=settings.support.address,
            from_name="Status page", subject=f"Resolved: {incident.title}", text=body,
            full_text=body, created_at=now,
        )
        session.add(message)
        session.flush()
        ticket.updated_at = now
        session.add(ticket)
        # Written by the system at the operator's word: marked so (RFC 3834), and
        # still answered by the customer into the ticket like any answer of ours.
        fan_out(session, desk, ticket, message, now, author_is_agent=True, already_reached=(),
                auto_submitted="auto-generated")
        told.append(number)
    if told:
        log.info("incident %s resolved: told tickets %s", incident.id,
                 ", ".join(f"#{n}" for n in told))
    return told


# --- Opening, updating and resolving, as the command line and the desk's pages do it ---


def open_and_tell(
    desk: Desk, title: str, *, components: list[str], state: str, message: str, author: str,
    form_key: str | None = None,
) -> tuple[dict[str, Any], Told]:
    """Open an incident and mail its subscribers, in one transaction. A form_key already
    used opens nothing and sends nothing: the incident it opened is answered."""
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        done = posted_by_form(session, form_key)
        if done is not None:
            return describe(session, done), Told(0, 0)
        incident, posted = open_incident(
            session, title, components=components, state=state, message=message,
            author=author, now=now, known=desk.settings.status.components, form_key=form_key)
        told = publish(session, desk, incident, posted, now)
        shown = describe(session, incident)
    desk.committed(pages=False)
    return shown, told


def update_and_tell(
    desk: Desk, number: int, *, state: str | None, message: str, author: str,
    tell_tickets: bool = False, form_key: str | None = None,
) -> tuple[dict[str, Any], Told]:
    """Post an update (state "resolved" resolves it) and send what it sends: subscribers
    (and, when asked on resolving, the attached tickets) are told in the same
    transaction, so an update is never kept without its mails. A form_key already used
    posts nothing and sends nothing."""
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        incident = session.get(Incident, number) if 0 < number < 2**62 else None
        if incident is None:
            raise NoIncident(f"no incident {number}")
        done = posted_by_form(session, form_key)
        if done is not None:
            return describe(session, done), Told(0, 0)
        posted = post_update(session, incident, state=state, message=message, author=author,
                             now=now, form_key=form_key)
        told = publish(session, desk, incident, posted, now, tell_tickets=tell_tickets)
        shown = describe(session, incident)
    desk.committed(pages=False)
    return shown, told
