"""Who is told what: each mail the desk sends, as outbox rows in the caller's transaction."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from ticketing.addresses import Address, is_machine_address
from ticketing.compose import FileToSend, OutgoingMail, Templates, compose
from ticketing.conversation import (
    is_ours,
    is_postmaster,
    remember_thread,
    reply_address,
    subject_tag,
)
from ticketing.incidents import open_incident_titles
from ticketing.mailkind import MailKind
from ticketing.models import Attachment, Message, Outbox, Page, Ticket
from ticketing.oncall import next_opening
from ticketing.participants import active_participants, agent_addresses
from ticketing.phrases import (
    business_hours,
    name_and_address,
    names_and_addresses,
    other_tickets,
    received,
    response_target,
)
from ticketing.quotes import REPLY_MARKER
from ticketing.ratelimit import bouncing, may_auto_reply, record_auto_reply
from ticketing.returnpath import bounce_address
from ticketing.settings import Settings
from ticketing.severity import Severity
from ticketing.txstate import state_of

if TYPE_CHECKING:
    from ticketing.desk import Desk

log = logging.getLogger(__name__)
_HISTORY = 5
_NAMED = 200  # copied addresses over the ceiling named in the agents' notice; all are kept


_OUTBOX = Outbox.__table__  # type: ignore[attr-defined]
# Prebuilt statements: the row is written once and read by nobody in this transaction
# but by its id, so no ORM object is made for it.
_INSERT_OUTBOX = insert(_OUTBOX).returning(_OUTBOX.c.id)
_SET_RETURN_PATH = (update(_OUTBOX).where(_OUTBOX.c.id == bindparam("row_id"))
                    .values(mail_from=bindparam("return_path")))
_ATTACHMENT = Attachment.__table__  # type: ignore[attr-defined]
# Attachment rows are written by plain inserts, never left to a flush: no flush first.
_ATTACHMENTS_OF = (sa_select(_ATTACHMENT.c.filename, _ATTACHMENT.c.content_type,
                             _ATTACHMENT.c.size, _ATTACHMENT.c.sha256)
                   .where(_ATTACHMENT.c.message_pk == bindparam("message_pk"))
                   .order_by(_ATTACHMENT.c.id))


def enqueue(
    session: Session, ticket: Ticket | None, kind: MailKind, mail: OutgoingMail, now: datetime,
    settings: Settings,
) -> int:
    """Queue the mail; returns its outbox row's id."""
    connection = session.connection()
    number = connection.execute(_INSERT_OUTBOX, {
        "ticket_id": ticket.id if ticket else None,
        "kind": kind,
        "message_id": mail.message_id,
        "mail_from": settings.support.address,
        "recipients": json.dumps(list(mail.recipients)),
        "raw": mail.raw,
        "files": json.dumps([{"sha256": f.sha256, "filename": f.filename,
                              "content_type": f.content_type} for f in mail.files]),
        "status": "pending", "attempts": 0, "next_attempt_at": now, "claimed_by": "",
        "claimed_until": None, "last_error": "", "created_at": now, "sent_at": None,
    }).scalar_one()
    # Its own return path: a bounce names this mail, and so its reader (RFC 5321 4.4).
    connection.execute(_SET_RETURN_PATH,
                       {"row_id": number, "return_path": bounce_address(number, settings)})
    if ticket is not None and ticket.id is not None:
        remember_thread(connection, mail.message_id, ticket.id)
        known = state_of(session).sent.get(ticket.id)
        if known is not None:  # keep this transaction's view of who holds what current
            known[1].append((mail.message_id, set(mail.recipients)))
    return int(number)


def _ticket_mail(
    session: Session, desk: Desk, ticket: Ticket, kind: MailKind, now: datetime, *,
    to: Sequence[Address], subject: str, text: str, html: str,
    thread: tuple[str | None, Sequence[str]] | None = None,
    auto_submitted: str | None = "auto-generated", **more: Any,
) -> int:
    """One mail about a ticket: its signed Reply-To, threaded under the mails its first
    reader already has from this ticket (or as `thread` says), queued in the outbox."""
    assert ticket.id is not None
    readers = [a.address for a in (*to, *more.get("cc", ()))]
    in_reply_to, chain = thread if thread is not None else thread_of(session, ticket, readers)
    mail = compose(
        desk.settings, to=to, subject=subject, text=text, html=html, now=now,
        reply_to=reply_address(ticket.id, desk.settings), in_reply_to=in_reply_to,
        references=chain, auto_submitted=auto_submitted, **more,
    )
    return enqueue(session, ticket, kind, mail, now, desk.settings)


