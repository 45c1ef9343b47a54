"""What people read in our mails: business hours in words, response targets, names."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, case, func
from sqlalchemy import select as sa_select
from sqlmodel import Session

from ticketing.addresses import Address
from ticketing.models import Ticket
from ticketing.oncall import DAYS, in_business_hours
from ticketing.settings import HoursSettings, Settings
from ticketing.severity import Severity

_DAY_NAMES = dict(zip(DAYS, ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                             "Saturday", "Sunday"), strict=True))
_TICKET = Ticket.__table__  # type: ignore[attr-defined]
_OTHERS = (_TICKET.c.requester == bindparam("requester")) & (_TICKET.c.id != bindparam("ticket"))
# The few shown, with the count of all in each row: a frequent requester has many, and
# only the columns shown are read.
_OTHER_TICKETS_OF = (
    sa_select(_TICKET.c.id, _TICKET.c.status, _TICKET.c.severity, _TICKET.c.subject,
              _TICKET.c.created_at, func.count().over().label("total"))
    .where(_OTHERS)
    .order_by(case((_TICKET.c.status.in_(("solved", "closed")), 1), else_=0),
              _TICKET.c.id.desc())
    .limit(5)
)


def name_and_address(name: str, address: str) -> str:
    """ "Name <address>", or the address alone when there is no name (never "<x@y>")."""
    return f"{name} <{address}>" if name.strip() else address


def names_and_addresses(addresses: list[Address]) -> list[str]:
    return [name_and_address(a.name, a.address) for a in addresses]


def business_days(hours: HoursSettings) -> str:
    """ "Monday to Friday", "Monday, Wednesday and Friday", "every day"."""
    indexes = sorted(DAYS.index(day) for day in set(hours.days))
    if len(indexes) == 7:
        return "every day"
    if len(indexes) > 2 and indexes == list(range(indexes[0], indexes[-1] + 1)):
        return f"{_DAY_NAMES[DAYS[indexes[0]]]} to {_DAY_NAMES[DAYS[indexes[-1]]]}"
    names = [_DAY_NAMES[DAYS[i]] for i in indexes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def business_hours(hours: HoursSettings) -> str:
    """The desk's hours in full: "Monday to Friday, 06:00 to 18:00 (America/Los_Angeles)"."""
    return f"{business_days(hours)}, {hours.start} to {hours.end} ({hours.timezone})"


def response_target(settings: Settings, severity: Severity) -> str:
    targets = settings.tickets
    return str(getattr(targets, f"response_{severity.label.lower()}"))


def received(at: datetime, hours: HoursSettings) -> str:
    """When a mail came, on the desk's clock, and whether the desk was staffed."""
    local = at.astimezone(ZoneInfo(hours.timezone))
    inside = "inside" if in_business_hours(at, hours) else "outside"
    return f"{local:%A %d %B %Y at %H:%M %Z}, {inside} business hours"


def other_tickets(
    session: Session, ticket: Ticket, hours: HoursSettings
) -> tuple[list[dict[str, str]], int]:
    """The requester's other tickets for the agents, open ones first, newest first (a
    few), and how many there are in all."""
    rows = session.connection().execute(
        _OTHER_TICKETS_OF, {"requester": ticket.requester, "ticket": ticket.id}).all()
    zone = ZoneInfo(hours.timezone)
    shown = [
        {"tag": f"[#{row.id}]", "status": row.status, "severity": Severity(row.severity).label,
         "subject": row.subject, "opened": f"{row.created_at.astimezone(zone):%Y-%m-%d}"}
        for row in rows
    ]
    return shown, rows[0].total if rows else 0
