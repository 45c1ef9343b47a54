"""Who someone is on the web: an operator, an agent, or a customer."""

from __future__ import annotations

from sqlmodel import Session

from ticketing.participants import agent_addresses
from ticketing.settings import Settings

OPERATOR = "operator"
AGENT = "agent"
CUSTOMER = "customer"


def is_operator(settings: Settings, address: str) -> bool:
    """Operators are named in agents.operators; no one else is one, agents included."""
    return address.lower() in {a.lower() for a in settings.agents.operators}


def role_of(session: Session, settings: Settings, address: str) -> str:
    if is_operator(settings, address):
        return OPERATOR
    if address.lower() in agent_addresses(session, settings):
        return AGENT
    return CUSTOMER