def _common(desk: Desk, ticket: Ticket | None) -> dict[str, Any]:
    return _context(desk.settings, ticket)


def _context(settings: Settings, ticket: Ticket | None) -> dict[str, Any]:
    """What every template may name: our name, the status page, the ticket and its page."""
    support = settings.support
    return {
        "marker": REPLY_MARKER,
        "support_name": support.name,
        "status_page": support.status_page,
        "tag": subject_tag(ticket.id) if ticket and ticket.id else "",
        "subject": ticket.subject if ticket else "",
        # The ticket's page on the Help Desk; following it signed out asks to sign in first.
        "ticket_url": f"{settings.web.url}/requests/{ticket.id}"
        if ticket and ticket.id and settings.web.enabled else "",
    }


def _deliverable(session: Session, desk: Desk, address: str) -> bool:
    """Never mail our own addresses, nor an address whose mail bounced for good."""
    return not is_ours(address, desk.settings) and address not in bouncing(session, [address])


def thread_of(
    session: Session, ticket: Ticket, readers: Sequence[str]
) -> tuple[str | None, list[str]]:
    """(the Message-ID to answer, the References chain) for a new mail on the ticket:
    the opening request, then every mail of ours these readers were sent; it answers the
    first reader's latest.

    Each reader holds only their own copies (each has its own Message-ID), so a chain of
    those is what their client can thread on (RFC 5322 3.6.4).
    """
    root, sent = _sent(session, ticket)
    wanted = set(readers)
    chain = ([root] if root else []) + [m for m, to in sent if to & wanted]
    first = [m for m, to in sent if readers and readers[0] in to]
    return (first[-1] if first else root or None), chain


def _sent(session: Session, ticket: Ticket) -> tuple[str, list[tuple[str, set[str]]]]:
    """The ticket's opening Message-ID, and each mail of ours with its recipients, in order;
    read once a transaction, then kept current by enqueue()."""
    cache = state_of(session).sent
    assert ticket.id is not None
    if ticket.id not in cache:
        root = session.exec(
            select(Message.message_id).where(Message.ticket_id == ticket.id, Message.message_id != "")
            .order_by(col(Message.id)).limit(1)
        ).first() or ""
        rows = session.exec(
            select(Outbox.message_id, Outbox.recipients)
            .where(Outbox.ticket_id == ticket.id).order_by(col(Outbox.id))
        ).all()
        cache[ticket.id] = (root, [(m, set(json.loads(to))) for m, to in rows])
    return cache[ticket.id]


def confirm_new_ticket(
    session: Session, desk: Desk, ticket: Ticket, request: Message, cc: Sequence[Address],
    now: datetime, paged: bool, next_opening: str | None,
) -> int | None:
    """The confirmation to the requester, Cc the CC list (an auto-reply: RFC 3834 applies)."""
    assert ticket.id is not None
    requester = ticket.requester
    # A ticket just opened: its thread is the request alone, no need to ask the database.
    state_of(session).sent.setdefault(ticket.id, (request.message_id, []))
    # Whether any reader of the confirmation or the agents' notice bounces: one question.
    team = desk.settings.agents.team_address
    bouncing(session, [requester, *(a.address for a in cc),
                       *([team.lower()] if team else agent_addresses(session, desk.settings))])
    if not _deliverable(session, desk, requester) or not may_auto_reply(
        session, desk.settings.limits, requester, ticket.id, now
    ):
        log.info("[#%s] no confirmation to %s (rate limit, machine or bouncing address)",
                 ticket.id, requester)
        return None
    record_auto_reply(session, requester, ticket.id, MailKind.CONFIRMATION, now)
    # Everyone copied gets this mail on the system's own account: each is rate-limited,
    # or a stranger could send anyone a stream of confirmations with a subject of theirs.
    # Each counts as it is taken, so the overall ceiling holds within one mail too.
    copied = []
    for person in cc:
        if (_deliverable(session, desk, person.address) and not is_machine_address(person.address)
                and may_auto_reply(session, desk.settings.limits, person.address, ticket.id, now)):
            record_auto_reply(session, person.address, ticket.id, MailKind.CONFIRMATION, now)
            copied.append(person)
    severity = Severity(ticket.severity)
    shown = excerpt(request.text)
    context = _common(desk, ticket) | {
        "requester": requester,
        "requester_name": ticket.requester_name,
        "severity": severity.label,
        "severity_word": severity.word,
        "severity_meaning": severity.meaning,
        "cc": names_and_addresses(copied),
        "paged": paged,
        "next_opening": next_opening,
        "business_hours": business_hours(desk.settings.hours),
        "response_target": response_target(desk.settings, severity),
        "request": shown,
        "quoted": _quoted(shown),
        "levels": [{"label": level.label, "word": level.word, "meaning": level.meaning}
                   for level in Severity if level < severity],
        # Open incidents on the status page: the customer may be reporting one of them.
        "incidents": [{"number": number, "title": title, "state": state,
                       "url": f"{desk.settings.web.url}/status/incidents/{number}"}
                      for number, title, state in open_incident_titles(session)],
    }
    text, html = desk.templates.render("confirmation", **context)
    _, chain = thread_of(session, ticket, [requester])
    return _ticket_mail(
        session, desk, ticket, MailKind.CONFIRMATION, now,
        to=[Address(requester, ticket.requester_name)], cc=copied,
        subject=f"{subject_tag(ticket.id)} {ticket.subject}", text=text, html=html,
        thread=(request.message_id or None, chain), auto_submitted="auto-replied",
    )


