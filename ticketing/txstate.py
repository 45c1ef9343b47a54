"""What one transaction has read or done already, kept with its session: read from
the database once a transaction, then kept current by whoever changes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session

from ticketing.models import Participant

_KEY = "mailgate.transaction"


@dataclass
class TransactionState:
    # Agent address -> name, from the config and the agents table; storing mail never
    # changes them, so a batch of mails keeps them, and adding an agent forgets them.
    agents: dict[str, str] | None = None
    # Who is on each ticket: ticket id -> address -> participant as read from the
    # database, or None for one this transaction added (active).
    participants: dict[int, dict[str, Participant | None]] = field(default_factory=dict)
    # Each ticket's opening Message-ID, and each mail of ours on it with its recipients.
    sent: dict[int, tuple[str, list[tuple[str, set[str]]]]] = field(default_factory=dict)
    # Page rows queued (escalations and resolves): the paging worker is woken for them.
    pages_queued: int = 0
    # Automatic mails sent after each start of a window asked about.
    auto_replies_since: dict[datetime, int] = field(default_factory=dict)
    # Whether each address asked about is marked as bouncing.
    bouncing: dict[str, bool] = field(default_factory=dict)
    # The ceiling on automatic mail an hour was reached and said in the log.
    ceiling_told: bool = False
    # (number, title, state) of each incident not yet resolved; storing mail never changes
    # them, so a batch of mails keeps them, and opening or updating an incident forgets them.
    open_incidents: list[tuple[int, str, str]] | None = None


def state_of(session: Session) -> TransactionState:
    state = session.info.get(_KEY)
    if state is None:
        state = session.info[_KEY] = TransactionState()
    assert isinstance(state, TransactionState)
    return state
