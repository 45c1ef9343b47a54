"""What a customer may see on the web: their tickets, each one's public thread and files."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from ticketing.accounts import CUSTOMER_ROLES
from ticketing.models import Attachment, Message, Participant, Ticket
from ticketing.participants import agent_addresses
from ticketing.settings import Settings
from ticketing.severity import Severity

# The kinds of message everyone on a ticket reads; notes and the rest stay with agents.
PUBLIC_KINDS = ("request", "reply")


@dataclass(frozen=True)
class TicketLine:
    number: int
    subject: str
    severity: Severity
    status: str
    role: str
    updated_at: datetime


@dataclass(frozen=True)
class FileLine:
    id: int
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class ThreadEntry:
    id: int
    author: str
    address: str
    by_agent: bool
    at: datetime
    text: str
    files: list[FileLine]


@dataclass(frozen=True)
class Person:
    address: str
    name: str
    role: str


@dataclass(frozen=True)
class TicketView:
    ticket: Ticket
    severity: Severity
    people: list[Person]
    thread: list[ThreadEntry]
    root_message_id: str


def my_tickets(session: Session, address: str, limit: int = 100, offset: int = 0) -> list[TicketLine]:
    """Tickets the address asked for or was copied on (or follows), newest activity first."""
    rows = session.execute(
        sa_select(col(Ticket.id), col(Ticket.subject), col(Ticket.severity), col(Ticket.status),
                  col(Participant.role), col(Ticket.updated_at))
        .join(Participant, col(Participant.ticket_id) == col(Ticket.id))
        .where(col(Participant.address) == address, col(Participant.role).in_(CUSTOMER_ROLES))
        .order_by(col(Ticket.updated_at).desc(), col(Ticket.id).desc())
        .offset(offset).limit(limit)
    ).all()
    return [TicketLine(number or 0, subject, Severity(severity), status, role, updated_at)
            for number, subject, severity, status, role, updated_at in rows]


def ticket_for(session: Session, address: str, number: int) -> Ticket | None:
    """The ticket when the address is a customer on it; None otherwise (a stranger learns nothing)."""
    on_it = session.exec(
        select(Participant.id).where(Participant.ticket_id == number, Participant.address == address,
                                     col(Participant.role).in_(CUSTOMER_ROLES)).limit(1)
    ).first()
    return session.get(Ticket, number) if on_it is not None else None


def ticket_view(session: Session, settings: Settings, ticket: Ticket) -> TicketView:
    agents = agent_addresses(session, settings)
    people = [
        Person(p.address, p.name or agents.get(p.address, ""), p.role)
        for p in session.exec(
            select(Participant).where(Participant.ticket_id == ticket.id, Participant.active)
            .order_by(col(Participant.id))
        ).all()
    ]
    if ticket.assignee and all(p.address != ticket.assignee for p in people):
        people.append(Person(ticket.assignee, agents.get(ticket.assignee, ""), "agent"))
    messages = session.execute(
        sa_select(col(Message.id), col(Message.from_name), col(Message.from_address),
                  col(Message.created_at), col(Message.text), col(Message.message_id))
        .where(col(Message.ticket_id) == ticket.id, col(Message.kind).in_(PUBLIC_KINDS))
        .order_by(col(Message.id))
    ).all()
    files: dict[int, list[FileLine]] = {}
    for a in session.exec(
        select(Attachment).where(col(Attachment.message_pk).in_([m.id for m in messages]))
        .order_by(col(Attachment.id))
    ).all():
        files.setdefault(a.message_pk, []).append(FileLine(a.id or 0, a.filename, a.content_type, a.size))
    thread = [
        ThreadEntry(m.id, m.from_name or m.from_address, m.from_address,
                    m.from_address in agents, m.created_at, m.text, files.get(m.id, []))
        for m in messages
    ]
    root = next((m.message_id for m in messages if m.message_id), "")
    return TicketView(ticket, Severity(ticket.severity), people, thread, root)


def attachment_for(session: Session, address: str, number: int, file_id: int) -> Attachment | None:
    """A file of a public message on a ticket the address is on; None for anything else."""
    if ticket_for(session, address, number) is None:
        return None
    row = session.get(Attachment, file_id)
    if row is None:
        return None
    message = session.get(Message, row.message_pk)
    if message is None or message.ticket_id != number or message.kind not in PUBLIC_KINDS:
        return None
    return row
