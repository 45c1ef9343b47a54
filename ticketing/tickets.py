"""What a stored mail does to tickets: open one, add a reply, or file it as classified."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, insert
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from ticketing import bounces, notifications, oncall, subscriptions
from ticketing.addresses import Address
from ticketing.audit import Actor, record_changes, route_of
from ticketing.commands import Commands, split_commands, wants_unfollow, without_unfollow
from ticketing.conversation import clean_subject, find_ticket, is_ours, remember_thread
from ticketing.destination import FromOutside, Held, NewTicket, Reply, Unsubscribe
from ticketing.inbound import Inbound, Outcome, Status
from ticketing.incidents import attach
from ticketing.models import Account, Attachment, Incident, Message, ThreadRef, Ticket
from ticketing.parse import ParsedMail
from ticketing.participants import add_participants, agent_addresses, follow, opened, unfollow
from ticketing.quotes import cut_reply
from ticketing.screening import Verdict
from ticketing.severity import Severity, severity_in, strip_tags

if TYPE_CHECKING:
    from ticketing.desk import Desk

log = logging.getLogger(__name__)

# Plain inserts for rows nothing in the transaction reads back as objects: one statement
# for all of a mail's attachments, however many it has.
_INSERT_ATTACHMENT = insert(Attachment.__table__)  # type: ignore[attr-defined]
_THREAD_REF = ThreadRef.__table__  # type: ignore[attr-defined]
# Thread references are only ever written by plain statements: read them the same way.
_THREAD_OF = sa_select(_THREAD_REF.c.ticket_id).where(
    _THREAD_REF.c.message_id == bindparam("message_id"))
_FORGET_THREAD_REF = delete(_THREAD_REF).where(
    _THREAD_REF.c.message_id == bindparam("message_id"))
_INSERT_ACCOUNT = insert(Account.__table__)  # type: ignore[attr-defined]
_TICKET = Ticket.__table__  # type: ignore[attr-defined]
_MESSAGE = Message.__table__  # type: ignore[attr-defined]
_COLUMNS = {table.name: [c.name for c in table.columns if c.name != "id"]
            for table in (_TICKET, _MESSAGE)}
_INSERT_RETURNING = {table.name: insert(table).returning(table.c.id)
                     for table in (_TICKET, _MESSAGE)}


@dataclass(frozen=True)
class StoredFile:
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool
    content_id: str


def stored_files(mail: ParsedMail) -> list[StoredFile]:
    """What is recorded of each attachment; its bytes are kept by keep_files."""
    return [StoredFile(item.filename, item.content_type[:255], len(item.data), item.sha256,
                       item.inline, item.content_id[:1000]) for item in mail.attachments]


def keep_files(session: Session, desk: Desk, raw: bytes, raw_sha256: str, mail: ParsedMail) -> None:
    """The raw mail and its attachments into the blob store, in the mail's own transaction.

    In order of their hashes: two mails sharing two files take them in the same order,
    so neither waits on the other for ever.
    """
    blobs = {raw_sha256: raw} | {item.sha256: item.data for item in mail.attachments}
    for sha256 in sorted(blobs):
        desk.blobs.put(session, sha256, blobs[sha256])


def _new_row(session: Session, table: Any, row: Ticket | Message) -> int:
    """Write a new ticket or message by a plain insert and return its number. The object
    stays out of the session: nothing in the transaction changes it once written."""
    values = {name: getattr(row, name) for name in _COLUMNS[table.name]}
    number = session.connection().execute(_INSERT_RETURNING[table.name], values).scalar_one()
    return int(number)


def _save(session: Session, message: Message, files: list[StoredFile], ticket: Ticket | None) -> None:
    message.ticket_id = ticket.id if ticket else None
    if message.id is None:  # a mail just received
        message.id = _new_row(session, _MESSAGE, message)
    else:  # a held mail, stored before, now on a ticket
        session.add(message)
        session.flush()
    connection = session.connection()
    if files:
        connection.execute(_INSERT_ATTACHMENT, [
            {"message_pk": message.id, "filename": f.filename, "content_type": f.content_type,
             "size": f.size, "sha256": f.sha256, "inline": f.inline, "content_id": f.content_id}
            for f in files
        ])
    if ticket is not None and message.message_id:
        known = connection.execute(_THREAD_OF, {"message_id": message.message_id}).scalar()
        if known is None:
            assert ticket.id is not None
            remember_thread(connection, message.message_id, ticket.id)
        elif known != ticket.id:
            # Two different mails (not copies of one) with one Message-ID, on two tickets:
            # one of them is forged, and an answer naming it must join neither.
            log.warning("<%s> also names a mail on #%s: it threads no ticket any more",
                        message.message_id, known)
            connection.execute(_FORGET_THREAD_REF, {"message_id": message.message_id})


def _copied(
    mail: ParsedMail, desk: Desk, exclude: set[str]
) -> tuple[list[Address], list[Address]]:
    """Everyone in To and Cc but our own addresses and those excluded: those taken, and
    those over support.max_copied (kept on the message, and mailed nothing)."""
    found: dict[str, Address] = {}
    for person in (*mail.to, *mail.cc):
        if not is_ours(person.address, desk.settings) and person.address not in exclude:
            found.setdefault(person.address, person)
    people = list(found.values())
    ceiling = desk.settings.support.max_copied
    if not ceiling or len(people) <= ceiling:
        return people, []
    log.warning("<%s> copies %d addresses: the first %d take part, the rest get no mail "
                "(support.max_copied)", mail.message_id, len(people), ceiling)
    return people[:ceiling], people[ceiling:]


def _keep(
    session: Session, message: Message, files: list[StoredFile], kind: str, detail: str,
    status: Status = Status.CLASSIFIED,
) -> Outcome:
    """A mail kept on no ticket, with what it is and why."""
    message.kind = kind
    message.detail = detail
    _save(session, message, files, None)
    return Outcome(status, None, message.id, message.detail)


def file_classified(
    session: Session, desk: Desk, inbound: Inbound, mail: ParsedMail, message: Message,
    files: list[StoredFile], verdict: Verdict, believed: bool,
) -> Outcome:
    """Auto-replies, bounces, list mail, our own echo: stored and classified, never answered.
    `believed`: the From address passed the agents.trust check."""
    sender = mail.sender.address if mail.sender else ""
    match = find_ticket(session, mail, inbound, desk.settings, sender)
    ticket = match.ticket if match else None
    # Where it came back to: one mail's own return path, or (to file it on its
    # ticket only) the Message-ID of a mail of ours it quotes.
    came_back = bounces.came_back_to(session, desk.settings, inbound, mail)
    returned = came_back or bounces.returned_mail(session, desk.settings, inbound.raw)
    if ticket is None and returned is not None and returned.ticket_id is not None:
        ticket = session.get(Ticket, returned.ticket_id)
    message.kind = verdict.kind
    message.detail = f"{verdict.rule}: {verdict.reason}"[:2000]
    _save(session, message, files, ticket)
    if verdict.kind == "bounce" and verdict.permanent:
        bounces.stop_bounced(session, desk.clock.now(), came_back, verdict, mail.message_id)
    if verdict.rule == "feedback-report":
        bounces.stop_complainant(session, desk.settings, desk.clock.now(), inbound, mail, believed)
    number = ticket.id if ticket else None
    return Outcome(Status.CLASSIFIED, number, message.id, f"{verdict.kind} ({verdict.rule})")


def file_postmaster(
    session: Session, desk: Desk, message: Message, files: list[StoredFile]
) -> Outcome:
    """Mail to postmaster@ our domain: kept, no ticket, and passed on to the operator."""
    readers = notifications.to_postmaster(session, desk, message, desk.clock.now())
    return _keep(session, message, files, "postmaster",
                 f"to postmaster: passed on to {', '.join(readers)}" if readers
                 else "to postmaster: kept; nobody to pass it on to (or rate-limited)")


def file_unsubscribe(
    session: Session, desk: Desk, message: Message, files: list[StoredFile], unsubscribe: Unsubscribe
) -> Outcome:
    """Mail to a status subscription's unsubscribe address (the mailto of its
    List-Unsubscribe header, RFC 2369): the subscription ends; kept, no ticket, no answer."""
    row = subscriptions.find_by_token(session, unsubscribe.token, desk.settings.support.secret)
    if row is None:
        detail = "to a status unsubscribe address: no such subscription (ended already)"
    else:
        detail = f"status updates to {row.address} ended"
        subscriptions.end(session, row, "unsubscribe mail")
    return _keep(session, message, files, "unsubscribe", detail)


def file_without_sender(
    session: Session, message: Message, files: list[StoredFile]
) -> Outcome:
    """No usable From address and no ticket it answers: kept, no ticket."""
    return _keep(session, message, files, "no_sender", "no usable From address: kept, no ticket")


def hold(
    session: Session, desk: Desk, mail: ParsedMail, message: Message, files: list[StoredFile],
    held: Held,
) -> Outcome:
    """A request the sender policy keeps from opening a ticket: held, and the sender told
    how to get an account."""
    outcome = _keep(session, message, files, "held",
                    "sender has no Help Desk account (policy: registered)", Status.HELD)
    notifications.no_account(session, desk, held.sender, mail.subject, message, desk.clock.now())
    return outcome


def open_new(
    session: Session, desk: Desk, mail: ParsedMail, message: Message, files: list[StoredFile],
    new: NewTicket,
) -> Outcome:
    """A new ticket (linked to the closed one it answers, if any); the sender gets an
    account when they have none."""
    sender = new.sender
    if new.account is None:
        # The other columns take the model's own defaults.
        session.connection().execute(_INSERT_ACCOUNT, {
            "address": sender.address, "name": sender.name, "created_at": desk.clock.now(),
        })
    return open_ticket(session, desk, mail, message, files, sender, new.linked)


def open_ticket(
    session: Session, desk: Desk, mail: ParsedMail, message: Message, files: list[StoredFile],
    sender: Address, linked: Ticket | None = None,
) -> Outcome:
    now = desk.clock.now()
    severity = severity_in(mail.subject)
    subject = clean_subject(strip_tags(mail.subject)) or "(no subject)"
    ticket = Ticket(
        subject=subject[:1000],
        severity=int(severity if severity is not None else Severity.S3),
        requester=sender.address,
        requester_name=sender.name,
        linked_ticket_id=linked.id if linked else None,
        created_at=now,
        updated_at=now,
        status_changed_at=now,
        customer_wrote_at=now,
    )
    ticket.id = _new_row(session, _TICKET, ticket)
    message.kind = "request"
    _save(session, message, files, ticket)
    opened(session, ticket)
    Actor(sender.address, sender.name, route_of(message.route)).record(
        session, ticket, "opened", new=f"{Severity(ticket.severity).label} {ticket.status}",
        now=now)
    add_participants(session, ticket, [sender], "requester", now)
    # Agents copied on a request hear of it by the agents' notice, not as customers.
    cc, not_copied = _copied(mail, desk, {sender.address, *agent_addresses(session, desk.settings)})
    add_participants(session, ticket, cc, "cc", now)
    pages, withheld = (
        oncall.escalate_within_limits(session, ticket, desk.settings, now, "new ticket")
        if _calls_for_page(desk, Severity(ticket.severity)) else ([], ""))
    if withheld:
        log.warning("[#%s] on-call not paged: %s", ticket.id, withheld)
    next_opening = None
    if not pages:
        opening = oncall.next_opening(now, desk.settings.hours)
        if opening > now:
            next_opening = opening.strftime("%A %d %B at %H:%M %Z")
    notifications.confirm_new_ticket(session, desk, ticket, message, cc, now, bool(pages),
                                     next_opening)
    notifications.announce_new_ticket(session, desk, ticket, message, cc, now,
                                      sorted({p.hook for p in pages}), not_paged=withheld,
                                      not_copied=not_copied)
    detail = f"{Severity(ticket.severity).label}, {len(cc)} copied, {len(files)} attached"
    return Outcome(Status.NEW_TICKET, ticket.id, message.id, detail)


def _calls_for_page(desk: Desk, severity: Severity) -> bool:
    """Whether a ticket of this severity pages on-call now: S0 day and night, S1 outside
    business hours when the on-call settings ask for it."""
    settings = desk.settings
    return oncall.should_page(severity, desk.clock.now(), settings.oncall, settings.hours)


def _escalation(
    session: Session, desk: Desk, ticket: Ticket, severity: Severity, status: str,
    by_agent: bool,
) -> None:
    """Page when a change makes the ticket call for it (raised, or reopened while it does);
    close the page when it no longer does (lowered below the paging policy). A customer's
    change pages within the page limits; an agent's always."""
    now = desk.clock.now()
    due = _calls_for_page(desk, Severity(ticket.severity))
    was_due = _calls_for_page(desk, severity)
    reopened = status in ("solved", "closed") and ticket.status not in ("solved", "closed")
    if due and (reopened or not was_due):
        why = "reopened" if reopened else "severity raised"
        if by_agent:
            oncall.escalate(session, ticket, desk.settings, now, why)
        else:
            _, withheld = oncall.escalate_within_limits(session, ticket, desk.settings, now, why)
            if withheld:
                log.warning("[#%s] on-call not paged: %s", ticket.id, withheld)
    elif was_due and not due:
        oncall.resolve(session, ticket, desk.settings, now)


