"""What an edge hands to ingest, and what ingest hands back."""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class Outcome:
    """What became of a mail. Every outcome but "rejected" means it is stored."""

    status: str  # new_ticket | reply | duplicate | classified | held | rejected
    ticket: int | None = None
    message: int | None = None
    detail: str = ""
    # Page rows queued in the same transaction: the paging worker is woken for them.
    pages: int = 0

    @property
    def stored(self) -> bool:
        return self.status != "rejected"
