"""On-call paging policy: business hours, who pages when, and the page rows for each hook."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, select

from ticketing import audit
from ticketing.models import Page, Ticket
from ticketing.settings import HoursSettings, OncallSettings, Settings
from ticketing.severity import Severity
from ticketing.txstate import state_of

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # date.weekday() order
HOOKS = ("webhook", "pagerduty", "command")

# PagerDuty truncates longer summaries; we cut them ourselves so the tag survives.
SUMMARY_LIMIT = 1024
# Page.dedup_key is 200 characters; PagerDuty allows 255.
DOMAIN_LIMIT = 120


# -- business hours ---------------------------------------------------------


def _clock_time(value: str) -> time:
    hh, _, mm = value.partition(":")
    return time(int(hh), int(mm))


def _shift(hours: HoursSettings) -> timedelta:
    """How long a working day's shift lasts; an end at or before the start runs past midnight."""
    start, end = _clock_time(hours.start), _clock_time(hours.end)
    length = datetime.combine(date.min, end) - datetime.combine(date.min, start)
    return length if length > timedelta(0) else length + timedelta(days=1)


def in_business_hours(at: datetime, hours: HoursSettings) -> bool:
    """Whether `at` falls in a shift, read on the desk's wall clock (so DST moves with it)."""
    local = at.astimezone(ZoneInfo(hours.timezone)).replace(tzinfo=None)
    start, length = _clock_time(hours.start), _shift(hours)
    # A shift that runs past midnight may have started on the day before.
    for day in (local.date(), local.date() - timedelta(days=1)):
        if DAYS[day.weekday()] not in hours.days:
            continue
        opens = datetime.combine(day, start)
        if opens <= local < opens + length:
            return True
    return False


def next_opening(at: datetime, hours: HoursSettings) -> datetime:
    """When the desk is next staffed, aware in hours.timezone: `at` itself when it is open now."""
    zone = ZoneInfo(hours.timezone)
    if in_business_hours(at, hours):
        return at.astimezone(zone)
    if not hours.days:
        raise ValueError("hours.days names no working day: the desk never opens")
    local = at.astimezone(zone).replace(tzinfo=None)
    start = _clock_time(hours.start)
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        opens = datetime.combine(day, start)
        if DAYS[day.weekday()] in hours.days and opens > local:
            # Through UTC and back: an opening inside a spring-forward gap lands on a real time.
            return opens.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)
    raise AssertionError("a working day falls within any eight days")  # pragma: no cover


def should_page(
    severity: Severity, at: datetime, oncall: OncallSettings, hours: HoursSettings
) -> bool:
    """The paging policy: the levels in oncall.page_on, and S1 outside hours when asked for."""
    if severity.label in oncall.page_on:
        return True
    return (
        severity is Severity.S1
        and oncall.s1_outside_hours
        and not in_business_hours(at, hours)
    )


# -- escalations --------------------------------------------------------------
#
# One escalation is one incident: it opens with the first page for a ticket and
# stays open until resolve() closes it. Its dedup key names the ticket and the
# escalation's ordinal, so
#   - escalate() while an escalation is open adds nothing (a reply on the same
#     incident, a second [S0] tag, the same mail replayed), and the unique
#     (dedup_key, hook, action) stops two racing transactions paging twice;
#   - resolve() when the ticket is solved or closed, or lowered below the
#     paging policy, closes it; a later escalate() (reopened, raised again)
#     opens escalation n+1 with a new key, and PagerDuty opens a new incident.
# The escalation's state is read from the ticket's page rows, so the record of
# what was paged and the rule that stops paging twice are the same rows.


def pagerduty_dedup_key(ticket: Ticket, settings: Settings, escalation: int) -> str:
    domain = settings.support.domain[:DOMAIN_LIMIT]
    return f"mailgate/{domain}/ticket-{ticket.id}/{escalation}"


