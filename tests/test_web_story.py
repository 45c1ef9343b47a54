"""The Help Desk on the web, end to end in a real browser against `serve`: the customer's story."""

from __future__ import annotations

import email.utils
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import select

from tests.harness import Relay, send
from tests.helpdesk import HelpDesk, helpdesk
from tests.servers import free_port
from tests.test_cli import run, write_config
from tests.test_oncall_e2e import Pager
from tests.test_threads import envelope_to, reply_to
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Outbox

CUSTOMER = "customer@client.test"
COLLEAGUE = "colleague@client.test"
AGENT = "alice@example.com"
REPORT = b"timestamp,error\n2026-03-03T17:58:00Z,503 from /api/export\n"
SCREENSHOT = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def test_a_customer_signs_in_submits_a_request_and_everyone_follows_it(
    tmp_path: Path, database_url: str, desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any],
) -> None:
    with Pager() as pager:
        desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                     agents={"addresses": [AGENT]}, oncall={"webhook": {"url": pager.url}})
        # The operator onboards the customer's company.
        config = write_config(tmp_path, database_url)
        added = run(config, "accounts", "add", CUSTOMER, "--name", "Customer Name")
        assert added.returncode == 0, added.stderr
        with helpdesk(desk, relay) as hd:
            _story(hd, person, pager)


