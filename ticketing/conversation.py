"""Which ticket a mail belongs to: its thread headers, a signed reply address, the subject tag."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from sqlalchemy import Connection, insert
from sqlmodel import Session, col, select

from ticketing.addresses import base_address
from ticketing.inbound import Inbound
from ticketing.models import Participant, ThreadRef, Ticket
from ticketing.parse import ParsedMail
from ticketing.settings import Settings

TAG = re.compile(r"\[#(\d{1,12})\]")
REPLY_PREFIX = re.compile(
    r"^\s*(?:(?:re|fwd?|aw|wg|sv|vs|antw|doorst|tr|rif|ref|odp|res|enc|r|i)\s*(?:\[\d+\])?\s*[:：]\s*)+",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"^(\d{1,12})-([0-9a-f]{16})$")


# Built once: each new ticket writes one for its request and one for each mail it sends.
_INSERT_THREAD_REF = insert(ThreadRef.__table__)  # type: ignore[attr-defined]


def remember_thread(connection: Connection, message_id: str, ticket_id: int) -> None:
    """A mail with this Message-ID belongs to this ticket: an answer naming it joins it."""
    connection.execute(_INSERT_THREAD_REF, {"message_id": message_id, "ticket_id": ticket_id})


def subject_tag(number: int) -> str:
    return f"[#{number}]"


def clean_subject(subject: str) -> str:
    """The subject without reply/forward prefixes and our ticket tag, as a ticket keeps it."""
    previous = None
    while previous != subject:
        previous = subject
        subject = REPLY_PREFIX.sub("", subject)
        subject = TAG.sub("", subject).strip()
    return re.sub(r"\s{2,}", " ", subject).strip()


def reply_token(number: int, secret: str) -> str:
    """The ticket number signed with the server secret (HMAC-SHA256, 64 bits shown)."""
    digest = hmac.new(secret.encode(), f"ticket:{number}".encode(), hashlib.sha256).hexdigest()
    return f"{number}-{digest[:16]}"


def reply_address(number: int, settings: Settings) -> str:
    support = settings.support
    return f"{support.local_part}+{reply_token(number, support.secret)}@{support.domain}"


def served_addresses(settings: Settings) -> set[str]:
    return {settings.support.address.lower(), *(a.lower() for a in settings.support.aliases)}


def is_ours(address: str, settings: Settings) -> bool:
    """A support address we serve, with or without a +detail."""
    return base_address(address.lower()) in served_addresses(settings)


def is_postmaster(address: str, settings: Settings) -> bool:
    """postmaster@ one of our domains, in any case: every mail domain must take it
    (RFC 5321 4.5.1)."""
    local, _, domain = address.strip().strip("<>").lower().rpartition("@")
    return local == "postmaster" and domain in {
        a.rpartition("@")[2] for a in served_addresses(settings)}


def ticket_from_address(address: str, settings: Settings) -> int | None:
    """The ticket number of a valid signed reply address, or None (forged, guessed, plain)."""
    address = address.lower()
    if not is_ours(address, settings):
        return None
    local = address.rpartition("@")[0]
    _, plus, detail = local.partition("+")
    match = _TOKEN.match(detail) if plus else None
    if not match:
        return None
    number = int(match.group(1))
    expected = reply_token(number, settings.support.secret)
    return number if hmac.compare_digest(expected, detail) else None


@dataclass(frozen=True)
class Match:
    ticket: Ticket
    how: str  # "thread" | "token" | "tag"


def find_ticket(
    session: Session, mail: ParsedMail, inbound: Inbound, settings: Settings, sender: str,
    sender_is_agent: bool = False, unverified_agent: bool = False,
) -> Match | None:
    """The ticket a mail answers: its thread references (nearest first), then a ticket
    address among its recipients, then a [#N] subject tag from an authenticated agent or
    someone on that ticket. None means a new ticket.

    The ticket row is locked (FOR UPDATE, on PostgreSQL) so two replies at once apply
    their assignment, status and severity one after the other, not over each other.
    """
    ids = mail.thread_ids
    if ids:
        refs = session.exec(select(ThreadRef).where(col(ThreadRef.message_id).in_(ids))).all()
        by_id = {ref.message_id: ref.ticket_id for ref in refs}
        for message_id in ids:  # the nearest reference decides
            if message_id in by_id:
                ticket = session.get(Ticket, by_id[message_id], with_for_update=True)
                if ticket is not None:
                    return Match(ticket, "thread")
    candidates = [
        *inbound.envelope_recipients,
        *mail.delivered_to,
        *(a.address for a in (*mail.to, *mail.cc)),
    ]
    for address in candidates:
        number = ticket_from_address(address, settings)
        if number is not None:
            ticket = session.get(Ticket, number, with_for_update=True)
            if ticket is not None:
                return Match(ticket, "token")
    tag = TAG.search(mail.subject)
    if tag:
        ticket = session.get(Ticket, int(tag.group(1)), with_for_update=True)
        # An agent's address that failed authentication is anyone's: its place on the
        # ticket (assignee, agent) proves nothing.
        if ticket is not None and (
            sender_is_agent or (not unverified_agent and takes_part(session, ticket, sender))
        ):
            return Match(ticket, "tag")
    return None


def takes_part(session: Session, ticket: Ticket, address: str) -> bool:
    """The address is on the ticket now (an agent counts only once authenticated: the caller)."""
    if address == ticket.assignee:
        return True
    found = session.exec(
        select(Participant.id).where(
            Participant.ticket_id == ticket.id, Participant.address == address, Participant.active
        )
    ).first()
    return found is not None
