"""The agents' desk on the web, in a real browser: the Queue, and customers kept out."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.harness import Relay, request, send, wait_until_sent
from tests.helpdesk import HelpDesk, WebClient, helpdesk
from tests.servers import free_port
from tests.test_oncall_e2e import Pager
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.inbound import Inbound
from ticketing.ingest import quarantine
from ticketing.models import Ticket

ALICE = "alice@example.com"
CAROL = "carol@customer.test"
PASSWORD = "correct horse battery"


def _desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE]})


def _sign_in(hd: HelpDesk, page: Any, address: str) -> None:
    page.goto(hd.url + "/sign-in")
    page.fill("#email", address)
    page.fill("#password", PASSWORD)
    page.click("form[action='/sign-in'] button")
    page.wait_for_selector("text=Sign out")


def _numbers(page: Any) -> list[str]:
    return [cell.strip() for cell in page.locator("tr.ticket td:first-child").all_inner_texts()]


def test_an_agent_lands_on_the_queue_most_urgent_first_and_filters_it(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(ALICE, "Alice Agent", password=PASSWORD)
        send(hd.smtp_port, request("Invoices are wrong", "The totals are doubled."))
        send(hd.smtp_port, request("[S0] Everything is down", "No page loads at all."))
        send(hd.smtp_port, request("Printer jams", "Tray two, every morning."))
        wait_until_sent(hd.desk.engine)
        page = person()
        _sign_in(hd, page, ALICE)
        assert page.url == hd.url + "/desk"
        # S0 first, then the one waiting longest.
        assert _numbers(page) == ["#2", "#1", "#3"]
        assert "S0" in page.inner_text("tr.ticket:first-child")
        assert "carol@customer.test" in page.inner_text("tr.ticket:first-child")
        page.select_option("select[name=severity]", "0")
        page.click("form.filters button")
        assert _numbers(page) == ["#2"]
        page.goto(hd.url + "/desk?q=tray+morning")
        assert _numbers(page) == ["#3"]
        page.goto(hd.url + "/desk?q=doubled")
        assert _numbers(page) == ["#1"]
        page.goto(hd.url + "/desk?unassigned=1")
        assert len(_numbers(page)) == 3
        page.goto(hd.url + "/desk?mine=1")
        assert _numbers(page) == []


def test_a_customer_gets_a_404_for_every_desk_page(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(CAROL, password=PASSWORD)
        send(hd.smtp_port, request("Invoices are wrong", "The totals are doubled."))
        page = person()
        _sign_in(hd, page, CAROL)
        assert page.url == hd.url + "/requests"
        for path in DESK_PAGES:
            response = page.goto(hd.url + path)
            assert response.status == 404, path
            assert "Queue" not in page.content()


DESK_PAGES = ["/desk", "/desk?q=doubled", "/desk/tickets/1"]


def test_desk_posts_without_the_form_token_or_from_a_customer_change_nothing(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(ALICE, "Alice Agent", password=PASSWORD)
        hd.add_account(CAROL, password=PASSWORD)
        send(hd.smtp_port, request("Invoices are wrong", "The totals are doubled."))
        wait_until_sent(hd.desk.engine)
        agent = WebClient(hd.url)
        agent.sign_in(ALICE, PASSWORD)
        status, _, body = agent.get("/desk/tickets/1")
        version = re.search(rb'name="version" value="([^"]+)"', body)
        assert status == 200 and version
        change = {"version": version.group(1).decode(), "kind": "note", "status": "closed",
                  "severity": "S3", "assign": "", "text": "closing"}
        # No form token: refused, whatever the Origin says.
        status, _, _ = agent.post("/desk/tickets/1", change, {"Origin": hd.url})
        assert status == 403
        customer = WebClient(hd.url)
        customer.sign_in(CAROL, PASSWORD)
        status, _, _ = customer.post("/desk/tickets/1", {
            **change, "csrf": customer.token("/requests")}, {"Origin": hd.url})
        assert status == 404
        with transaction(hd.desk.engine) as session:
            ticket = session.get(Ticket, 1)
            assert ticket is not None and ticket.status == "open"
        # With the token the same agent's change goes through.
        status, _, _ = agent.post("/desk/tickets/1", {
            **change, "csrf": agent.token("/desk/tickets/1")}, {"Origin": hd.url})
        assert status == 303
        with transaction(hd.desk.engine) as session:
            ticket = session.get(Ticket, 1)
            assert ticket is not None and ticket.status == "closed"


def test_an_agent_notes_changes_and_answers_from_the_ticket_page(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(ALICE, "Alice Agent", password=PASSWORD)
        send(hd.smtp_port, request("Invoices are wrong", "The totals are doubled."))
        wait_until_sent(hd.desk.engine)
        page = person()
        _sign_in(hd, page, ALICE)
        page.click("text=#1")
        assert "The totals are doubled." in page.inner_text(".thread")
        # An internal note, seen by agents only, marked as such.
        page.check("input[name=kind][value=note]")
        page.fill("#text", "Looks like the tax rounding bug again.")
        page.click("form.act button")
        assert "Internal note" in page.inner_text("article.note")
        assert "tax rounding" in page.inner_text("article.note")
        # A public answer that also marks it pending and raises it to S1.
        page.fill("#text", "We are on it; a fix ships today.")
        page.select_option("#status", "pending")
        page.select_option("#severity", "S1")
        page.click("form.act button")
        assert page.inner_text(".status") == "pending"
        assert page.inner_text(".sev") == "S1"
        assert page.inner_text(".assignee") == ALICE  # the first agent to answer takes it
        history = page.inner_text(".audit")
        assert "status open → pending" in history and "via web" in history
        assert "severity S3 → S1" in history
        answer = hd.mails_to(CAROL, "Invoices are wrong", count=2)
        assert any("a fix ships today" in mail.text() for mail in answer)
        assert not any("tax rounding" in r.text() for r in relay.received)


def test_a_stale_form_says_so_instead_of_overwriting(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(ALICE, "Alice Agent", password=PASSWORD)
        send(hd.smtp_port, request("Invoices are wrong", "The totals are doubled."))
        wait_until_sent(hd.desk.engine)
        first = person()
        _sign_in(hd, first, ALICE)
        first.goto(hd.url + "/desk/tickets/1")
        second = first.context.new_page()  # another tab, the same agent
        second.goto(hd.url + "/desk/tickets/1")
        second.select_option("#status", "solved")
        second.check("input[name=kind][value=note]")
        second.click("form.act button")
        assert second.inner_text(".status") == "solved"
        # The first tab still shows "open": its change is refused, nothing overwritten.
        first.select_option("#status", "pending")
        first.fill("#text", "Moving this to pending.")
        first.click("form.act button")
        assert "changed since you opened it" in first.inner_text(".error")
        assert first.inner_text(".status") == "solved"
        assert first.input_value("#text") == "Moving this to pending."
        assert "Moving this" not in first.inner_text(".thread")


def test_raising_to_s0_on_the_web_pages_on_call_once(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    sunday_2am = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # 02:00 in Los Angeles
    with Pager() as pager, helpdesk(desks(
        clock=FixedClock(sunday_2am), smtp={"port": free_port()},
        outbound={"relay": relay.address}, agents={"addresses": [ALICE]},
        oncall={"webhook": {"url": pager.url, "secret": "webhook-secret"}},
    ), relay) as hd:
        hd.add_account(ALICE, "Alice Agent", password=PASSWORD)
        send(hd.smtp_port, request("Checkout fails", "Every card is declined."))
        wait_until_sent(hd.desk.engine)
        page = person()
        _sign_in(hd, page, ALICE)
        page.goto(hd.url + "/desk/tickets/1")
        page.select_option("#severity", "S0")
        page.check("input[name=kind][value=note]")
        page.fill("#text", "All payments are down: paging.")
        page.click("form.act button")
        assert page.inner_text(".sev") == "S0"
        pages = pager.wait_for(1)
        assert pages[0]["ticket"]["severity"] == "S0"  # type: ignore[index]
        # Another note on the S0 ticket pages nobody again.
        page.check("input[name=kind][value=note]")
        page.fill("#text", "Payment provider says it is their outage.")
        page.click("form.act button")
        assert "their outage" in page.inner_text(".thread")
        wait_until_sent(hd.desk.engine)
        relay.settle()
        assert len(pager.bodies) == 1
        assert "page" in page.inner_text(".audit")


def test_an_operator_releases_held_mail_and_replays_the_quarantine(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"operators": [ALICE]}, support={"sender_policy": "registered"})
    with helpdesk(desk, relay) as hd:
        hd.add_account(ALICE, "Alice Agent", password=PASSWORD)
        send(hd.smtp_port, request("Please help", "I have no account yet.",
                                   sender="Nina New <nina@newcomer.test>"))
        lost = request("Lost in the parser", "This one broke ingest.",
                       sender="Nina New <nina@newcomer.test>").as_bytes()
        quarantine(hd.desk, Inbound(lost, "smtp", "nina@newcomer.test",
                                    ("support@example.com",)), RuntimeError("parser crashed"))
        page = person()
        _sign_in(hd, page, ALICE)
        page.goto(hd.url + "/ops/mail")
        assert "nina@newcomer.test" in page.inner_text("table.held")
        assert "parser crashed" in page.inner_text("table.quarantine")
        # The raw mail comes as a file to save, never as a page.
        with page.expect_download() as download:
            page.click("table.quarantine a:has-text('Download')")
        saved = download.value
        assert saved.suggested_filename == "quarantine-1.eml"
        assert Path(saved.path()).read_bytes() == lost
        page.click("table.held button:has-text('Release')")
        assert "Released: new_ticket as #1" in page.inner_text(".done")
        assert "No mail is held." in page.content()
        # Released, Nina may open tickets: her quarantined mail, replayed, opens one.
        page.click("table.quarantine button:has-text('Replay')")
        assert "Replayed: new_ticket as #2" in page.inner_text(".done")
        assert "replayed" in page.inner_text("table.quarantine")
        page.goto(hd.url + "/desk")
        assert _numbers(page) == ["#1", "#2"]
        # A customer sees none of it.
        hd.add_account(CAROL, password=PASSWORD)
        customer = person()
        _sign_in(hd, customer, CAROL)
        assert customer.goto(hd.url + "/ops/mail").status == 404
        assert customer.goto(hd.url + "/ops/quarantine/1/raw").status == 404
