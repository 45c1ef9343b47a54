"""Incidents on the agents' desk: opened, updated and resolved from /desk/incidents, tickets
attached from their page, with the mails each sends; customers, visitors and forged posts
kept out."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlmodel import select

from tests.harness import Relay, request, send
from tests.helpdesk import HelpDesk, WebClient, helpdesk
from tests.test_status_subscriptions import (
    STATUS_TAG,
    _confirm_link,
    _desk,
    _press_confirm,
    _status_mails,
    _subscribe,
)
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Incident, IncidentUpdate

ALICE = "alice@example.com"  # the agent
ANN = "ann@reader.test"  # a subscriber
CAROL = "carol@customer.test"  # a customer
PASSWORD = "correct horse battery"
TITLE = "Dashboards fail to load"


def _agent(hd: HelpDesk, address: str = ALICE) -> WebClient:
    hd.add_account(address, "Alice Agent", password=PASSWORD)
    client = WebClient(hd.url)
    client.sign_in(address, PASSWORD)
    return client


def _field(body: bytes, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"'.encode(), body)
    assert found, body[:2000]
    return found.group(1).decode()


def _post(client: WebClient, page: str, action: str, fields: dict[str, str],
          ) -> tuple[int, str, str]:
    """A form on `page` posted as a browser posts it: its token, from our origin."""
    status, headers, body = client.post(action, {"csrf": client.token(page), **fields},
                                        {"Origin": client.base})
    return status, headers.get("Location") or "", body.decode()


def _incident(desk: Desk, number: int) -> tuple[str, list[str]]:
    with transaction(desk.engine) as session:
        incident = session.get(Incident, number)
        assert incident is not None
        texts = session.exec(select(IncidentUpdate.text).where(
            IncidentUpdate.incident_id == number).order_by(IncidentUpdate.id)).all()  # type: ignore[arg-type]
        return incident.state, list(texts)


def test_an_agent_runs_an_incident_from_the_desk_and_subscribers_and_tickets_are_told(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    desk = _desk(desks, relay)
    with helpdesk(desk, relay) as hd:
        send(hd.smtp_port, request("[S0] Dashboard down", "Nothing loads.",
                                   sender=f"Carol <{CAROL}>"), sender=CAROL)
        hd.mails_to(CAROL, "[#1]")
        status, _ = _subscribe(hd, ANN)
        assert status == 200
        assert _press_confirm(hd, _confirm_link(hd, ANN))[0] == 303
        alice = _agent(hd)
        status, _, listing = alice.get("/desk/incidents")
        assert status == 200 and b'href="/desk/incidents">Incidents</a>' in listing
        assert b'name="components" value="Dashboard"' in listing

        status, location, _ = _post(alice, "/desk/incidents", "/desk/incidents", {
            "title": TITLE, "components": "Dashboard", "state": "investigating",
            "message": "We are looking into errors loading dashboards."})
        assert (status, location) == (303, "/desk/incidents/1")
        assert _incident(desk, 1) == ("investigating",
                                      ["We are looking into errors loading dashboards."])
        hd.mails_to(ANN, f"{STATUS_TAG} {TITLE}: Investigating")

        # Attached from the ticket's page, carrying the version the page was made from.
        status, _, page = alice.get("/desk/tickets/1")
        assert f'<option value="1">1: {TITLE}</option>'.encode() in page
        status, location, _ = _post(alice, "/desk/tickets/1", "/desk/tickets/1", {
            "nonce": _field(page, "nonce"), "version": _field(page, "version"),
            "incident": "1"})
        assert (status, location) == (303, "/desk/tickets/1")
        _, _, page = alice.get("/desk/tickets/1")
        assert f"incident - → 1 ({TITLE}), by Alice Agent via web".encode() in page
        assert f'href="/desk/incidents/1">Incident 1: {TITLE}</a>'.encode() in page
        _, _, shown = alice.get("/desk/incidents/1")
        assert b'<a href="/desk/tickets/1">#1</a>' in shown

        status, location, _ = _post(alice, "/desk/incidents/1", "/desk/incidents/1/update", {
            "state": "identified", "message": "A bad cache node; replacing it."})
        assert (status, location) == (303, "/desk/incidents/1")
        update = hd.mails_to(ANN, f"{STATUS_TAG} {TITLE}: Identified")[0]
        assert "A bad cache node; replacing it." in update.text()

        status, location, _ = _post(alice, "/desk/incidents/1", "/desk/incidents/1/resolve", {
            "message": "All dashboards load.", "tell_tickets": "1"})
        assert (status, location) == (303, "/desk/incidents/1")
        hd.mails_to(ANN, f"{STATUS_TAG} {TITLE}: Resolved")
        told = hd.mails_to(CAROL, "Re: [#1]")[0]
        assert "is resolved: Dashboards fail to load" in told.text()
        assert "All dashboards load." in told.text()
        public = WebClient(hd.url).get("/status")[2].decode()
        received = relay.settle()
    assert _incident(desk, 1) == ("resolved", [
        "We are looking into errors loading dashboards.", "A bad cache node; replacing it.",
        "All dashboards load."])
    past = public.split("<h2>Past incidents</h2>")[1]
    assert TITLE in past
    # Carol: her confirmation and the one answer saying it is resolved; attaching her
    # ticket told her nothing. Ann: one mail per update, the first included.
    assert [str(r.message["Subject"]) for r in received if CAROL in r.rcpt_tos] == [
        "[#1] Dashboard down", "Re: [#1] Dashboard down"]
    assert len(_status_mails(relay, ANN)) == 3


def test_customers_visitors_and_forged_posts_change_no_incident(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    desk = _desk(desks, relay)
    with helpdesk(desk, relay) as hd:
        send(hd.smtp_port, request("Dashboard down", "Nothing loads.", sender=CAROL),
             sender=CAROL)
        alice = _agent(hd)
        assert _post(alice, "/desk/incidents", "/desk/incidents", {
            "title": TITLE, "state": "investigating", "message": "Looking."})[0] == 303
        hd.add_account(CAROL, password=PASSWORD)
        carol = WebClient(hd.url)
        carol.sign_in(CAROL, PASSWORD)
        visitor = WebClient(hd.url)
        for path in ("/desk/incidents", "/desk/incidents/1"):
            assert carol.get(path)[0] == 404
            status, headers, _ = visitor.get(path)
            assert status == 303 and headers["Location"].startswith("/sign-in")
        posts: list[tuple[str, dict[str, str]]] = [
            ("/desk/incidents", {"title": "Forged", "state": "investigating", "message": "x"}),
            ("/desk/incidents/1/update", {"state": "monitoring", "message": "Forged"}),
            ("/desk/incidents/1/resolve", {"message": "Forged", "tell_tickets": "1"}),
        ]
        for action, fields in posts:
            # A customer holding a valid form token of her own still gets a 404.
            status, _, _ = _post(carol, "/requests", action, fields)
            assert status == 404, action
            status, headers, _ = visitor.post(action, fields, {"Origin": hd.url})
            assert status == 303 and headers["Location"] == "/sign-in", action
            # The agent's own session, but a post without the form token (a forged page).
            status, _, body = alice.post(action, fields, {"Origin": hd.url})
            assert status == 403 and b"nothing was" in body.lower(), (action, body[:500])
        _, _, page = alice.get("/desk/tickets/1")
        forged = {"version": _field(page, "version"), "nonce": _field(page, "nonce"),
                  "incident": "1"}
        assert carol.post("/desk/tickets/1", {"csrf": carol.token("/requests"), **forged},
                          {"Origin": hd.url})[0] == 404
        assert alice.post("/desk/tickets/1", forged, {"Origin": hd.url})[0] == 403
        # A stale form (the ticket changed since) attaches nothing either.
        stale = {**forged, "version": "2000-01-01T00:00:00"}
        assert _post(alice, "/desk/tickets/1", "/desk/tickets/1", stale)[0] == 409
        # An incident number no row can have is refused as the mail command would be.
        status, _, body = _post(alice, "/desk/tickets/1", "/desk/tickets/1",
                                {**forged, "incident": "99999999999"})
        assert status == 422 and "The change could not be made" in body
        _, _, shown = alice.get("/desk/incidents/1")
    assert _incident(desk, 1) == ("investigating", ["Looking."])
    with transaction(desk.engine) as session:
        assert session.exec(select(Incident.id)).all() == [1]
    assert b"None yet" in shown


def test_an_agent_opens_an_incident_and_attaches_a_ticket_in_a_browser(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any],
) -> None:
    desk = _desk(desks, relay)
    with helpdesk(desk, relay) as hd:
        send(hd.smtp_port, request("Dashboard down", "Nothing loads.", sender=CAROL),
             sender=CAROL)
        hd.add_account(ALICE, "Alice Agent", password=PASSWORD)
        page = person()
        page.goto(hd.url + "/sign-in")
        page.fill("#email", ALICE)
        page.fill("#password", PASSWORD)
        page.click("form[action='/sign-in'] button")
        page.click("nav >> text=Incidents")
        page.fill("#title", TITLE)
        page.check("input[name=components][value=Dashboard]")
        page.select_option("#state", "identified")
        page.fill("#message", "A bad cache node.")
        page.click("text=Open incident")
        page.wait_for_selector(f"h1:has-text('Incident 1: {TITLE}')")
        assert "affects Dashboard" in page.inner_text(".meta")
        page.goto(hd.url + "/desk/tickets/1")
        page.select_option("#incident", "1")
        page.click("text=Attach to incident")
        page.wait_for_selector(f"text=Incident 1: {TITLE}")
        page.click(f"text=Incident 1: {TITLE}")
        page.wait_for_selector(".tickets >> text=#1")
        page.check("input[name=tell_tickets]")
        page.fill("#resolve-message", "All dashboards load.")
        page.click("text=Resolve incident")
        page.wait_for_selector(".meta >> text=resolved")
        hd.mails_to(CAROL, "Re: [#1]")
    assert _incident(desk, 1)[0] == "resolved"


def test_the_same_incident_form_sent_twice_acts_once_and_mails_once(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    """A double click, or a browser sending the POST again: the second answers as the
    first did and changes nothing, so no subscriber is mailed twice."""
    desk = _desk(desks, relay)
    with helpdesk(desk, relay) as hd:
        assert _subscribe(hd, ANN)[0] == 200
        assert _press_confirm(hd, _confirm_link(hd, ANN))[0] == 303
        alice = _agent(hd)

        def twice(page: str, action: str, fields: dict[str, str]) -> list[tuple[int, str]]:
            _, _, body = alice.get(page)
            form = {"csrf": _field(body, "csrf"), "nonce": _field(body, "nonce"), **fields}
            answers = []
            for _ in range(2):
                status, headers, _ = alice.post(action, form, {"Origin": alice.base})
                answers.append((status, headers.get("Location") or ""))
            return answers

        assert twice("/desk/incidents", "/desk/incidents", {
            "title": TITLE, "components": "Dashboard", "state": "investigating",
            "message": "Looking."}) == [(303, "/desk/incidents/1")] * 2
        assert twice("/desk/incidents/1", "/desk/incidents/1/update", {
            "state": "identified", "message": "A bad cache node."},
        ) == [(303, "/desk/incidents/1")] * 2
        _, _, shown = alice.get("/desk/incidents/1")
        assert shown.decode().count("A bad cache node.") == 1
        assert twice("/desk/incidents/1", "/desk/incidents/1/resolve", {
            "message": "All dashboards load."}) == [(303, "/desk/incidents/1")] * 2
        hd.mails_to(ANN, f"{STATUS_TAG} {TITLE}: Resolved")
        relay.settle()
    with transaction(desk.engine) as session:
        assert session.exec(select(Incident.id)).all() == [1]
    assert _incident(desk, 1) == ("resolved", [
        "Looking.", "A bad cache node.", "All dashboards load."])
    assert sorted(str(r.message["Subject"]) for r in _status_mails(relay, ANN)) == [
        f"{STATUS_TAG} {TITLE}: {state}" for state in ("Identified", "Investigating", "Resolved")]
