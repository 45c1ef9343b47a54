"""Signing in to the Help Desk: one-time links, passwords, resets and sessions, in a real browser."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import select

from tests.harness import Relay
from tests.helpdesk import HelpDesk, WebClient, helpdesk
from tests.servers import free_port
from tests.test_cli import run, write_config
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Outbox

CAROL = "carol@client.test"
PASSWORD = "correct horse battery"


def _desk(desks: Callable[..., Desk], relay: Relay, clock: FixedClock | None = None,
          **sections: dict[str, object]) -> Desk:
    return desks(clock=clock, smtp={"port": free_port()}, outbound={"relay": relay.address},
                 **sections)


def _sent_to(hd: HelpDesk, address: str) -> list[str]:
    """The subjects of every mail queued for the address so far."""
    with transaction(hd.desk.engine) as session:
        rows = session.exec(select(Outbox)).all()
    return [r.kind for r in rows if address in json.loads(r.recipients)]


def test_a_sign_in_link_works_once(desks: Callable[..., Desk], relay: Relay,
                                   person: Callable[[], Any]) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(CAROL, "Carol")
        page = person()
        hd.sign_in_by_link(page, CAROL)
        link = hd.link_for(CAROL)
        mail = hd.mails_to(CAROL, "Sign in")[0]
        assert mail.message["Auto-Submitted"] == "auto-generated"
        # The same link again, in this browser or another: used up.
        again = page.goto(link)
        assert again.status == 410 and "This link no longer works" in page.inner_text("main")
        other = person()
        other.goto(hd.url + "/sign-in")  # a page of ours first, for the form token's cookie
        status, _, _ = WebClient(hd.url).post(link.removeprefix(hd.url), {})
        assert status in (403, 410)
        other.goto(link)
        assert "This link no longer works" in other.inner_text("main")
        assert other.goto(hd.url + "/requests").url.startswith(hd.url + "/sign-in")


def test_a_link_older_than_fifteen_minutes_signs_nobody_in(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any], clock: FixedClock
) -> None:
    with helpdesk(_desk(desks, relay, clock), relay) as hd:
        hd.add_account(CAROL)
        page = person()
        page.goto(hd.url + "/sign-in")
        page.fill("#link-email", CAROL)
        page.click("text=Email me a sign-in link")
        page.wait_for_selector("text=Check your mail")
        link = hd.link_for(CAROL)
        page.goto(link)  # the button page, opened in time
        clock.advance(minutes=15, seconds=1)
        page.click("button:has-text('Sign in')")
        assert "This link no longer works" in page.inner_text("main")
        assert page.goto(link).status == 410
        # The code from the same mail is just as dead.
        code = hd.mails_to(CAROL, "Sign in")[0].text().split("sign-in page: ")[1][:6]
        page.goto(hd.url + "/sign-in")
        page.fill("#link-email", CAROL)
        clock.advance(seconds=1)
        page.click("text=Email me a sign-in link")
        page.fill("#code", code)
        page.click("form[action='/sign-in/code'] button")
        assert "That code is not right" in page.inner_text("main")


def test_a_mailed_code_signs_in_and_lands_where_the_person_was_going(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(CAROL)
        page = person()
        page.goto(hd.url + "/requests/new")
        page.fill("#link-email", CAROL)
        page.click("text=Email me a sign-in link")
        page.wait_for_selector("text=Check your mail")
        code = hd.mails_to(CAROL, "Sign in")[0].text().split("sign-in page: ")[1][:6]
        page.fill("#code", code)
        page.click("form[action='/sign-in/code'] button")
        page.wait_for_selector("h1:has-text('Submit a request')")
        assert page.url == hd.url + "/requests/new"


def test_five_wrong_passwords_make_the_address_wait(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any], clock: FixedClock
) -> None:
    with helpdesk(_desk(desks, relay, clock), relay) as hd:
        hd.add_account(CAROL, password=PASSWORD)
        hd.add_account("dan@client.test", password=PASSWORD)
        page = person()
        page.goto(hd.url + "/sign-in")
        for attempt in range(5):
            page.fill("#email", CAROL)
            page.fill("#password", f"wrong guess {attempt}")
            page.click("form[action='/sign-in'] button")
            assert "do not match" in page.inner_text(".error")
            assert page.input_value("#email") == CAROL  # what was typed stays
        # The right password is refused now too, without being checked.
        page.fill("#password", PASSWORD)
        page.click("form[action='/sign-in'] button")
        assert "Too many wrong passwords" in page.inner_text(".error")
        # Another address is not held up by Carol's.
        client = WebClient(hd.url)
        client.sign_in("dan@client.test", PASSWORD)
        # Fifteen minutes later she may try again.
        clock.advance(minutes=15, seconds=1)
        page.fill("#email", CAROL)
        page.fill("#password", PASSWORD)
        page.click("form[action='/sign-in'] button")
        page.wait_for_selector("h1:has-text('My requests')")


def test_a_reset_ends_every_other_session_and_mails_a_notice(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(CAROL, password=PASSWORD)
        elsewhere = WebClient(hd.url)
        elsewhere.sign_in(CAROL, PASSWORD)
        assert elsewhere.get("/requests")[0] == 200
        page = person()
        page.goto(hd.url + "/sign-in")
        page.click("text=Forgot password")
        page.fill("#email", CAROL)
        page.click("button:has-text('Mail me a reset link')")
        page.wait_for_selector("text=Check your mail")
        page.goto(hd.link_for(CAROL, subject="Reset your"))
        page.fill("#password", "a brand new passphrase")
        page.fill("#password_again", "a brand new passphrase")
        page.click("button:has-text('Set password')")
        page.wait_for_selector("h1:has-text('My requests')")
        notice = hd.mails_to(CAROL, "password was changed")[0]
        assert "every other browser signed in to it was signed out" in notice.text()
        assert elsewhere.get("/requests")[0] == 303  # signed out there
        fresh = WebClient(hd.url)
        fresh.sign_in(CAROL, "a brand new passphrase")


def test_sign_out_and_sign_out_everywhere(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(CAROL, password=PASSWORD)
        phone, laptop = WebClient(hd.url), WebClient(hd.url)
        phone.sign_in(CAROL, PASSWORD)
        laptop.sign_in(CAROL, PASSWORD)
        page = person()
        page.goto(hd.url + "/sign-in")
        page.fill("#email", CAROL)
        page.fill("#password", PASSWORD)
        page.click("form[action='/sign-in'] button")
        page.click("nav >> text=Sign out")
        page.wait_for_selector("h1:has-text('Sign in')")
        assert phone.get("/requests")[0] == 200  # only that browser signed out
        phone.post("/sign-out", {"csrf": phone.token("/account"), "everywhere": "1"},
                   {"Origin": hd.url})
        assert phone.get("/requests")[0] == 303
        assert laptop.get("/requests")[0] == 303


def test_an_idle_session_ends(
    desks: Callable[..., Desk], relay: Relay, clock: FixedClock
) -> None:
    with helpdesk(_desk(desks, relay, clock, web={"idle_timeout": 3600}), relay) as hd:
        hd.add_account(CAROL, password=PASSWORD)
        client = WebClient(hd.url)
        client.sign_in(CAROL, PASSWORD)
        clock.advance(minutes=59)
        assert client.get("/requests")[0] == 200
        clock.advance(minutes=59)  # used a minute ago: still on
        assert client.get("/requests")[0] == 200
        clock.advance(minutes=61)
        assert client.get("/requests")[0] == 303


def test_no_mail_for_an_address_without_an_account_and_the_same_answer(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay, support={"sender_policy": "registered"})
    with helpdesk(desk, relay) as hd:
        hd.add_account(CAROL)
        answers = {}
        for address in (CAROL, "stranger@client.test", "support@example.com",
                        "no-reply@client.test"):
            client = WebClient(hd.url)
            for path, form in (("/sign-in/link", "/sign-in"), ("/password/forgot",
                                                                "/password/forgot")):
                status, _, body = client.post(path, {"csrf": client.token(form), "email": address},
                                              {"Origin": hd.url})
                # The page as a person reads it: the address typed, this browser's token aside.
                shown = re.sub(rb'name="csrf" value="[0-9a-f]+"', b"",
                               body.replace(address.encode(), b"ADDRESS"))
                answers.setdefault(path, set()).add((status, shown))
        assert all(len(seen) == 1 for seen in answers.values())
        assert hd.mails_to(CAROL, "Reset your") and hd.mails_to(CAROL, "Sign in")
        for address in ("stranger@client.test", "support@example.com", "no-reply@client.test"):
            assert _sent_to(hd, address) == []


def test_sign_in_mails_are_limited_per_address_and_per_client(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay, web={"mails_per_address_per_hour": 3,
                                    "mails_per_client_per_hour": 5})
    with helpdesk(desk, relay) as hd:
        for name in ("carol", "dan"):
            hd.add_account(f"{name}@client.test")
        client = WebClient(hd.url)
        token = client.token("/sign-in")
        for _ in range(4):
            status, _, _ = client.post("/sign-in/link", {"csrf": token, "email": CAROL},
                                       {"Origin": hd.url})
            assert status == 200
        for _ in range(3):
            client.post("/sign-in/link", {"csrf": token, "email": "dan@client.test"},
                        {"Origin": hd.url})
        assert _sent_to(hd, CAROL) == ["sign_in"] * 3  # the fourth: over the address limit
        # The client asked 5 times before Dan's second: only his first went.
        assert _sent_to(hd, "dan@client.test") == ["sign_in"]


def test_link_asks_sent_at_once_stay_within_the_limit(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    """Asks that race each other are counted one after another: none slips past the
    per-address limit because the others were not recorded yet."""
    desk = _desk(desks, relay, web={"mails_per_address_per_hour": 2,
                                    "mails_per_client_per_hour": 100})
    with helpdesk(desk, relay) as hd:
        hd.add_account(CAROL)
        clients = [WebClient(hd.url) for _ in range(12)]
        tokens = [client.token("/sign-in") for client in clients]
        start = threading.Barrier(len(clients))
        answers: list[int] = []

        def ask(client: WebClient, token: str) -> None:
            start.wait()
            status, _, _ = client.post("/sign-in/link", {"csrf": token, "email": CAROL},
                                       {"Origin": hd.url})
            answers.append(status)

        threads = [threading.Thread(target=ask, args=pair) for pair in zip(clients, tokens)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [200] * len(clients)
        assert _sent_to(hd, CAROL) == ["sign_in"] * 2


def test_a_disabled_account_is_signed_out_and_cannot_sign_in_again(
    desks: Callable[..., Desk], relay: Relay, tmp_path: Path, database_url: str
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(CAROL, password=PASSWORD)
        client = WebClient(hd.url)
        client.sign_in(CAROL, PASSWORD)
        assert client.get("/requests")[0] == 200
        disabled = run(write_config(tmp_path, database_url), "accounts", "disable", CAROL)
        assert disabled.returncode == 0, disabled.stderr
        assert client.get("/requests")[0] == 303
        fresh = WebClient(hd.url)
        status, _, body = fresh.post("/sign-in", {"csrf": fresh.token("/sign-in"), "email": CAROL,
                                                  "password": PASSWORD}, {"Origin": hd.url})
        assert status == 401 and b"do not match" in body
        link = WebClient(hd.url)
        link.post("/sign-in/link", {"csrf": link.token("/sign-in"), "email": CAROL},
                  {"Origin": hd.url})
        assert _sent_to(hd, CAROL) == []


def test_after_sign_in_only_a_page_of_ours_is_where_it_lands(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(CAROL, password=PASSWORD)
        for next_path, lands in (("/requests/7", "/requests/7"), ("//evil.test/x", "/requests"),
                                 ("https://evil.test/", "/requests"), ("/\\evil.test", "/requests")):
            client = WebClient(hd.url)
            status, headers, _ = client.post("/sign-in", {
                "csrf": client.token("/sign-in"), "email": CAROL, "password": PASSWORD,
                "next": next_path}, {"Origin": hd.url})
            assert status == 303 and headers["Location"] == lands