def file_reply(
    session: Session, desk: Desk, inbound: Inbound, mail: ParsedMail, message: Message,
    files: list[StoredFile], reply: Reply,
) -> Outcome:
    """A mail on a ticket from a participant or an authenticated agent: its commands,
    the changes it makes, and who hears of it."""
    ticket, sender, is_agent, agents = reply.ticket, reply.sender, reply.is_agent, reply.agents
    now = desk.clock.now()
    text = cut_reply(mail.text)
    commands = Commands()
    if is_agent:
        commands, text = split_commands(text)
    leaving = wants_unfollow(text)
    if leaving:
        text = without_unfollow(text)
    message.text = text
    message.kind = "note" if commands.note else "reply"
    errors = list(commands.errors)
    if commands.assign and commands.assign != "me" and commands.assign not in agents:
        errors.append(f"#assign {commands.assign}: not an agent address")
    incident = session.get(Incident, commands.incident) if commands.incident else None
    if commands.incident and incident is None:
        errors.append(f"#incident {commands.incident}: no such incident")
    errors += _follower_errors(session, desk, ticket, commands, agents)
    if errors:
        message.kind = "rejected"
        message.detail = "; ".join(errors)[:2000]
        _save(session, message, files, ticket)
        notifications.command_error(session, desk, ticket, sender.address, errors, now)
        return Outcome(Status.REPLY, ticket.id, message.id, "command error: not published")
    _save(session, message, files, ticket)
    ticket.updated_at = now
    if not is_agent:
        ticket.customer_wrote_at = now
    # A From header proves nothing: a mail that joined only by its subject tag and
    # its From (no reply token, no Message-ID of the thread) is added to the thread
    # but changes nobody's place on it.
    by_from_only = reply.how == "tag" and not is_agent
    if by_from_only and (leaving or _copied(mail, desk, {sender.address})):
        log.warning("[#%s] <%s> from %s joined by its subject tag only: its #unfollow and "
                    "copied addresses are ignored", ticket.id, mail.message_id, sender.address)
    actor = Actor(sender.address, sender.name, route_of(inbound.route))
    if leaving:
        if not by_from_only and unfollow(session, ticket, sender.address):
            actor.record(session, ticket, "follower", old=sender.address, now=now,
                         detail="#unfollow")
        if not text.strip():
            session.add(ticket)
            return Outcome(Status.REPLY, ticket.id, message.id,
                           "#unfollow ignored: joined by subject tag only" if by_from_only
                           else "unfollowed")
    if not by_from_only:
        _join(session, desk, ticket, mail, sender, is_agent, agents, now, actor)
    _change_followers(session, ticket, commands, actor, now)
    before = Severity(ticket.severity), ticket.status
    assignee = ticket.assignee
    status_change = _apply(session, desk, ticket, commands, sender.address, is_agent, mail,
                           message, now)
    session.add(ticket)
    queued = oncall.queued(session)
    _escalation(session, desk, ticket, *before, by_agent=is_agent)
    paging = oncall.queued(session) > queued
    record_changes(session, ticket, actor, now, before[0], before[1], assignee)
    if incident is not None:
        attach(session, incident, ticket, actor, now)
    _tell(session, desk, ticket, message, mail, commands, is_agent, now,
          status_change=status_change, raised_from=before[0], paging=paging)
    return Outcome(Status.REPLY, ticket.id, message.id, f"{message.kind} by {reply.how}")