def _files(session: Session, desk: Desk, message: Message) -> tuple[list[FileToSend], list[str]]:
    """The message's attachments to send along, and the names of those too large to."""
    limit = desk.settings.outbound.max_attachment_size
    send: list[FileToSend] = []
    omitted: list[str] = []
    rows = session.execute(_ATTACHMENTS_OF, {"message_pk": message.id}).all()
    for row in rows:
        if row.size > limit:
            omitted.append(f"{row.filename} ({row.size:,} bytes)")
            continue
        if not desk.blobs.has(session, row.sha256):
            omitted.append(f"{row.filename} (not readable)")
            continue
        # Named, not copied: each reader's mail refers to the one stored file.
        send.append(FileToSend(row.filename, row.content_type, row.sha256))
    return send, omitted


def announce_new_ticket(
    session: Session, desk: Desk, ticket: Ticket, request: Message, cc: Sequence[Address],
    now: datetime, paged_hooks: Sequence[str] = (), not_paged: str = "",
    not_copied: Sequence[Address] = (),
) -> list[int]:
    """Tell the agents (or the team list) of a new ticket; its Reply-To makes their answer
    public. not_paged says why a ticket that calls for a page paged nobody; not_copied
    names the copied addresses over support.max_copied, who get no mail."""
    assert ticket.id is not None
    team = desk.settings.agents.team_address
    agents = [team.lower()] if team else sorted(agent_addresses(session, desk.settings))
    agents = [a for a in agents if a != ticket.requester and _deliverable(session, desk, a)]
    if not agents:
        return []
    severity = Severity(ticket.severity)
    files, omitted = _files(session, desk, request)
    agent_names = agent_addresses(session, desk.settings)
    others, other_count = other_tickets(session, ticket, desk.settings.hours)
    context = _common(desk, ticket) | {
        "requester": ticket.requester,
        "requester_name": ticket.requester_name,
        "severity": severity.label,
        "severity_word": severity.word,
        "severity_meaning": severity.meaning,
        "cc": names_and_addresses(list(cc)),
        "requester_shown": name_and_address(ticket.requester_name, ticket.requester),
        "received": received(request.created_at, desk.settings.hours),
        "status": ticket.status,
        "assignee": name_and_address(agent_names.get(ticket.assignee, ""), ticket.assignee)
                    if ticket.assignee else "",
        "other_tickets": others,
        "other_count": other_count,
        "text": request.text,
        "attachments": [f.filename for f in files] + omitted,
        "paged": bool(paged_hooks),
        "paged_at": now.strftime("%Y-%m-%d %H:%M UTC"),
        "paged_hooks": list(paged_hooks),
        "not_paged": not_paged,
        "not_copied": [a.address for a in not_copied[:_NAMED]],
        "not_copied_count": len(not_copied),
        "max_copied": desk.settings.support.max_copied,
    }
    text, html = desk.templates.render("new_ticket", **context)
    urgent = [("Importance", "high"), ("X-Priority", "1")] if paged_hooks else []
    rows = []
    for agent in agents:
        rows.append(_ticket_mail(
            session, desk, ticket, MailKind.NEW_TICKET, now, to=[Address(agent, agent_names.get(agent, ""))],
            # The level in words, not as a tag: a reply keeping this subject must not
            # set the severity back.
            subject=f"{subject_tag(ticket.id)} {ticket.subject} ({severity.label} {severity.word})",
            text=text, html=html,
            thread=(request.message_id or None, [request.message_id] if request.message_id else []),
            from_name=f"{ticket.requester_name or ticket.requester} via {desk.settings.support.name}",
            attachments=files, extra_headers=urgent,
        ))
    return rows


