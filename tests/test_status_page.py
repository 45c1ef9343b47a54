"""The public status page: components, incidents and history, the Atom feed, no sign-in."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

from tests.harness import Relay, serving
from tests.helpdesk import WebClient, helpdesk
from tests.servers import free_port
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.incidents import open_incident, post_update

ATOM = "{http://www.w3.org/2005/Atom}"
NINE = datetime(2026, 3, 3, 9, 2, tzinfo=UTC)


def test_anyone_reads_the_status_page_an_incident_and_the_atom_feed(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    desk = desks(clock=FixedClock(NINE), smtp={"port": free_port()},
                 outbound={"relay": relay.address},
                 status={"components": ["Dashboard", "API"]})
    with transaction(desk.engine) as session:
        old, _ = open_incident(session, "Slow API", components=["API"], state="identified",
                               message="A slow disk.", author="ops", now=NINE - timedelta(days=3),
                               known=desk.settings.status.components)
        post_update(session, old, state="resolved", message="Fast again.", author="ops",
                    now=NINE - timedelta(days=2))
        now, _ = open_incident(session, "Dashboards fail to load", components=["Dashboard"],
                               state="investigating", known=desk.settings.status.components,
                               message="We are looking into errors loading dashboards.",
                               author="ops", now=NINE)
        number = now.id
    with serving(desk):
        client = WebClient(desk.settings.web.url)
        status, headers, body = client.get("/status")
        page = body.decode()
        incident_status, _, incident_body = client.get(f"/status/incidents/{number}")
        missing, _, _ = client.get("/status/incidents/99")
        feed_status, feed_headers, feed = client.get("/status/feed.atom")
    assert status == 200 and headers["Cache-Control"].startswith("public")
    assert headers["Set-Cookie"] is None  # a shared cache may keep it for everyone
    assert "<script" not in page and 'name="viewport"' in page
    assert "Dashboard</strong>: Affected (Investigating)" in page
    assert "API</strong>: Operational" in page
    assert "Dashboards fail to load" in page
    assert "We are looking into errors loading dashboards." in page
    past = page.split("<h2>Past incidents</h2>")[1]
    assert "Slow API" in past and "Dashboards fail to load" not in past
    assert incident_status == 200
    assert "We are looking into errors loading dashboards." in incident_body.decode()
    assert missing == 404
    assert feed_status == 200 and feed_headers["Content-Type"].startswith("application/atom+xml")
    assert feed_headers["Cache-Control"].startswith("public")
    root = ElementTree.fromstring(feed)
    assert root.tag == f"{ATOM}feed"
    assert root.findtext(f"{ATOM}id") and root.findtext(f"{ATOM}updated")
    entries = root.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}title") for e in entries] == [
        "Dashboards fail to load (Investigating)", "Slow API (Resolved)"]
    first = entries[0]
    assert first.find(f"{ATOM}link").get("href") == (  # type: ignore[union-attr]
        f"{desk.settings.web.url}/status/incidents/{number}")
    assert "We are looking into errors" in (first.findtext(f"{ATOM}content") or "")


def test_the_submit_a_request_page_shows_the_open_incident_above_the_form(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    desk = desks(clock=FixedClock(NINE), smtp={"port": free_port()},
                 outbound={"relay": relay.address}, status={"components": ["Dashboard"]})
    with transaction(desk.engine) as session:
        incident, _ = open_incident(session, "Dashboards fail to load", components=["Dashboard"],
                                    state="investigating", message="Looking into it.",
                                    author="ops", now=NINE, known=("Dashboard",))
        number = incident.id
    with helpdesk(desk, relay) as hd:
        hd.add_account("carol@customer.test", password="a long enough passphrase 1")
        client = WebClient(hd.url)
        client.sign_in("carol@customer.test", "a long enough passphrase 1")
        status, _, body = client.get("/requests/new")
    page = body.decode()
    assert status == 200
    listed = page.index("Dashboards fail to load")
    assert listed < page.index('<form method="post" action="/requests/new"')
    assert f'href="{hd.url}/status/incidents/{number}"' in page
    assert "No incidents are open right now" not in page