def _tell(
    session: Session, desk: Desk, ticket: Ticket, message: Message, mail: ParsedMail,
    commands: Commands, is_agent: bool, now: datetime, *, status_change: str | None,
    raised_from: Severity, paging: bool,
) -> None:
    """One mail per event per reader: a public answer carries the status change it made
    (no separate notice); the author never hears of their own mail; a customer who
    raised the severity gets a short acknowledgement."""
    public = message.kind == "reply" and bool(message.text.strip())
    if status_change and is_agent and not public:
        notifications.status_notice(session, desk, ticket, status_change, now)
    raised = not is_agent and Severity(ticket.severity) < raised_from
    if raised:
        notifications.severity_raised(session, desk, ticket, message, raised_from, now,
                                      paging=paging)
    if is_agent and not message.text.strip() and commands.lines:
        return  # commands alone: their effect is the news, told above
    reached = {a.address for a in (*mail.to, *mail.cc)}
    notifications.fan_out(session, desk, ticket, message, now, author_is_agent=is_agent,
                          already_reached=reached, note=commands.note,
                          status_change=status_change if public or not is_agent else None,
                          raised_from=raised_from if raised else None, paging=paging)


def file_from_outside(
    session: Session, desk: Desk, mail: ParsedMail, message: Message, files: list[StoredFile],
    outside: FromOutside,
) -> Outcome:
    """The "ticket trick": a reply address used to sign up elsewhere gets that service's
    verification mail. Mail to it from someone not on the ticket and not in a
    participant's domain is kept for the agents as a note, never passed on to customers."""
    ticket, sender = outside.ticket, outside.sender
    message.text = cut_reply(mail.text)
    message.kind = "note"
    message.detail = (f"from {sender}, who is not on the ticket: kept for the agents, "
                      "not passed on to the customers")[:2000]
    _save(session, message, files, ticket)
    log.warning("[#%s] <%s> from %s, not on the ticket nor in a participant's domain: kept "
                "for the agents only", ticket.id, mail.message_id, sender)
    notifications.fan_out(session, desk, ticket, message, desk.clock.now(), author_is_agent=False,
                          already_reached=(), note=True)
    return Outcome(Status.REPLY, ticket.id, message.id, "from outside the ticket: for the agents only")


