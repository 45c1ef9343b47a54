"""The agents' queue: open tickets, the most urgent and longest waiting first, filtered."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from ticketing.models import Ticket
from ticketing.participants import agent_addresses
from ticketing.search import matching
from ticketing.settings import Settings
from ticketing.severity import Severity

OPEN = ("open", "pending")


@dataclass(frozen=True)
class QueueFilter:
    status: str = ""  # "" for open and pending; or one status; or "all"
    severity: int | None = None
    mine: str = ""  # an agent's address: their tickets only
    unassigned: bool = False
    text: str = ""


@dataclass(frozen=True)
class QueueLine:
    number: int
    subject: str
    requester: str
    severity: Severity
    status: str
    assignee: str
    age: timedelta
    customer_wrote: timedelta  # since the customer last wrote (or the ticket was opened)


def _naive(value: datetime) -> datetime:
    return value.replace(tzinfo=None) if value.tzinfo is not None else value


def queue(session: Session, settings: Settings, wanted: QueueFilter, now: datetime,
          limit: int = 200) -> list[QueueLine]:
    waiting = func.coalesce(Ticket.customer_wrote_at, Ticket.created_at).label("waiting")
    query = select(Ticket, waiting)
    if wanted.status == "all":
        pass
    elif wanted.status:
        query = query.where(Ticket.status == wanted.status)
    else:
        query = query.where(col(Ticket.status).in_(OPEN))
    if wanted.severity is not None:
        query = query.where(Ticket.severity == wanted.severity)
    if wanted.mine:
        query = query.where(Ticket.assignee == wanted.mine)
    if wanted.unassigned:
        query = query.where(or_(col(Ticket.assignee).is_(None), col(Ticket.assignee) == ""))
    order: list[Any] = [col(Ticket.severity), waiting, col(Ticket.id)]
    if wanted.text.strip():
        found = matching(session, wanted.text)
        if found is None:
            return []  # nothing typed that a word could match
        query = query.join(found, found.c.ticket_id == Ticket.id)
        order.insert(1, found.c.score)  # S0 first, then the best match
    query = query.order_by(*order).limit(limit)
    now = _naive(now)
    lines = []
    for ticket, wrote in session.exec(query).all():
        assert ticket.id is not None
        lines.append(QueueLine(
            number=ticket.id, subject=ticket.subject, requester=ticket.requester,
            severity=Severity(ticket.severity), status=ticket.status,
            assignee=ticket.assignee or "", age=now - _naive(ticket.created_at),
            customer_wrote=now - _naive(wrote),
        ))
    return lines


def is_agent(session: Session, settings: Settings, address: str) -> bool:
    return address.lower() in agent_addresses(session, settings)
