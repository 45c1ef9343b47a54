"""What operators read: tickets, their threads, the outbox and the inbound records, as plain data."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, col, select

from ticketing.audit import trail
from ticketing.models import (
    Attachment,
    Message,
    Outbox,
    Page,
    PageAttempt,
    Participant,
    Quarantine,
    Ticket,
)
from ticketing.severity import Severity


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def ticket_summary(session: Session, ticket: Ticket) -> dict[str, Any]:
    participants = session.exec(
        select(Participant).where(Participant.ticket_id == ticket.id).order_by(col(Participant.id))
    ).all()
    return {
        "number": ticket.id,
        "subject": ticket.subject,
        "severity": Severity(ticket.severity).label,
        "status": ticket.status,
        "requester": ticket.requester,
        "requester_name": ticket.requester_name,
        "assignee": ticket.assignee,
        "participants": [p.address for p in participants if p.active],
        "followers": [p.address for p in participants if p.active and p.role == "follower"],
        "linked_ticket": ticket.linked_ticket_id,
        "created_at": _time(ticket.created_at),
        "updated_at": _time(ticket.updated_at),
    }


def list_tickets(session: Session, status: str | None = None, *, severity: str | None = None,
                 assignee: str | None = None) -> list[dict[str, Any]]:
    """Tickets, oldest first; `assignee` "-" means nobody's."""
    query = select(Ticket).order_by(col(Ticket.id))
    if status:
        query = query.where(Ticket.status == status)
    if severity:
        query = query.where(Ticket.severity == Severity.parse(severity).value)
    if assignee == "-":
        query = query.where((col(Ticket.assignee) == "") | col(Ticket.assignee).is_(None))
    elif assignee:
        query = query.where(Ticket.assignee == assignee)
    return [ticket_summary(session, t) for t in session.exec(query).all()]


def _attachments(session: Session, message_pk: int | None) -> list[dict[str, Any]]:
    rows = session.exec(
        select(Attachment).where(Attachment.message_pk == message_pk).order_by(col(Attachment.id))
    ).all()
    return [
        {"id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size,
         "sha256": a.sha256, "inline": a.inline}
        for a in rows
    ]


def message_record(session: Session, m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "message_id": m.message_id,
        "from": m.from_address,
        "from_name": m.from_name,
        "kind": m.kind,
        "note": m.kind == "note",
        "route": m.route,
        "subject": m.subject,
        "text": m.text,
        "full_text": m.full_text,
        "detail": m.detail,
        "created_at": _time(m.created_at),
        "attachments": _attachments(session, m.id),
    }


def show_ticket(session: Session, number: int) -> dict[str, Any] | None:
    ticket = session.get(Ticket, number)
    if ticket is None:
        return None
    messages = session.exec(
        select(Message).where(Message.ticket_id == number).order_by(col(Message.id))
    ).all()
    sent = session.exec(
        select(Outbox).where(Outbox.ticket_id == number).order_by(col(Outbox.id))
    ).all()
    return ticket_summary(session, ticket) | {
        "messages": [message_record(session, m) for m in messages],
        "sent": [outbox_record(o) for o in sent],
        "audit": trail(session, number),
    }


_PAGE_STATES = {"pending": "queued", "delivered": "delivered", "gave_up": "given up",
                "skipped": "not sent"}


def page_history(session: Session, number: int) -> list[dict[str, Any]]:
    """The ticket's pages, oldest first, each with every attempt to deliver it: queued,
    delivered, given up, or withheld by the page limits (and why)."""
    pages = session.exec(
        select(Page).where(Page.ticket_id == number).order_by(col(Page.id))
    ).all()
    attempts: dict[int, list[dict[str, Any]]] = {}
    for a in session.exec(
        select(PageAttempt).where(col(PageAttempt.page_id).in_([p.id for p in pages]))
        .order_by(col(PageAttempt.id))
    ).all():
        attempts.setdefault(a.page_id, []).append(
            {"at": _time(a.at), "ok": a.ok, "detail": a.detail})
    return [
        {"id": p.id, "hook": p.hook, "action": p.action, "status": p.status,
         "state": _PAGE_STATES.get(p.status, p.status) if p.action != "withheld" else "withheld",
         "attempts": attempts.get(p.id or 0, []), "created_at": _time(p.created_at),
         "delivered_at": _time(p.delivered_at), "last_error": p.last_error}
        for p in pages
    ]


def file_on_ticket(session: Session, number: int, file_id: int) -> Attachment | None:
    """A file of any mail or note on the ticket (agents see them all); None otherwise."""
    row = session.get(Attachment, file_id)
    if row is None:
        return None
    message = session.get(Message, row.message_pk)
    return row if message is not None and message.ticket_id == number else None


def outbox_record(o: Outbox) -> dict[str, Any]:
    return {
        "id": o.id,
        "ticket": o.ticket_id,
        "kind": o.kind,
        "message_id": o.message_id,
        "recipients": json.loads(o.recipients),
        "status": o.status,
        "attempts": o.attempts,
        "next_attempt_at": _time(o.next_attempt_at),
        "last_error": o.last_error,
        "created_at": _time(o.created_at),
        "sent_at": _time(o.sent_at),
    }


def list_outbox(session: Session, status: str | None = None) -> list[dict[str, Any]]:
    query = select(Outbox).order_by(col(Outbox.id))
    if status:
        query = query.where(Outbox.status == status)
    return [outbox_record(o) for o in session.exec(query).all()]


def list_inbound(session: Session, everything: bool = False) -> list[dict[str, Any]]:
    """Mail that made no ticket: quarantined, held, classified (auto-replies, bounces...)."""
    records: list[dict[str, Any]] = []
    for q in session.exec(select(Quarantine).order_by(col(Quarantine.id))).all():
        records.append({
            "id": f"q{q.id}", "status": "replayed" if q.replayed_at else "quarantined",
            "kind": "quarantined", "route": q.route, "error": q.error, "outcome": q.outcome,
            "size": q.raw_size, "created_at": _time(q.created_at),
        })
    query = select(Message).order_by(col(Message.id))
    if not everything:
        query = query.where(col(Message.kind).notin_(("request", "reply", "note")))
    for m in session.exec(query).all():
        records.append({
            "id": f"m{m.id}", "status": "held" if m.kind == "held" else "stored",
            "kind": m.kind, "ticket": m.ticket_id, "route": m.route, "from": m.from_address,
            "subject": m.subject, "detail": m.detail, "message_id": m.message_id,
            "created_at": _time(m.created_at),
        })
    return records