def _join(
    session: Session, desk: Desk, ticket: Ticket, mail: ParsedMail, sender: Address,
    is_agent: bool, agents: dict[str, str], now: datetime, actor: Actor,
) -> None:
    """New people on the thread become followers; an agent who answers takes part."""
    if is_agent:
        add_participants(session, ticket, [sender], "agent", now)
        added = []
    else:
        added = add_participants(session, ticket, [sender], "follower", now)
    newcomers, _ = _copied(mail, desk, {sender.address, *agents})
    added += add_participants(session, ticket, newcomers, "follower", now)
    for person in added:
        actor.record(session, ticket, "follower", new=person.address, now=now,
                     detail="wrote in" if person.address == sender.address else "copied")


def _follower_errors(
    session: Session, desk: Desk, ticket: Ticket, commands: Commands, agents: dict[str, str],
) -> list[str]:
    """Followers are customers: not our own addresses, not agents (who hear of the ticket
    as agents), and never the requester taken off the ticket."""
    errors = []
    for address in commands.follow:
        if is_ours(address, desk.settings) or address in agents:
            errors.append(f"#follow {address}: an agent or one of our own addresses")
    for address in commands.unfollow:
        if address == ticket.requester:
            errors.append(f"#unfollow {address}: the requester stays on the ticket")
    return errors