def _escalations(session: Session, ticket_id: int) -> tuple[int, str | None, set[str]]:
    """How many escalations the ticket has had, the open one's key, and the hooks it paged."""
    rows = session.exec(
        select(Page.dedup_key, Page.hook, Page.action)
        .where(Page.ticket_id == ticket_id)
        .order_by(Page.id)  # type: ignore[arg-type]
    ).all()
    triggers = [key for key, _, action in rows if action == "trigger"]
    if not triggers:
        return 0, None, set()
    latest = triggers[-1]
    if any(key == latest and action == "resolve" for key, _, action in rows):
        return len(set(triggers)), None, set()
    hooks = {hook for key, hook, action in rows if key == latest and action == "trigger"}
    return len(set(triggers)), latest, hooks


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _details(ticket: Ticket, settings: Settings) -> dict[str, Any]:
    """What the on-call engineer needs to find the ticket and the customer."""
    return {
        "ticket": ticket.id,
        "reference": f"[#{ticket.id}]",
        "subject": ticket.subject,
        "requester": ticket.requester,
        "requester_name": ticket.requester_name,
        "severity": Severity(ticket.severity).label,
        "status": ticket.status,
        "support_address": settings.support.address,
        "status_page": settings.support.status_page,
    }


def _summary(ticket: Ticket) -> str:
    return f"[#{ticket.id}] {ticket.subject}"[:SUMMARY_LIMIT]


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def pagerduty_trigger(
    ticket: Ticket, settings: Settings, routing_key: str, key: str, now: datetime, reason: str
) -> dict[str, Any]:
    """An Events API v2 trigger: every page is "critical", the ticket's level is in the details."""
    details = _details(ticket, settings) | {"reason": reason}
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": key,
        "client": settings.support.name,
        "payload": {
            "summary": _summary(ticket),
            "source": settings.support.address,
            "severity": "critical",
            "timestamp": _stamp(now),
            "custom_details": details,
        },
    }
    if settings.support.status_page:
        body["links"] = [{"href": settings.support.status_page, "text": "Status page"}]
    return body


def pagerduty_resolve(routing_key: str, key: str) -> dict[str, Any]:
    return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": key}


def hook_trigger(
    ticket: Ticket, settings: Settings, key: str, now: datetime, reason: str
) -> dict[str, Any]:
    """The body our own webhook receives and a command reads on stdin."""
    return {
        "event_action": "trigger",
        "dedup_key": key,
        "summary": _summary(ticket),
        "severity": "critical",
        "reason": reason,
        "at": _stamp(now),
        "ticket": _details(ticket, settings),
    }


def configured_hooks(oncall: OncallSettings) -> list[str]:
    return [name for name in HOOKS if getattr(oncall, name) is not None]


def _page(
    ticket_id: int, hook: str, action: str, key: str, body: dict[str, Any],
    settings: Settings, now: datetime,
) -> Page:
    return Page(
        ticket_id=ticket_id,
        hook=hook,
        action=action,
        dedup_key=key,
        payload=_dumps(body),
        next_attempt_at=now,
        give_up_at=now + timedelta(seconds=settings.oncall.give_up_after),
        created_at=now,
    )


def _ticket_id(session: Session, ticket: Ticket) -> int:
    if ticket.id is None:
        session.flush()
    assert ticket.id is not None
    return ticket.id


def queued(session: Session) -> int:
    """How many page rows this transaction has queued (escalations and resolves)."""
    return state_of(session).pages_queued


def _queue(session: Session, pages: list[Page], reason: str = "") -> None:
    session.add_all(pages)
    state_of(session).pages_queued += len(pages)
    if pages:
        first = pages[0]
        hooks = ", ".join(sorted({p.hook for p in pages}))
        what = "queued" if first.action == "trigger" else "resolved"
        audit.record(session, first.ticket_id, "page", new=f"{what} ({hooks})", detail=reason,
                     actor=audit.SYSTEM, route="system", now=first.created_at)


def escalate(
    session: Session, ticket: Ticket, settings: Settings, now: datetime, reason: str
) -> list[Page]:
    """Page rows for every configured hook, unless this ticket's escalation is already open.

    The caller has decided with should_page(); the rows go out with its transaction.
    """
    hooks = configured_hooks(settings.oncall)
    if not hooks:
        return []
    ticket_id = _ticket_id(session, ticket)
    count, open_key, _ = _escalations(session, ticket_id)
    if open_key is not None:
        return []
    key = pagerduty_dedup_key(ticket, settings, count + 1)
    pages = []
    for hook in hooks:
        if hook == "pagerduty":
            assert settings.oncall.pagerduty is not None
            routing_key = settings.oncall.pagerduty.routing_key
            body = pagerduty_trigger(ticket, settings, routing_key, key, now, reason)
        else:
            body = hook_trigger(ticket, settings, key, now, reason)
        pages.append(_page(ticket_id, hook, "trigger", key, body, settings, now))
    _queue(session, pages, reason)
    return pages