def _history(session: Session, ticket: Ticket, before: Message, notes: bool) -> list[dict[str, Any]]:
    kinds = ["request", "reply", "note"] if notes else ["request", "reply"]
    rows = session.exec(
        select(Message)
        .where(Message.ticket_id == ticket.id, col(Message.kind).in_(kinds),
               col(Message.id) < (before.id or 0))
        .order_by(col(Message.id).desc())
        .limit(_HISTORY)
    ).all()
    history = []
    for m in rows:
        shown = excerpt(m.text)
        history.append({
            "date": m.created_at.strftime("%a, %d %b %Y %H:%M UTC"),
            "author": m.from_name or m.from_address,
            "note": m.kind == "note",
            "text": shown,
            "quoted": _quoted(shown),
        })
    return history


# What a mail quotes of an earlier one: its reader wrote it or has it, and the ticket keeps
# it whole. A request of megabytes must not come back as megabytes in every mail after it.
QUOTE_LINES = 60
QUOTE_CHARACTERS = 6000


def excerpt(text: str) -> str:
    """The text's first QUOTE_LINES lines, no more than QUOTE_CHARACTERS characters (the
    line that crosses it cut there), with a last line saying how many lines were left out
    (blank lines at the end are not counted)."""
    lines = text.rstrip().splitlines()
    kept: list[str] = []
    room = QUOTE_CHARACTERS
    for line in lines[:QUOTE_LINES]:
        if len(line) > room:
            kept.append(line[:room] + " [...]")
            break
        kept.append(line)
        room -= len(line) + 1
    left = len(lines) - len(kept)
    if left:
        kept.append(f"[... {left:,} more line{'s' if left != 1 else ''}, kept with the ticket]")
    return "\n".join(kept)


def _quoted(shown: str) -> str:
    """The excerpt as a plain-text mail quotes it."""
    return "\n".join("> " + line if line else ">" for line in shown.splitlines())


def fan_out(
    session: Session, desk: Desk, ticket: Ticket, message: Message, now: datetime,
    *, author_is_agent: bool, already_reached: Iterable[str], note: bool = False,
    status_change: str | None = None, raised_from: Severity | None = None, paging: bool = False,
    auto_submitted: str | None = None,
) -> list[int]:
    """A new message on a ticket to every participant but its author, once each, with the
    status change it made ("solved", "closed", "reopened") and, to agents, a severity a
    customer raised by it.

    One mail per recipient: each copy names only its reader and our signed Reply-To,
    so "reply all" in any client comes back through the ticket (recorded, threaded,
    fanned out once) instead of going around it, and a bounce names one address.
    `auto_submitted` for a message the system wrote (an incident resolved), not a person.
    """
    assert ticket.id is not None
    author = message.from_address
    agents = agent_addresses(session, desk.settings)
    reached = set(already_reached)
    recipients: dict[str, str] = {}
    for participant in active_participants(session, ticket):
        if not note or participant.role == "agent":
            recipients.setdefault(participant.address, participant.name)
    if ticket.assignee:
        recipients.setdefault(ticket.assignee, agents.get(ticket.assignee, ""))
    if note or (not ticket.assignee and not author_is_agent):
        # A customer's mail on an unassigned ticket, and every note, go to all agents.
        for address, name in agents.items():
            recipients.setdefault(address, name)
    recipients.pop(author, None)
    for address in reached:
        recipients.pop(address, None)
    bouncing(session, recipients)
    recipients = {a: n for a, n in recipients.items() if _deliverable(session, desk, a)}
    if not recipients:
        return []
    files, omitted = _files(session, desk, message)
    display = message.from_name or message.from_address
    severity = Severity(ticket.severity)
    rows = []
    for address, name in recipients.items():
        is_agent = address in agents
        raised = raised_from is not None and is_agent
        context = _common(desk, ticket) | {
            "text": message.text,
            "author": display,
            "note": note,
            "attachments_omitted": omitted,
            "history": _history(session, ticket, message, notes=is_agent),
            "status_change": status_change,
            "reopen_days": desk.settings.tickets.reopen_days,
            "raised_from": raised_from.label if raised and raised_from is not None else "",
            "severity": severity.label,
            "severity_word": severity.word,
            "urgent": raised and severity is Severity.S0,
            "paging": paging,
        }
        text, html = desk.templates.render("reply", **context)
        urgent = raised and severity is Severity.S0
        # A person's words: no Auto-Submitted (RFC 3834 section 5), or the reader's
        # helpdesk and mail rules treat an answer as machine mail; the system's own
        # words (auto_submitted) are marked as such.
        rows.append(_ticket_mail(
            session, desk, ticket, MailKind.NOTE if note else MailKind.REPLY, now,
            to=[Address(address, name)],
            subject=f"{'[Note] ' if note else ''}Re: {subject_tag(ticket.id)} {ticket.subject}",
            text=text, html=html, from_name=f"{display} via {desk.settings.support.name}",
            attachments=files, auto_submitted=auto_submitted,
            extra_headers=[("Importance", "high"), ("X-Priority", "1")] if urgent else [],
        ))
    return rows


