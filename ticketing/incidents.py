"""Incidents on the status page: their states, updates, components and attached tickets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from ticketing.audit import Actor
from ticketing.models import Incident, IncidentTicket, IncidentUpdate, Ticket
from ticketing.txstate import state_of

STATES = ("investigating", "identified", "monitoring", "resolved")
# The open incidents as read in this transaction, kept in its info (and across the mails
# of one group commit); opening or updating an incident drops them.


class IncidentError(ValueError):
    """A request about incidents that cannot be done, in words for the operator."""


class NoIncident(IncidentError):
    """The incident asked for is not kept here."""


def check_state(state: str) -> str:
    if state not in STATES:
        raise IncidentError(f"the state must be one of {', '.join(STATES)}, not {state!r}")
    return state


def check_components(components: list[str], known: tuple[str, ...]) -> list[str]:
    """The components as configured; any not in `[status] components` is refused."""
    wanted = [c.strip() for c in components if c.strip()]
    by_name = {k.lower(): k for k in known}
    unknown = [c for c in wanted if c.lower() not in by_name]
    if unknown:
        listed = ", ".join(known) if known else "none configured in [status] components"
        raise IncidentError(f"unknown component(s) {', '.join(unknown)} (known: {listed})")
    return [by_name[c.lower()] for c in wanted]


def components_of(incident: Incident) -> list[str]:
    return [c for c in incident.components.split(",") if c]


def open_incident(
    session: Session, title: str, *, components: list[str], state: str, message: str,
    author: str, now: datetime, known: tuple[str, ...], form_key: str | None = None,
) -> tuple[Incident, IncidentUpdate]:
    """A new incident with its first update."""
    if not title.strip():
        raise IncidentError("an incident needs a title")
    if check_state(state) == "resolved":
        raise IncidentError("a new incident cannot start resolved")
    names = check_components(components, known)
    incident = Incident(title=" ".join(title.split())[:200], state=state,
                        components=",".join(names)[:2000], opened_at=now, updated_at=now)
    session.add(incident)
    session.flush()
    state_of(session).open_incidents = None
    assert incident.id is not None
    update = IncidentUpdate(incident_id=incident.id, at=now, state=state, text=message.strip(),
                            author=author[:320], form_key=form_key)
    session.add(update)
    session.flush()
    return incident, update


def post_update(
    session: Session, incident: Incident, *, state: str | None, message: str, author: str,
    now: datetime, form_key: str | None = None,
) -> IncidentUpdate:
    """An update: a new state, a text, or both. Resolving sets the time it ended."""
    new_state = check_state(state) if state else incident.state
    if incident.state == "resolved" and new_state == "resolved":
        raise IncidentError(f"incident {incident.id} is already resolved")
    if not message.strip() and new_state == incident.state:
        raise IncidentError("an update needs a message or a new state")
    incident.state = new_state
    incident.updated_at = now
    incident.resolved_at = now if new_state == "resolved" else None
    session.add(incident)
    state_of(session).open_incidents = None
    assert incident.id is not None
    update = IncidentUpdate(incident_id=incident.id, at=now, state=new_state,
                            text=message.strip(), author=author[:320], form_key=form_key)
    session.add(update)
    session.flush()
    return update


def attach(session: Session, incident: Incident, ticket: Ticket, actor: Actor,
           now: datetime) -> bool:
    """Attach a ticket to an incident, on the ticket's audit trail; False if it already was."""
    assert incident.id is not None and ticket.id is not None
    if session.get(IncidentTicket, (incident.id, ticket.id)) is not None:
        return False
    session.add(IncidentTicket(incident_id=incident.id, ticket_id=ticket.id, attached_at=now,
                               attached_by=actor.address[:320]))
    actor.record(session, ticket, "incident", new=str(incident.id), now=now,
                 detail=incident.title)
    return True


def posted_by_form(session: Session, form_key: str | None) -> Incident | None:
    """The incident a form with this key already posted to, if it did."""
    if not form_key:
        return None
    return session.exec(
        select(Incident).join(IncidentUpdate, col(IncidentUpdate.incident_id) == Incident.id)
        .where(IncidentUpdate.form_key == form_key)
    ).first()


def open_incidents(session: Session) -> list[Incident]:
    """Incidents not yet resolved, newest first."""
    return list(session.exec(
        select(Incident).where(Incident.state != "resolved").order_by(col(Incident.id).desc())
    ).all())


def incidents_of(session: Session, ticket_id: int) -> list[Incident]:
    """The incidents a ticket is attached to, oldest first."""
    return list(session.exec(
        select(Incident).join(IncidentTicket, col(IncidentTicket.incident_id) == Incident.id)
        .where(IncidentTicket.ticket_id == ticket_id).order_by(col(Incident.id))
    ).all())


_INCIDENT = Incident.__table__  # type: ignore[attr-defined]
_OPEN_INCIDENTS = (sa_select(_INCIDENT.c.id, _INCIDENT.c.title, _INCIDENT.c.state)
                   .where(_INCIDENT.c.state != "resolved").order_by(_INCIDENT.c.id.desc()))


def open_incident_titles(session: Session) -> list[tuple[int, str, str]]:
    """(number, title, state) of each incident not yet resolved, newest first: read once
    a transaction; opening or updating an incident in it reads them again."""
    state = state_of(session)
    if state.open_incidents is None:
        # Past the session, with no flush first: mail being stored changes no incident.
        rows = session.connection().execute(_OPEN_INCIDENTS).all()
        state.open_incidents = [(int(n or 0), t, s) for n, t, s in rows]
    return state.open_incidents


def updates_of(session: Session, incident_id: int) -> list[IncidentUpdate]:
    """Its updates, newest first."""
    return list(session.exec(
        select(IncidentUpdate).where(IncidentUpdate.incident_id == incident_id)
        .order_by(col(IncidentUpdate.id).desc())
    ).all())


def tickets_of(session: Session, incident_id: int) -> list[int]:
    return list(session.exec(
        select(IncidentTicket.ticket_id).where(IncidentTicket.incident_id == incident_id)
        .order_by(col(IncidentTicket.ticket_id))
    ).all())


def describe(session: Session, incident: Incident) -> dict[str, Any]:
    """The incident as plain data, for the CLI's --json and the status pages."""
    assert incident.id is not None
    return {
        "number": incident.id,
        "title": incident.title,
        "state": incident.state,
        "components": components_of(incident),
        "opened_at": incident.opened_at.isoformat(),
        "updated_at": incident.updated_at.isoformat(),
        "resolved_at": incident.resolved_at.isoformat() if incident.resolved_at else None,
        "tickets": tickets_of(session, incident.id),
        "updates": [
            {"at": u.at.isoformat(), "state": u.state, "text": u.text, "author": u.author}
            for u in updates_of(session, incident.id)
        ],
    }


def list_incidents(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """Open incidents first, then the most recent resolved ones."""
    rows = session.exec(
        select(Incident).order_by(col(Incident.resolved_at).is_not(None), col(Incident.id).desc())
        .limit(limit)
    ).all()
    return [describe(session, row) for row in rows]

