"""An agent's ticket page: followers added and removed (and the same by mail), the files,
the page history."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.harness import Relay, request, send, serving, wait_until_sent
from tests.helpdesk import HelpDesk, WebClient, helpdesk
from tests.servers import free_port
from tests.test_oncall_e2e import Pager
from tests.test_threads import envelope_to, reply_to
from ticketing.clock import FixedClock
from ticketing.desk import Desk

ALICE = "alice@example.com"
ERIN = "erin@partner.test"
CAROL = "carol@customer.test"
DAVE = "dave@customer.test"
MALLORY = "mallory@elsewhere.test"
PASSWORD = "correct horse battery"
SUBJECT = "Invoices are wrong"


def _desk(desks: Callable[..., Desk], relay: Relay, **sections: dict[str, object]) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE]}, **sections)


def _sign_in(hd: HelpDesk, page: Any, address: str) -> None:
    page.goto(hd.url + "/sign-in")
    page.fill("#email", address)
    page.fill("#password", PASSWORD)
    page.click("form[action='/sign-in'] button")
    page.wait_for_selector("text=Sign out")


def _answer(page: Any, text: str) -> None:
    page.check("input[name=kind][value=reply]")
    page.fill("#text", text)
    page.click("form.act button")
    page.wait_for_selector(f"article.mail:has-text('{text}')")


def test_a_follower_added_on_the_web_gets_the_next_answer_and_once_removed_does_not(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(ALICE, "Alice Agent", password=PASSWORD)
        send(hd.smtp_port, request(SUBJECT, "The totals are doubled."))
        wait_until_sent(hd.desk.engine)
        page = person()
        _sign_in(hd, page, ALICE)
        page.goto(hd.url + "/desk/tickets/1")
        page.fill("#follow", DAVE)
        page.click("form.follow button")
        assert DAVE in page.inner_text(".people")
        history = page.inner_text(".audit")
        assert f"follower - → {DAVE} (#follow), by Alice Agent via web" in history
        _answer(page, "We found the rounding bug.")
        assert any("rounding bug" in m.text() for m in hd.mails_to(DAVE, SUBJECT))
        page.click(f".people li:has-text('{DAVE}') form.unfollow button")
        assert DAVE not in page.inner_text(".people")
        assert f"follower {DAVE} → - (#unfollow), by Alice Agent via web" in page.inner_text(
            ".audit")
        _answer(page, "The fix is live now.")
        assert any("fix is live" in m.text() for m in hd.mails_to(CAROL, SUBJECT, count=3))
        wait_until_sent(hd.desk.engine)
        to_dave = [r for r in relay.received if DAVE in r.rcpt_tos]
        assert len(to_dave) == 1 and "fix is live" not in to_dave[0].text()


def _version(client: WebClient, number: int) -> tuple[str, bytes]:
    status, _, body = client.get(f"/desk/tickets/{number}")
    found = re.search(rb'name="version" value="([^"]+)"', body)
    assert status == 200 and found, (status, body[:300])
    return found.group(1).decode(), body


def test_agents_download_every_file_as_a_file_and_customers_get_a_404_stale_forms_a_409(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        for address in (ALICE, CAROL, MALLORY):
            hd.add_account(address, password=PASSWORD)
        mail = request(SUBJECT, "The page attached shows it.")
        page_bytes = b"<html><script>alert(document.cookie)</script></html>"
        mail.add_attachment(page_bytes, maintype="text", subtype="html", filename="totals.html")
        send(hd.smtp_port, mail)
        send(hd.smtp_port, request("Another one", "No file here.", sender=MALLORY))
        wait_until_sent(hd.desk.engine)
        agent = WebClient(hd.url)
        agent.sign_in(ALICE, PASSWORD)
        _, body = _version(agent, 1)
        link = re.search(rb'href="(/desk/tickets/1/files/\d+/totals.html)"', body)
        assert link, body
        path = link.group(1).decode()
        status, headers, got = agent.get(path)
        assert status == 200 and got == page_bytes
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"].startswith("attachment;")
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in headers["Content-Security-Policy"]
        # The file, asked for under another ticket's number: nothing.
        assert agent.get(path.replace("/tickets/1/", "/tickets/2/"))[0] == 404
        for address in (MALLORY, CAROL):  # a stranger, and the requester on the desk's pages
            customer = WebClient(hd.url)
            customer.sign_in(address, PASSWORD)
            status, _, got = customer.get(path)
            assert status == 404 and page_bytes not in got
        assert WebClient(hd.url).get(path)[0] == 303  # signed out: asked to sign in
        # A follower added from a form made before another change is refused, not added.
        token = agent.token("/desk/tickets/1")
        version, _ = _version(agent, 1)
        status, _, _ = agent.post("/desk/tickets/1", {
            "csrf": token, "version": version, "kind": "note", "text": "Looking."},
            {"Origin": hd.url})
        assert status == 303
        status, _, body = agent.post("/desk/tickets/1", {
            "csrf": token, "version": version, "follow": DAVE}, {"Origin": hd.url})
        assert status == 409 and b"changed since you opened it" in body
        assert DAVE.encode() not in _version(agent, 1)[1]


def test_the_page_history_shows_the_page_an_agent_raised_from_the_web(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    sunday_2am = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # 02:00 in Los Angeles
    with Pager() as pager, helpdesk(_desk(
        desks, relay, clock=FixedClock(sunday_2am),
        oncall={"webhook": {"url": pager.url, "secret": "webhook-secret"}},
    ), relay) as hd:
        hd.add_account(ALICE, "Alice Agent", password=PASSWORD)
        send(hd.smtp_port, request("Checkout fails", "Every card is declined."))
        wait_until_sent(hd.desk.engine, hd.desk.clock)
        agent = WebClient(hd.url)
        version, body = _version(agent_signed_in(agent), 1)
        assert b"No pages." in body
        token = agent.token("/desk/tickets/1")
        status, _, _ = agent.post("/desk/tickets/1", {
            "csrf": token, "version": version, "kind": "note", "status": "open",
            "severity": "S0", "assign": "", "text": "All payments down: paging."},
            {"Origin": hd.url})
        assert status == 303
        assert pager.wait_for(1)[0]["ticket"]["severity"] == "S0"  # type: ignore[index]
        wait_until_sent(hd.desk.engine, hd.desk.clock)
        _, body = _version(agent, 1)
        rows = re.findall(rb'<tr class="page">(.*?)</tr>', body, re.S)
        assert len(rows) == 1, body
        cells = [re.sub(rb"\s+", b" ", c).strip() for c in re.findall(rb"<td>(.*?)</td>",
                                                                      rows[0], re.S)]
        assert cells[1:3] == [b"webhook", b"trigger"]
        assert cells[3].startswith(b"delivered") and cells[4].startswith(b"1<br>")
        assert b"ok" in cells[4]


def agent_signed_in(client: WebClient) -> WebClient:
    client.sign_in(ALICE, PASSWORD)
    return client


def test_agents_add_and_remove_followers_by_mail_and_customers_cannot(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with serving(_desk(desks, relay)) as port:
        send(port, request(SUBJECT, "The totals are doubled.", cc=DAVE))
        notice = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,))[0]
        confirmation = relay.wait_for(1, where=lambda r: CAROL in r.rcpt_tos)[0]
        # A customer's command lines are words of a reply, nothing more.
        send(port, reply_to(confirmation, f"Carol <{CAROL}>", f"#unfollow {DAVE}\nStill wrong."),
             sender=CAROL, recipients=envelope_to(confirmation))
        relay.wait_for(1, where=lambda r: DAVE in r.rcpt_tos and "Still wrong" in r.text())
        step = len(relay.settle())
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>",
                            f"#follow {ERIN}\n#unfollow {DAVE}\nWe found the rounding bug."),
             sender=ALICE, recipients=envelope_to(notice))
        relay.wait_for(step + 2)
        answers = relay.settle()[step:]
        assert sorted(r for m in answers for r in m.rcpt_tos) == [CAROL, ERIN]
        assert all("#follow" not in m.text() for m in answers)
        # The requester stays: the agent is told why nothing was done.
        step = len(relay.received)
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>", f"#unfollow {CAROL}\nBye."),
             sender=ALICE, recipients=envelope_to(notice))
        told = relay.wait_for(step + 1)[step:]
        assert told[0].rcpt_tos == (ALICE,) and "the requester stays" in told[0].text()