def severity_raised(
    session: Session, desk: Desk, ticket: Ticket, message: Message, old: Severity,
    now: datetime, *, paging: bool,
) -> int | None:
    """A short acknowledgement to the customer whose mail raised the severity."""
    assert ticket.id is not None
    reader = message.from_address
    if not _deliverable(session, desk, reader) or not may_auto_reply(
        session, desk.settings.limits, reader, ticket.id, now
    ):
        return None
    severity = Severity(ticket.severity)
    context = _common(desk, ticket) | {
        "requester": reader,
        "requester_name": message.from_name,
        "severity": severity.label,
        "severity_word": severity.word,
        "old_severity": old.label,
        "paging": paging,
        "what_next": what_next(desk, ticket, now),
    }
    text, html = desk.templates.render("raised", **context)
    record_auto_reply(session, reader, ticket.id, MailKind.RAISED, now)
    _, chain = thread_of(session, ticket, [reader])
    return _ticket_mail(
        session, desk, ticket, MailKind.RAISED, now, to=[Address(reader, message.from_name)],
        subject=f"Re: {subject_tag(ticket.id)} {ticket.subject}", text=text, html=html,
        thread=(message.message_id or None, [*chain, *([message.message_id] if message.message_id else [])]),
        auto_submitted="auto-replied",
    )


def what_next(desk: Desk, ticket: Ticket, now: datetime) -> str:
    """When people may expect an engineer, for a ticket that pages nobody."""
    hours = desk.settings.hours
    opening = next_opening(now, hours)
    if opening > now:
        return f"An engineer will pick it up when the support desk opens, {opening:%A %d %B at %H:%M %Z}."
    return "An engineer will look at it during business hours and reply to this thread."


def status_notice(
    session: Session, desk: Desk, ticket: Ticket, status: str, now: datetime
) -> int | None:
    """Tell the requester (Cc the customers on the thread) the ticket was solved, closed or reopened."""
    assert ticket.id is not None
    requester_active = any(p.address == ticket.requester and p.role == "requester"
                           for p in active_participants(session, ticket))
    if not requester_active or not _deliverable(session, desk, ticket.requester):
        return None
    copied = [
        Address(p.address, p.name)
        for p in active_participants(session, ticket)
        if p.role in ("cc", "follower") and _deliverable(session, desk, p.address)
    ]
    context = _common(desk, ticket) | {
        "requester": ticket.requester,
        "requester_name": ticket.requester_name,
        "status": status,
        "reopen_days": desk.settings.tickets.reopen_days,
    }
    text, html = desk.templates.render("status", **context)
    return _ticket_mail(
        session, desk, ticket, MailKind(f"status_{status}"), now,
        to=[Address(ticket.requester, ticket.requester_name)], cc=copied,
        subject=f"Re: {subject_tag(ticket.id)} {ticket.subject}", text=text, html=html,
    )


