"""Who takes part in a ticket, and who the agents are."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert
from sqlmodel import Session, select

from ticketing.addresses import Address
from ticketing.models import Agent, Participant, Ticket
from ticketing.settings import Settings
from ticketing.txstate import state_of

# A plain insert: a participant added is active, and is read again only from the database.
_INSERT_PARTICIPANT = insert(Participant.__table__)  # type: ignore[attr-defined]


def agent_addresses(session: Session, settings: Settings) -> dict[str, str]:
    """Agent address -> name, from the config and the agents table (read once a transaction)."""
    state = state_of(session)
    if state.agents is not None:
        return dict(state.agents)
    agents = {address.lower(): "" for address in settings.agents.addresses}
    for agent in session.exec(select(Agent)).all():
        agents[agent.address] = agent.name
    state.agents = agents
    return dict(agents)


def active_participants(session: Session, ticket: Ticket) -> list[Participant]:
    return list(
        session.exec(
            select(Participant)
            .where(Participant.ticket_id == ticket.id, Participant.active)
            .order_by(Participant.id)  # type: ignore[arg-type]
        ).all()
    )


def opened(session: Session, ticket: Ticket) -> None:
    """A ticket made in this transaction has nobody on it yet: no need to ask the database."""
    assert ticket.id is not None
    state_of(session).participants[ticket.id] = {}


def add_participants(
    session: Session,
    ticket: Ticket,
    people: Iterable[Address],
    role: str,
    now: datetime,
) -> list[Address]:
    """Add people not yet on the ticket (or back after #unfollow); returns those added."""
    assert ticket.id is not None
    # Who is on each ticket is read once a transaction and kept current here.
    cache = state_of(session).participants
    existing = cache.get(ticket.id)
    if existing is None:
        existing = {
            p.address: p
            for p in session.exec(select(Participant).where(Participant.ticket_id == ticket.id)).all()
        }
        cache[ticket.id] = existing
    added = []
    for person in people:
        if person.address not in existing:
            existing[person.address] = None  # added now, active
            added.append(person)
            continue
        current = existing[person.address]
        if current is not None and not current.active and role in ("requester", "agent"):
            current.active = True
            session.add(current)
    if added:
        session.connection().execute(_INSERT_PARTICIPANT, [
            {"ticket_id": ticket.id, "address": person.address, "name": person.name,
             "role": role, "active": True, "created_at": now}
            for person in added
        ])
    return added


def follow(session: Session, ticket: Ticket, person: Address, now: datetime) -> bool:
    """An agent puts someone on the ticket: a follower from now on, or back after leaving.
    False when they were on it already."""
    if add_participants(session, ticket, [person], "follower", now):
        return True
    assert ticket.id is not None  # add_participants has read who is on it
    current = state_of(session).participants[ticket.id][person.address]
    if current is None or current.active:
        return False
    current.active = True
    session.add(current)
    return True


def unfollow(session: Session, ticket: Ticket, address: str) -> bool:
    participant = session.exec(
        select(Participant).where(Participant.ticket_id == ticket.id, Participant.address == address)
    ).first()
    if participant is None or not participant.active:
        return False
    participant.active = False
    session.add(participant)
    known = state_of(session).participants.get(participant.ticket_id)
    if known is not None:  # keep this transaction's view of who is on the ticket current
        known[address] = participant
    return True


def among_participants(session: Session, ticket: Ticket, address: str) -> bool:
    """The address is on the ticket (now or before, or its assignee), or shares its
    domain with someone who is."""
    domain = address.rpartition("@")[2]
    people = session.exec(select(Participant.address).where(Participant.ticket_id == ticket.id)).all()
    return any(person == address or person.rpartition("@")[2] == domain
               for person in (*people, ticket.assignee) if person)
