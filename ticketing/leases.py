"""Leases: one worker holds a row (an outgoing mail, a page, a mailbox) until a time.

Several processes on one database share the work this way. The holder renews its lease
while it works; a worker that dies simply stops renewing, and once the lease's end has
come the row is anyone's. Letting go ends the lease at once and leaves the holder's
name on the row: who held it last.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, or_
from sqlmodel import col

from ticketing.models import MailboxState, Outbox, Page

HOLDER_WIDTH = 100  # the width of every holder column


def this_process() -> str:
    """The name this process holds leases under, unless told another: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_name(name: str) -> str:
    """A holder's name cut to the column's width, so the name compared is the name stored."""
    return name[:HOLDER_WIDTH]


@dataclass(frozen=True)
class Lease:
    """The holder and end-of-lease columns of one table."""

    holder: Any
    until: Any

    def free(self, now: Any) -> ColumnElement[bool]:
        """Nobody holds the row: never taken, let go, or its end has come."""
        return or_(col(self.until).is_(None), col(self.until) <= now)

    def held_by(self, holder: Any) -> ColumnElement[bool]:
        mine: ColumnElement[bool] = col(self.holder) == holder
        return mine

    def take(self, holder: Any, until: Any) -> dict[str, Any]:
        """The values that take (or renew) the lease, for an UPDATE whose WHERE holds
        `free` (or `held_by` the same holder): of several workers, one wins the row."""
        return {self.holder.key: holder, self.until.key: until}

    def let_go(self) -> dict[str, Any]:
        """The values that end the lease now; the holder's name stays."""
        return {self.until.key: None}

    def let_go_of(self, row: Any) -> None:
        """End the lease of a loaded row (the caller saves it)."""
        setattr(row, self.until.key, None)


OUTBOX = Lease(Outbox.claimed_by, Outbox.claimed_until)
PAGES = Lease(Page.claimed_by, Page.claimed_until)
MAILBOXES = Lease(MailboxState.held_by, MailboxState.held_until)