def page_not_delivered(
    session: Session, settings: Settings, templates: Templates, page: Page, now: datetime
) -> list[int]:
    """The urgent mail to the agents (or the team list) when a page was given up or
    refused for good: nobody else will wake the on-call engineer."""
    ticket = session.get(Ticket, page.ticket_id)
    if ticket is None or ticket.id is None:
        return []
    team = settings.agents.team_address
    agents = [team.lower()] if team else sorted(agent_addresses(session, settings))
    agents = [a for a in agents if not is_ours(a, settings)
              and a not in bouncing(session, agents)]
    severity = Severity(ticket.severity)
    context = _context(settings, ticket) | {
        "marker": "",
        "number": ticket.id,
        "severity": severity.label,
        "severity_word": severity.word,
        "requester": ticket.requester,
        "requester_name": ticket.requester_name,
        "hook": page.hook,
        "page_id": page.id,
        "attempts": page.attempts,
        "error": page.last_error,
        "queued_at": page.created_at.strftime("%Y-%m-%d %H:%M UTC"),
    }
    text, html = templates.render("not_paged", **context)
    rows = []
    for agent in agents:
        in_reply_to, chain = thread_of(session, ticket, [agent])
        mail = compose(
            settings, to=[Address(agent)], text=text, html=html, now=now,
            subject=f"{subject_tag(ticket.id)} URGENT: on-call was NOT paged for #{ticket.id}",
            reply_to=reply_address(ticket.id, settings), in_reply_to=in_reply_to,
            references=chain, auto_submitted="auto-generated",
            extra_headers=[("Importance", "high"), ("X-Priority", "1")],
        )
        rows.append(enqueue(session, ticket, MailKind.NOT_PAGED, mail, now, settings))
    log.warning("[#%s] told %s that on-call was not paged", ticket.id,
                ", ".join(agents) or "nobody (no agents configured)")
    return rows


def command_error(
    session: Session, desk: Desk, ticket: Ticket, agent: str, errors: Sequence[str], now: datetime
) -> int:
    """A short private mail to the agent whose command could not be applied."""
    assert ticket.id is not None
    context = _common(desk, ticket) | {"errors": list(errors)}
    text, html = desk.templates.render("command_error", **context)
    return _ticket_mail(
        session, desk, ticket, MailKind.COMMAND_ERROR, now, to=[Address(agent)],
        subject=f"Re: {subject_tag(ticket.id)} {ticket.subject} (command not applied)",
        text=text, html=html, auto_submitted="auto-replied",
    )


def no_account(
    session: Session, desk: Desk, sender: Address, subject: str, request: Message, now: datetime
) -> int | None:
    """The "no Help Desk account: ask your account manager" reply, rate-limited."""
    if not _deliverable(session, desk, sender.address) or not may_auto_reply(
        session, desk.settings.limits, sender.address, None, now
    ):
        return None
    context = _common(desk, None) | {"subject": subject, "sender": sender.address}
    text, html = desk.templates.render("no_account", **context)
    mail = compose(
        desk.settings,
        to=[sender],
        subject=f"Re: {subject}" if subject else "Your mail to support",
        text=text,
        html=html,
        now=now,
        in_reply_to=request.message_id or None,
        references=[request.message_id] if request.message_id else [],
        auto_submitted="auto-replied",
    )
    record_auto_reply(session, sender.address, None, MailKind.NO_ACCOUNT, now)
    return enqueue(session, None, MailKind.NO_ACCOUNT, mail, now, desk.settings)


def to_postmaster(session: Session, desk: Desk, message: Message, now: datetime) -> list[str]:
    """Pass a mail to postmaster@ our domain on to the operator (support.operator_address,
    else the team list or the agents), rate-limited like every mail of our own; returns
    who it went to."""
    settings = desk.settings
    team = settings.agents.team_address
    readers = ([settings.support.operator_address.lower()] if settings.support.operator_address
               else [team.lower()] if team else sorted(agent_addresses(session, settings)))
    readers = [a for a in readers if _deliverable(session, desk, a)
               and not is_postmaster(a, settings)
               and may_auto_reply(session, settings.limits, a, None, now)]
    if not readers:
        log.warning("<%s> mail to postmaster kept; no operator address to pass it on to, or "
                    "its hourly limit is reached (mailgate inbound list shows it)",
                    message.message_id)
        return []
    context = _common(desk, None) | {
        "sender": message.from_address or message.envelope_sender,
        "sender_name": message.from_name,
        "subject": message.subject,
        "text": message.text,
        "received": now.strftime("%Y-%m-%d %H:%M UTC"),
        "route": message.route,
    }
    text, html = desk.templates.render("postmaster", **context)
    for reader in readers:
        mail = compose(
            settings, to=[Address(reader)], text=text, html=html, now=now,
            subject=f"[postmaster] {message.subject or '(no subject)'}",
            in_reply_to=message.message_id or None,
            references=[message.message_id] if message.message_id else [],
            auto_submitted="auto-generated",
        )
        record_auto_reply(session, reader, None, MailKind.POSTMASTER, now)
        enqueue(session, None, MailKind.POSTMASTER, mail, now, settings)
    return readers
