"""Strangers cannot page on-call without limit: a few pages an hour per sender and domain."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from sqlmodel import select

from tests.harness import Relay, request, send, serving
from tests.test_oncall_e2e import ALICE, SUNDAY_2AM, Pager, _desk
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Page, Ticket


def _settled_pages(desk: Desk, pager: Pager, timeout: float = 30) -> list[Page]:
    """Every page row once none waits to go out, and the webhook has all delivered ones."""
    deadline = time.monotonic() + timeout
    while True:
        with transaction(desk.engine) as session:
            rows = list(session.exec(select(Page).order_by(Page.id)).all())  # type: ignore[arg-type]
            session.expunge_all()
        delivered = [p for p in rows if p.status == "delivered"]
        pending = [p for p in rows if p.status == "pending"]
        if (not pending and len(pager.bodies) >= len(delivered)) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_fifteen_s0_mails_from_one_stranger_page_three_times(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    pager = Pager()
    desk = _desk(desks, relay, pager, SUNDAY_2AM)
    with pager, serving(desk) as port:
        for i in range(15):
            send(port, request(f"[S0] Everything is down ({i})", "Page someone now.",
                               sender="mallory@evil.test"))
        notices = relay.wait_for(15, timeout=60, where=lambda r: r.rcpt_tos == (ALICE,))
        rows = _settled_pages(desk, pager)
        relay.settle()
    paged = [p for p in rows if p.action == "trigger"]
    assert len(paged) == 3
    assert len(pager.bodies) == 3
    with transaction(desk.engine) as session:
        tickets = session.exec(select(Ticket).order_by(Ticket.id)).all()  # type: ignore[arg-type]
        assert [t.severity for t in tickets] == [0] * 15  # all stay S0
        paged_tickets = {p.ticket_id for p in paged}
        first_three = {t.id for t in tickets[:3]}
    assert paged_tickets == first_three
    withheld = [p for p in rows if p.action == "withheld"]
    assert len(withheld) == 12 and all(p.status == "skipped" for p in withheld)
    assert "mallory@evil.test" in withheld[0].last_error
    for ticket_id in first_three:
        assert f"#{ticket_id}" in withheld[0].last_error
    # The agents hear of each withheld ticket, and that on-call was not paged for it.
    unpaged = [n for n in notices if "(3)" in str(n.message["Subject"])]
    assert len(unpaged) == 1
    assert "On-call was NOT paged for this ticket: page limit reached" in unpaged[0].text()
    paged_notice = next(n for n in notices if "(0)" in str(n.message["Subject"]))
    assert "NOT paged" not in paged_notice.text()


def test_fifteen_strangers_of_one_domain_page_at_most_the_domain_limit(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    pager = Pager()
    desk = _desk(desks, relay, pager, SUNDAY_2AM, max_pages_per_domain=4)
    with pager, serving(desk) as port:
        for i in range(15):
            send(port, request(f"[S0] Down again ({i})", "Wake them up.",
                               sender=f"bot{i}@evil.test"))
        send(port, request("[S0] Our checkout is down", "Real outage.",
                           sender="carol@customer.test"))
        relay.wait_for(16, timeout=60, where=lambda r: r.rcpt_tos == (ALICE,))
        rows = _settled_pages(desk, pager)
        relay.settle()
    bodies = [json.loads(body) for body, _ in pager.bodies]
    requesters = [b["ticket"]["requester"] for b in bodies]
    assert len([r for r in requesters if r.endswith("@evil.test")]) == 4
    assert "carol@customer.test" in requesters  # another domain still pages
    assert len([p for p in rows if p.action == "withheld"]) == 11