def _story(hd: HelpDesk, person: Callable[[], Any], pager: Pager) -> None:
    page = person()
    # She asks for a sign-in link; a link scanner opens the mailed link before she does.
    page.goto(hd.url)
    assert page.url == hd.url + "/sign-in"
    page.fill("#link-email", CUSTOMER)
    page.click("text=Email me a sign-in link")
    page.wait_for_selector("text=Check your mail")
    link = hd.link_for(CUSTOMER)
    with urllib.request.urlopen(link) as scanned:  # the scanner: a GET, no button pressed
        assert b"Press the button" in scanned.read()
    page.goto(link)
    assert page.locator("form button").count() == 1
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('My requests')")

    # She sets a password on her account page.
    page.click("nav >> text=Account")
    page.fill("#password", "correct horse battery")
    page.fill("#password_again", "correct horse battery")
    page.click("button:has-text('Set password')")
    page.wait_for_selector("text=Your password is set")

    # Submit a request: the status page and open incidents come first.
    page.click("nav >> text=Submit a request")
    assert page.locator("section.status a").get_attribute("href") == "https://status.example.com"
    assert "No incidents are open right now" in page.inner_text("section.status")
    page.get_by_label("CC", exact=True).fill(COLLEAGUE)
    page.get_by_label("Subject", exact=True).fill("Exports fail with 503")
    page.get_by_label("Description", exact=True).fill("Since 09:00 every export fails.\nLog attached.")
    page.check("#severity-S0")
    page.get_by_label("Attachments", exact=True).set_input_files([
        {"name": "export-log.csv", "mimeType": "text/csv", "buffer": REPORT},
        {"name": "screen.png", "mimeType": "image/png", "buffer": SCREENSHOT},
    ])
    page.click("button:has-text('Submit')")
    # S0 asks her to confirm that it alerts on-call at once.
    page.wait_for_selector("text=S0 alerts our on-call engineer at once, any day or time.")
    assert page.input_value("#subject") == "Exports fail with 503"
    page.check("#confirm")
    page.get_by_label("Attachments", exact=True).set_input_files([
        {"name": "export-log.csv", "mimeType": "text/csv", "buffer": REPORT},
        {"name": "screen.png", "mimeType": "image/png", "buffer": SCREENSHOT},
    ])
    page.click("button:has-text('Submit')")
    page.wait_for_selector("h1:has-text('[#1] Exports fail with 503')")
    assert page.url == hd.url + "/requests/1"
    assert "S0" in page.inner_text("dl.facts")

    # Exactly what a mailed request does: confirmation to her, Cc her colleague; the
    # page; the agents' notice.
    confirmation = hd.mails_to(CUSTOMER, "[#1]")[0]
    assert set(confirmation.rcpt_tos) == {CUSTOMER, COLLEAGUE}
    assert "Cc" in confirmation.message and COLLEAGUE in str(confirmation.message["Cc"])
    assert "paged" in confirmation.text()
    assert f"{hd.url}/requests/1" in confirmation.text()
    assert pager.wait_for(1)[0]["event_action"] == "trigger"
    notice = hd.mails_to(AGENT, "[#1]")[0]
    assert "Since 09:00 every export fails." in notice.text()

    # Her colleague signs in by link and finds #1 under My requests.
    other = person()
    hd.sign_in_by_link(other, COLLEAGUE)
    assert "#1 Exports fail with 503" in other.inner_text("ul.tickets")
    other.click("text=Exports fail with 503")
    people = other.inner_text("ul.people")
    assert CUSTOMER in people and COLLEAGUE in people
    assert "Since 09:00 every export fails." in other.inner_text("ol.thread")
    with other.expect_download() as download:
        other.click("a:has-text('export-log.csv')")
    assert Path(download.value.path()).read_bytes() == REPORT

    # His web reply reaches her and the agent by mail, threaded.
    other.get_by_label("Your reply", exact=True).fill("Same here since 09:00, on the EU instance too.")
    other.click("button:has-text('Reply')")
    other.wait_for_selector("text=Same here since 09:00")
    to_her = hd.mails_to(CUSTOMER, "Re: [#1]")[0]
    assert "Same here since 09:00" in to_her.text()
    earlier = {str(m.message["Message-ID"]).strip("<>")
               for m in hd.relay.received if CUSTOMER in m.rcpt_tos and m is not to_her}
    assert str(to_her.message["In-Reply-To"]).strip("<>") in earlier
    to_agent = hd.mails_to(AGENT, "Re: [#1]")[0]
    assert "Same here since 09:00" in to_agent.text()

    # The agent's mailed answer shows on the page.
    send(hd.smtp_port, reply_to(notice, AGENT, "We are on it: the export queue is stuck."),
         sender=AGENT, recipients=envelope_to(notice))
    hd.mails_to(CUSTOMER, "Re: [#1]", count=2)
    page.goto(hd.url + "/requests/1")
    thread = page.inner_text("ol.thread")
    assert "We are on it: the export queue is stuck." in thread
    assert thread.index("Since 09:00 every export fails.") < thread.index("Same here") < thread.index(
        "We are on it")

    # The link in her mail, followed signed out, asks her to sign in and lands on the ticket.
    fresh = person()
    fresh.goto(f"{hd.url}/requests/1")
    assert "/sign-in?next=/requests/1" in fresh.url
    fresh.fill("#email", CUSTOMER)
    fresh.fill("#password", "correct horse battery")
    fresh.click("form[action='/sign-in'] button")
    fresh.wait_for_selector("h1:has-text('[#1]')")
    assert fresh.url == hd.url + "/requests/1"

    # Someone not on #1 gets a 404 for it and for its files.
    hd.add_account("stranger@elsewhere.test")
    stranger = person()
    hd.sign_in_by_link(stranger, "stranger@elsewhere.test")
    file_url = other.locator("a:has-text('export-log.csv')").get_attribute("href")
    for path in ("/requests/1", file_url):
        response = stranger.goto(hd.url + path)
        assert response.status == 404
        assert "Exports fail" not in stranger.content()
    stranger.goto(hd.url + "/requests")
    assert "Exports fail" not in stranger.inner_text("main")

    # A reset for an address without an account: the same page as anyone gets, no mail.
    stranger.goto(hd.url + "/password/forgot")
    stranger.fill("#email", "nobody@nowhere.test")
    stranger.click("button:has-text('Mail me a reset link')")
    stranger.wait_for_selector("text=Check your mail")
    answer = stranger.inner_text("main").replace("nobody@nowhere.test", "ADDRESS")
    stranger.goto(hd.url + "/password/forgot")
    stranger.fill("#email", CUSTOMER)
    stranger.click("button:has-text('Mail me a reset link')")
    stranger.wait_for_selector("text=Check your mail")
    assert stranger.inner_text("main").replace(CUSTOMER, "ADDRESS") == answer
    hd.mails_to(CUSTOMER, "Reset your")
    with transaction(hd.desk.engine) as session:
        sent_to = [json.loads(r) for r in session.exec(select(Outbox.recipients)).all()]
    assert not any("nobody@nowhere.test" in to for to in sent_to)
    assert email.utils.parseaddr(str(confirmation.message["From"]))[1] == "support@example.com"
