"""The audit trail: each change on a ticket recorded with who, what, when and the route."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from ticketing.models import Ticket, TicketEvent
from ticketing.severity import Severity

SYSTEM = "mailgate"
# A plain insert: an event is written once and only ever read back as the ticket's trail.
_INSERT_EVENT = insert(TicketEvent.__table__)  # type: ignore[attr-defined]

log = logging.getLogger(__name__)


def route_of(inbound_route: str) -> str:
    """The door a change came through: "smtp", "pipe" and "imap:..." are all mail."""
    if inbound_route in ("web", "cli", "system"):
        return inbound_route
    return "mail"


def record(
    session: Session, ticket_id: int, what: str, *, old: str = "", new: str = "",
    actor: str, actor_name: str = "", route: str, now: datetime, detail: str = "",
) -> None:
    """One change, in the caller's transaction."""
    session.connection().execute(_INSERT_EVENT, {
        "ticket_id": ticket_id, "at": now, "actor": actor[:320], "actor_name": actor_name[:200],
        "route": route[:16], "what": what[:16], "old": old[:320], "new": new[:320],
        "detail": detail[:2000],
    })


@dataclass(frozen=True)
class Actor:
    """Who made a change and through which door."""

    address: str
    name: str = ""
    route: str = "mail"

    def record(
        self, session: Session, ticket: Ticket, what: str, *, now: datetime, old: str = "",
        new: str = "", detail: str = "",
    ) -> None:
        assert ticket.id is not None
        record(session, ticket.id, what, old=old, new=new, actor=self.address,
                      actor_name=self.name, route=self.route, now=now, detail=detail)


def operator_action(actor: Actor, what: str) -> None:
    """An operator's change that belongs to no ticket (an account's): it goes to the log,
    with who made it and through which door."""
    who = f"{actor.name} <{actor.address}>" if actor.name else actor.address
    log.info("%s, by %s via %s", what, who, actor.route)


def record_changes(
    session: Session, ticket: Ticket, actor: Actor, now: datetime, severity: int, status: str,
    assignee: str | None,
) -> None:
    """Record how the ticket's severity, status and assignee differ from before."""
    if ticket.severity != severity:
        actor.record(session, ticket, "severity", old=Severity(severity).label,
                     new=Severity(ticket.severity).label, now=now)
    if ticket.status != status:
        actor.record(session, ticket, "status", old=status, new=ticket.status, now=now)
    if ticket.assignee != assignee:
        actor.record(session, ticket, "assignee", old=assignee or "", new=ticket.assignee or "",
                     now=now)


def trail(session: Session, ticket_id: int) -> list[dict[str, Any]]:
    """The ticket's changes, oldest first, as plain data for the CLI and the web desk."""
    rows = session.exec(
        select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(col(TicketEvent.id))
    ).all()
    return [
        {
            "at": row.at.isoformat(),
            "who": row.actor,
            "who_name": row.actor_name,
            "route": row.route,
            "what": row.what,
            "old": row.old,
            "new": row.new,
            "detail": row.detail,
        }
        for row in rows
    ]


def describe(event: dict[str, Any]) -> str:
    """One line for people: "severity S2 -> S0", "follower + dave@x", "page delivered"."""
    what, old, new = event["what"], event["old"], event["new"]
    if what == "follower":
        change = f"+ {new}" if new else f"- {old}"
    elif what in ("page", "opened", "incident", "outbox"):
        change = new
    else:
        change = f"{old or '-'} -> {new or '-'}"
    who = f"{event['who_name']} <{event['who']}>" if event["who_name"] else event["who"]
    detail = f" ({event['detail']})" if event["detail"] else ""
    return f"{event['at']} {what} {change}{detail}, by {who} via {event['route']}"