def _change_followers(
    session: Session, ticket: Ticket, commands: Commands, actor: Actor, now: datetime,
) -> None:
    """#follow and #unfollow with an address: an agent adds or removes someone."""
    for address in commands.follow:
        if follow(session, ticket, Address(address), now):
            actor.record(session, ticket, "follower", new=address, now=now, detail="#follow")
    for address in commands.unfollow:
        if unfollow(session, ticket, address):
            actor.record(session, ticket, "follower", old=address, now=now, detail="#unfollow")


def _apply(
    session: Session, desk: Desk, ticket: Ticket, commands: Commands, author: str,
    is_agent: bool, mail: ParsedMail, message: Message, now: datetime,
) -> str | None:
    """Commands and implied changes: assignment, status, severity. Returns the status
    change people are told of ("solved", "closed", "reopened"), if any."""
    if is_agent and not commands.note and ticket.assignee is None:
        ticket.assignee = author  # the first agent to answer publicly takes the ticket
    if commands.assign:
        ticket.assignee = author if commands.assign == "me" else commands.assign
    told = None
    new_status = commands.status
    if not is_agent and ticket.status in ("solved", "closed"):
        new_status = "open"
    if new_status and new_status != ticket.status:
        reopened = new_status == "open" and ticket.status in ("solved", "closed")
        ticket.status = new_status
        ticket.status_changed_at = now
        if new_status in ("solved", "closed"):
            oncall.resolve(session, ticket, desk.settings, now)
        notice = "reopened" if reopened else new_status
        if notice in ("solved", "closed", "reopened"):
            told = notice
    severity = commands.severity
    if severity is None and not commands.note:
        # A tag counts when the writer put it there, not when it is an earlier mail's
        # tag carried along in "Re: [S0] ..." after an agent changed the severity.
        tagged = severity_in(mail.subject)
        if tagged is not None and tagged not in _tags_before(session, ticket, message):
            severity = tagged
    if severity is not None:
        ticket.severity = int(severity)
    return told


def _tags_before(session: Session, ticket: Ticket, message: Message) -> set[Severity]:
    subjects = session.exec(
        select(Message.subject).where(Message.ticket_id == ticket.id, col(Message.id) != message.id)
    ).all()
    return {tag for tag in map(severity_in, subjects) if tag is not None}
