"""Who someone is on the web: an operator, an agent, or a customer; and adding agents."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from ticketing.addresses import normalize
from ticketing.audit import Actor, operator_action
from ticketing.models import Agent
from ticketing.participants import agent_addresses
from ticketing.settings import Settings
from ticketing.txstate import state_of

OPERATOR = "operator"
AGENT = "agent"
CUSTOMER = "customer"


def is_operator(session: Session, settings: Settings, address: str) -> bool:
    """Operators are named in agents.operators or added with `agents add --operator`;
    no one else is one, other agents included."""
    address = address.lower()
    if address in {a.lower() for a in settings.agents.operators}:
        return True
    return bool(session.exec(select(Agent.operator).where(Agent.address == address)).first())


def role_of(session: Session, settings: Settings, address: str) -> str:
    if is_operator(session, settings, address):
        return OPERATOR
    if address.lower() in agent_addresses(session, settings):
        return AGENT
    return CUSTOMER


def add_agent(session: Session, address: str, name: str, now: datetime,
              operator: bool | None = None, by: Actor | None = None) -> Agent:
    """An agent (made, or its name changed); `operator` True or False makes it one or not,
    None leaves that as it was."""
    found = normalize(address)
    if not found:
        raise ValueError(f"not a mail address: {address!r}")
    agent = session.exec(select(Agent).where(Agent.address == found)).first()
    if agent is None:
        agent = Agent(address=found, name=name, created_at=now)
    if name:
        agent.name = name
    if operator is not None:
        agent.operator = operator
    session.add(agent)
    session.flush()
    state_of(session).agents = None  # the transaction's list of agents is out of date
    if by is not None:
        operator_action(by, f"agent {found} added{' as an operator' if agent.operator else ''}")
    return agent
