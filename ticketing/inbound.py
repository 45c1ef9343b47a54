"""What an edge hands to ingest, and what ingest hands back."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class Inbound:
    """One mail as an edge received it: the bytes and how they came."""

    raw: bytes
    route: str  # "smtp", "imap:<mailbox>", "pipe"
    envelope_sender: str = ""
    envelope_recipients: tuple[str, ...] = ()
    # True when the route itself vouches for the sender (SMTP AUTH, a trusted IMAP box).
    authenticated: bool = False
    # The SMTP client's IP address: whether a border host we trust handed the mail over.
    peer: str = ""


class Status(StrEnum):
    """What became of a mail; every one but QUARANTINED is a stored message."""

    NEW_TICKET = "new_ticket"
    REPLY = "reply"
    DUPLICATE = "duplicate"
    CLASSIFIED = "classified"
    HELD = "held"
    QUARANTINED = "quarantined"  # could not be stored as a message: kept in quarantine


@dataclass(frozen=True)
class Outcome:
    """What became of a mail."""

    status: Status
    ticket: int | None = None
    message: int | None = None
    detail: str = ""
    # Page rows queued in the same transaction: the paging worker is woken for them.
    pages: int = 0