# -- page limits --------------------------------------------------------------
#
# Pages are scarce: a requester, and a requester's domain, may cause only so many
# an hour. A ticket over the limit keeps its severity and pages nobody; "withheld"
# rows (status "skipped") record on it why, and name the tickets that did page.

PAGE_WINDOW = timedelta(hours=1)


def page_limit(session: Session, ticket: Ticket, settings: Settings, now: datetime) -> str:
    """Why this ticket may not page now ("" when it may): its requester or their domain
    has caused oncall.max_pages_per_sender / max_pages_per_domain pages this hour."""
    oncall = settings.oncall
    if not oncall.max_pages_per_sender and not oncall.max_pages_per_domain:
        return ""
    requester = ticket.requester.lower()
    domain = requester.rpartition("@")[2]
    rows = session.exec(
        select(Page.ticket_id, Ticket.requester)
        .join(Ticket, Ticket.id == Page.ticket_id)  # type: ignore[arg-type]
        .where(Page.action == "trigger", Page.created_at > now - PAGE_WINDOW)
        .distinct()
    ).all()
    # One escalation is one page, whatever number of hooks it went to.
    by_sender = sorted({t for t, who in rows if who.lower() == requester})
    by_domain = sorted({t for t, who in rows if who.lower().rpartition("@")[2] == domain})
    for limit, paged, whose in ((oncall.max_pages_per_sender, by_sender, requester),
                                (oncall.max_pages_per_domain, by_domain, f"@{domain}")):
        if limit and len(paged) >= limit:
            tickets = ", ".join(f"#{t}" for t in paged[-5:])
            return (f"page limit reached: {len(paged)} pages in the last hour for {whose} "
                    f"(at most {limit}; paged for {tickets})")
    return ""


def escalate_within_limits(
    session: Session, ticket: Ticket, settings: Settings, now: datetime, reason: str
) -> tuple[list[Page], str]:
    """escalate(), unless the page limit holds it back: then (no pages, why), with the
    why recorded on the ticket as "withheld" rows."""
    hooks = configured_hooks(settings.oncall)
    if not hooks:
        return [], ""
    ticket_id = _ticket_id(session, ticket)
    count, open_key, _ = _escalations(session, ticket_id)
    if open_key is not None:
        return [], ""
    why = page_limit(session, ticket, settings, now)
    if not why:
        return escalate(session, ticket, settings, now, reason), ""
    key = pagerduty_dedup_key(ticket, settings, count + 1)
    recorded = set(session.exec(
        select(Page.hook).where(Page.dedup_key == key, Page.action == "withheld")
    ).all())
    for hook in hooks:
        if hook not in recorded:
            page = _page(ticket_id, hook, "withheld", key, {}, settings, now)
            page.status, page.last_error = "skipped", why
            session.add(page)
    if recorded != set(hooks):
        audit.record(session, ticket_id, "page", new="withheld", detail=why,
                     actor=audit.SYSTEM, route="system", now=now)
    return [], why


def resolve(session: Session, ticket: Ticket, settings: Settings, now: datetime) -> list[Page]:
    """Close the ticket's open escalation: a PagerDuty resolve for its dedup key.

    The webhook and the command take triggers only; their rows are written as
    "skipped" so the escalation is on record as closed whatever was configured.
    Returns the rows added (none when nothing was open).
    """
    ticket_id = _ticket_id(session, ticket)
    _, open_key, paged = _escalations(session, ticket_id)
    if open_key is None:
        return []
    pages = []
    for hook in sorted(paged):
        pagerduty = settings.oncall.pagerduty
        if hook == "pagerduty" and pagerduty is not None:
            body = pagerduty_resolve(pagerduty.routing_key, open_key)
            pages.append(_page(ticket_id, hook, "resolve", open_key, body, settings, now))
        else:
            page = _page(ticket_id, hook, "resolve", open_key, {}, settings, now)
            page.status = "skipped"
            page.last_error = f"no resolve is sent to the {hook} hook"
            pages.append(page)
    _queue(session, pages)
    return pages
