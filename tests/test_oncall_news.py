"""Pages leave at once, and people are told only what is true about them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from tests.harness import Relay, request, send, serving
from tests.servers import free_port
from tests.test_oncall_e2e import Pager
from ticketing.clock import FixedClock
from ticketing.desk import Desk

ALICE = "alice@example.com"
CAROL = "carol@customer.test"
SUNDAY_NIGHT = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)  # Sunday 21:00 in Los Angeles
# The paging worker looks for due pages every 5 seconds; a page that waited for that
# look would come far later than this.
SOON = 2.0


def _desk(desks: Callable[..., Desk], relay: Relay, url: str, **oncall: object) -> Desk:
    return desks(clock=FixedClock(SUNDAY_NIGHT), smtp={"port": free_port()},
                 outbound={"relay": relay.address}, agents={"addresses": [ALICE]},
                 oncall={"webhook": {"url": url, "secret": "s"}, **oncall})


def test_a_new_s0_ticket_pages_without_waiting_for_the_poll(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with Pager() as pager:
        desk = _desk(desks, relay, pager.url)
        with serving(desk) as port:
            # A first mail, answered, so the worker's pass at start is long done.
            send(port, request("Question about exports", "How?", sender=CAROL))
            relay.wait_for(2)
            send(port, request("[S0] Dashboard down for all users", "Nothing loads.",
                               sender=CAROL))
            pages = pager.wait_for(1, timeout=SOON)
            assert len(pages) == 1
            assert pages[0]["summary"] == "[#2] Dashboard down for all users"
