"""Where a stored mail goes, decided before anything is filed: a status unsubscribe,
to the postmaster, classified, kept without a sender, held, a new (or linked) ticket, a stranger's mail
on a ticket, or a reply to a ticket."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlmodel import Session

from ticketing.addresses import Address, normalize
from ticketing.conversation import find_ticket, is_ours, is_postmaster
from ticketing.inbound import Inbound
from ticketing.models import Account, Ticket
from ticketing.parse import ParsedMail
from ticketing.participants import agent_addresses, among_participants
from ticketing.screening import Verdict
from ticketing.settings import Settings
from ticketing.subscriptions import token_among

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unsubscribe:
    """Mail to a status subscription's unsubscribe address (the mailto of its
    List-Unsubscribe header); the token is not checked yet."""

    token: str


@dataclass(frozen=True)
class ToPostmaster:
    """Mail to postmaster@ one of our domains (and not our own echo)."""


@dataclass(frozen=True)
class Classified:
    """No person wrote it: an auto-reply, a bounce, list mail, our own echo."""


@dataclass(frozen=True)
class NoSender:
    """No usable From address (none, or one of ours), and no ticket it answers."""


@dataclass(frozen=True)
class Held:
    """A new request from a sender the sender policy does not let open tickets."""

    sender: Address


@dataclass(frozen=True)
class SenderAccount:
    """What deciding on a new request needs of its sender's account."""

    registered: bool
    bouncing_since: datetime | None


_ACCOUNT = Account.__table__  # type: ignore[attr-defined]
_ACCOUNT_OF = (sa_select(_ACCOUNT.c.registered, _ACCOUNT.c.bouncing_since)
               .where(_ACCOUNT.c.address == bindparam("address")))


@dataclass(frozen=True)
class NewTicket:
    """A new request; `linked` is the closed ticket it answers after its reopen window."""

    sender: Address
    account: SenderAccount | None  # None: the sender has no account yet
    linked: Ticket | None = None


@dataclass(frozen=True)
class FromOutside:
    """Mail to a ticket's reply address from someone not on it nor in a participant's domain."""

    ticket: Ticket
    sender: str


@dataclass(frozen=True)
class Reply:
    """A mail on a ticket, from a participant or an authenticated agent."""

    ticket: Ticket
    how: str  # how it was matched: "thread" | "token" | "tag"
    sender: Address
    is_agent: bool  # an agent address whose From passed the agents.trust check
    agents: dict[str, str]


Destination = Unsubscribe | ToPostmaster | Classified | NoSender | Held | NewTicket | FromOutside | Reply


def sender_of(mail: ParsedMail, inbound: Inbound) -> Address | None:
    """The From address, or the envelope sender when the mail has none."""
    if mail.sender:
        return mail.sender
    address = normalize(inbound.envelope_sender)
    return Address(address) if address else None


def destination(
    session: Session, settings: Settings, inbound: Inbound, mail: ParsedMail, verdict: Verdict,
    believed: bool, now: datetime,
) -> Destination:
    """Which ticket a mail belongs to and who sent it. `believed`: the From address passed
    the agents.trust check. The ticket found is locked for the rest of the transaction."""
    recipients = inbound.envelope_recipients
    named = [*recipients, *mail.delivered_to, *(a.address for a in (*mail.to, *mail.cc))]
    unsubscribing = token_among(named, settings)
    if verdict.kind != "own" and unsubscribing is not None:
        return Unsubscribe(unsubscribing)
    if verdict.kind != "own" and recipients and all(
        is_postmaster(r, settings) for r in recipients
    ):
        return ToPostmaster()
    if verdict.kind != "human":
        return Classified()
    sender = sender_of(mail, inbound)
    if sender is None:
        return NoSender()
    agents = agent_addresses(session, settings)
    is_agent = sender.address in agents and believed
    match = find_ticket(session, mail, inbound, settings, sender.address, is_agent,
                        unverified_agent=sender.address in agents and not is_agent)
    if match is None:
        return _new_ticket(session, settings, sender)
    ticket = match.ticket
    if not is_agent and ticket.status == "closed" and now - ticket.status_changed_at > timedelta(
        days=settings.tickets.reopen_days
    ):
        return _new_ticket(session, settings, sender, linked=ticket)
    if sender.address in agents and not is_agent:
        log.warning("[#%s] mail from agent address %s failed authentication: treated as a "
                    "customer's", ticket.id, sender.address)
    if match.how == "token" and not is_agent and not among_participants(
            session, ticket, sender.address):
        return FromOutside(ticket, sender.address)
    return Reply(ticket, match.how, sender, is_agent, agents)


def _new_ticket(
    session: Session, settings: Settings, sender: Address, linked: Ticket | None = None
) -> NoSender | Held | NewTicket:
    if is_ours(sender.address, settings):
        return NoSender()
    row = session.connection().execute(_ACCOUNT_OF, {"address": sender.address}).first()
    account = SenderAccount(bool(row.registered), row.bouncing_since) if row else None
    if not _may_open(session, settings, sender.address, account):
        return Held(sender)
    return NewTicket(sender, account, linked)


def _may_open(session: Session, settings: Settings, address: str,
              account: SenderAccount | None) -> bool:
    support = settings.support
    if support.sender_policy == "open":
        return True
    if account is not None and (account.registered or account.bouncing_since is None):
        return True  # an operator's account, or one made on an earlier mail (not by a bounce)
    domain = address.rpartition("@")[2]
    if domain in {d.lower() for d in support.allowed_domains}:
        return True
    return address in agent_addresses(session, settings)
