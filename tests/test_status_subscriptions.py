"""Subscribe to updates: double opt-in, one mail per confirmed subscriber per update through
the outbox, one-click and mailto unsubscribe, the same answer for any address, limits, and
what an attacker tries."""

from __future__ import annotations

import email.utils
import json
import re
import secrets
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlmodel import select

from tests.harness import Received, Relay, request, send
from tests.helpdesk import HelpDesk, WebClient, helpdesk
from tests.servers import free_port
from tests.test_cli import run, write_config
from tests.test_threads import envelope_to, reply_to
from ticketing.audit import Actor
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.inbound import Inbound
from ticketing.incident_mail import publish
from ticketing.incidents import attach, open_incident, post_update
from ticketing.ingest import ingest
from ticketing.models import Incident, Message, Outbox, StatusSubscriber, Ticket
from ticketing.ratelimit import mark_bouncing
from ticketing.returnpath import outbox_id_of

ANN = "ann@reader.test"
BOB = "bob@reader.test"
CAT = "cat@reader.test"
DAN = "dan@reader.test"
CONFIRM = re.compile(r"(http://\S+/status/confirm/[A-Za-z0-9_-]+)")
MANAGE = re.compile(r"(http://\S+/status/subscription/[0-9]+-[0-9a-f]{32})")
STATUS_TAG = "[Example Support status]"


def _desk(desks: Callable[..., Desk], relay: Relay, **status: object) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": ["alice@example.com"]},
                 status={"components": ["Dashboard", "API"], **status})


def _config(tmp_path: Path, database_url: str, desk: Desk) -> Path:
    """The operator's config for the CLI: the same desk, secret and web address as serve's."""
    path = write_config(tmp_path, database_url, status='components = ["Dashboard", "API"]',
                        web=f"port = {desk.settings.web.port}")
    path.write_text(path.read_text().replace("cli-test-secret", desk.settings.support.secret))
    return path


def _incidents(config: Path, *args: str) -> str:
    done = run(config, "incidents", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def _subscribe(hd: HelpDesk, address: str, client: WebClient | None = None,
               ) -> tuple[int, str]:
    """The form on /status as a browser posts it: from our page, by its Origin."""
    client = client or WebClient(hd.url)
    status, _, body = client.post("/status/subscribe", {"email": address}, {"Origin": hd.url})
    return status, body.decode()


def _status_mails(relay: Relay, address: str) -> list[Received]:
    return [r for r in relay.received
            if address in r.rcpt_tos and STATUS_TAG in str(r.message["Subject"])]


def _confirm_link(hd: HelpDesk, address: str, count: int = 1) -> str:
    mail = hd.mails_to(address, "Confirm your subscription", count)[count - 1]
    found = CONFIRM.search(mail.text())
    assert found, mail.text()
    return found.group(1)


def _press_confirm(hd: HelpDesk, link: str) -> tuple[int, str]:
    client = WebClient(hd.url)
    path = link.removeprefix(hd.url)
    # The form token belongs to this client's cookie, whichever page of ours handed it out.
    status, headers, _ = client.post(path, {"csrf": client.token("/status/subscribe")},
                                     {"Origin": hd.url})
    return status, headers.get("Location") or ""


def _confirmed(desk: Desk) -> set[str]:
    with transaction(desk.engine) as session:
        return set(session.exec(select(StatusSubscriber.address).where(
            StatusSubscriber.confirmed_at != None)).all())  # noqa: E711


def test_each_update_mails_every_confirmed_subscriber_once_until_they_unsubscribe(
    tmp_path: Path, database_url: str, desks: Callable[..., Desk], relay: Relay,
) -> None:
    desk = _desk(desks, relay)
    config = _config(tmp_path, database_url, desk)
    with helpdesk(desk, relay) as hd:
        for address in (ANN, BOB, CAT, DAN):
            status, page = _subscribe(hd, address)
            assert status == 200 and "A confirmation was mailed to" in page
        links = {a: _confirm_link(hd, a) for a in (ANN, BOB, CAT, DAN)}
        # A mail scanner opens Dan's link; he never presses the button.
        with urllib.request.urlopen(links[DAN]) as scanned:
            assert b"Confirm subscription" in scanned.read()
        # Nobody has confirmed yet: the incident opens and mails nobody.
        opened = _incidents(config, "open", "Dashboards fail to load", "--components",
                            "Dashboard", "--message", "We are looking into errors.")
        assert "mailed to 0 subscriber(s)" in opened
        for address in (ANN, BOB, CAT):
            status, location = _press_confirm(hd, links[address])
            assert status == 303 and "/status/subscription/" in location
        assert _confirmed(desk) == {ANN, BOB, CAT}
        updated = _incidents(config, "update", "1", "--state", "identified", "--message",
                             "A bad cache node; replacing it.")
        assert "mailed to 3 subscriber(s)" in updated
        for address in (ANN, BOB, CAT):
            assert len(hd.mails_to(address, STATUS_TAG)) == 1
        mail = _status_mails(relay, BOB)[0]
        headers = mail.message
        assert headers["Subject"] == f"{STATUS_TAG} Dashboards fail to load: Identified"
        assert headers["Auto-Submitted"] == "auto-generated"
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        mailto, https = re.fullmatch(r"<mailto:([^>]+)>, <([^>]+)>",
                                     " ".join(str(headers["List-Unsubscribe"]).split())).groups()
        assert https.startswith(f"{hd.url}/status/unsubscribe/")
        assert mailto.startswith("support+unsubscribe-") and mailto.endswith("@example.com")
        # Its own return path names its own outbox row, so a bounce names Bob.
        number = outbox_id_of(mail.mail_from, desk.settings)
        with transaction(desk.engine) as session:
            row = session.get(Outbox, number)
            assert row is not None and json.loads(row.recipients) == [BOB]
            assert f"<{row.message_id}>" == headers["Message-ID"]
        assert "A bad cache node; replacing it." in mail.text()
        manage = MANAGE.search(mail.text())
        assert manage, mail.text()
        # Opening the manage page (or the unsubscribe link) shows the address, ends nothing.
        with urllib.request.urlopen(manage.group(1)) as page:
            assert BOB in page.read().decode()
        with urllib.request.urlopen(https) as page:
            assert b"End my subscription" in page.read()
        assert BOB in _confirmed(desk)

        # Bob's mail provider: a plain POST, no cookie, no form token (RFC 8058).
        one_click = urllib.request.Request(
            https, data=b"List-Unsubscribe=One-Click", method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(one_click) as answer:
            assert answer.status == 200
        assert BOB not in _confirmed(desk)
        # Cat's client mails the List-Unsubscribe mailto address: no ticket, no answer.
        cat_mailto = re.fullmatch(r"<mailto:([^>]+)>, <[^>]+>", " ".join(
            str(_status_mails(relay, CAT)[0].message["List-Unsubscribe"]).split())).group(1)
        unsubscribe = EmailMessage()
        unsubscribe["From"] = CAT
        unsubscribe["To"] = cat_mailto
        unsubscribe["Subject"] = "unsubscribe"
        unsubscribe["Message-ID"] = email.utils.make_msgid(domain="reader.test")
        unsubscribe.set_content("unsubscribe")
        send(hd.smtp_port, unsubscribe, sender=CAT, recipients=[cat_mailto])
        assert _confirmed(desk) == {ANN}
        relay.settle()
        before = len(relay.received)

        resolved = _incidents(config, "resolve", "1", "--message", "All dashboards load.")
        assert "mailed to 1 subscriber(s)" in resolved
        hd.mails_to(ANN, "Resolved", 1)
        received = relay.settle()
    # Every mail, counted: a confirmation to each of the four, the update to the three
    # who confirmed, the resolution to Ann alone; nothing answered Cat's mail.
    assert [len(_status_mails(relay, a)) for a in (ANN, BOB, CAT, DAN)] == [2, 1, 1, 0]
    assert len(received) == 4 + 3 + 1 and len(received) == before + 1
    with transaction(desk.engine) as session:
        kept = session.exec(select(Message).where(Message.kind == "unsubscribe")).all()
        assert [(m.ticket_id, m.detail) for m in kept] == [
            (None, f"status updates to {CAT} ended")]
    tickets = json.loads(run(config, "tickets", "list", "--json").stdout)
    assert tickets == []


def test_the_form_answers_alike_for_any_address_and_the_limits_hold(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    desk = _desk(desks, relay, subscribe_per_address_per_hour=2, subscribe_per_client_per_hour=8)
    with helpdesk(desk, relay) as hd:
        _subscribe(hd, ANN)
        _press_confirm(hd, _confirm_link(hd, ANN))
        _subscribe(hd, BOB)  # waiting: confirmation not followed
        relay.settle()
        answers = {
            address: _subscribe(hd, address)
            for address in (ANN, BOB, CAT, "noreply@reader.test", "support@example.com")
        }
        for address, (status, page) in answers.items():
            assert (status, page.replace(address, "ADDRESS")) == (
                answers[CAT][0], answers[CAT][1].replace(CAT, "ADDRESS")), address
        relay.settle()
        # Ann (subscribed) is mailed her manage link; Bob a new confirmation; Cat a first
        # one; no mail to a machine address nor to our own.
        assert len(hd.mails_to(ANN, "Your subscription")) == 1
        assert len(hd.mails_to(BOB, "Confirm your subscription", 2)) == 2
        assert len(hd.mails_to(CAT, "Confirm your subscription")) == 1
        assert not [r for r in relay.received if "noreply@reader.test" in r.rcpt_tos
                    or "support@example.com" in r.rcpt_tos]
        # Bob asked twice this hour: a third ask is answered alike and mails nothing.
        assert _subscribe(hd, BOB)[0] == 200
        # The client has asked eight times: from it, a new address gets nothing either.
        status, page = _subscribe(hd, DAN)
        assert status == 200 and f"A confirmation was mailed to <strong>{DAN}</strong>" in page
        relay.settle()
        assert len([r for r in relay.received if BOB in r.rcpt_tos]) == 2
        assert not [r for r in relay.received if DAN in r.rcpt_tos]
        # A malformed address is told so (it could be nobody's).
        status, page = _subscribe(hd, "not an address")
        assert status == 400 and "not a mail address" in page


def test_what_an_attacker_tries_confirms_and_ends_nothing(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    desk = _desk(desks, relay)
    with helpdesk(desk, relay) as hd:
        # A page on another site posts the form: refused, nothing mailed.
        client = WebClient(hd.url)
        status, _, _ = client.post("/status/subscribe", {"email": DAN},
                                   {"Origin": "https://evil.test"})
        assert status == 403
        # A plain HTTP client with neither Origin nor form token: asked to press the button.
        status, _, body = client.post("/status/subscribe", {"email": DAN})
        assert status == 403 and b'name="csrf"' in body
        for address in (ANN, BOB):
            _subscribe(hd, address)
        ann_link = _confirm_link(hd, ANN)
        bob_link = _confirm_link(hd, BOB)
        relay.settle()
        assert not [r for r in relay.received if DAN in r.rcpt_tos]
        # GETs confirm nothing, however often.
        for _ in range(2):
            with urllib.request.urlopen(bob_link) as scanned:
                assert scanned.status == 200
        # A POST without the form token confirms nothing; nor does a made-up token.
        status, _, _ = WebClient(hd.url).post(bob_link.removeprefix(hd.url), {})
        assert status == 403
        made_up = hd.url + "/status/confirm/" + "A" * 43
        status, _, _ = WebClient(hd.url).get(made_up.removeprefix(hd.url))
        assert status == 410
        assert _press_confirm(hd, made_up)[0] == 410
        assert _confirmed(desk) == set()
        # Ann confirms; her link does not work twice.
        status, location = _press_confirm(hd, ann_link)
        assert status == 303
        assert _press_confirm(hd, ann_link)[0] == 410
        _press_confirm(hd, bob_link)
        assert _confirmed(desk) == {ANN, BOB}
        ann_token = location.rsplit("/", 1)[1].split("?")[0]
        with transaction(desk.engine) as session:
            bob_id = session.exec(select(StatusSubscriber.id).where(
                StatusSubscriber.address == BOB)).one()
        # Ann's signature on Bob's number, and a signature cut short: not Bob's pages.
        forged = f"{bob_id}-{ann_token.split('-')[1]}"
        plain = WebClient(hd.url)
        for token in (forged, ann_token[:-1], f"{bob_id}-{'0' * 32}"):
            assert plain.get(f"/status/subscription/{token}")[0] == 404
            status, _, _ = plain.post(f"/status/unsubscribe/{token}",
                                      {"List-Unsubscribe": "One-Click"})
            assert status == 404
        # A POST to Ann's own address without the one-click body ends nothing.
        assert plain.post(f"/status/unsubscribe/{ann_token}", {"x": "1"})[0] == 400
        assert _confirmed(desk) == {ANN, BOB}
        # Mail to a forged unsubscribe address ends nothing and opens no ticket.
        forged_mailto = f"support+unsubscribe-{forged}@example.com"
        message = EmailMessage()
        message["From"] = "mallory@evil.test"
        message["To"] = forged_mailto
        message["Subject"] = "unsubscribe"
        message.set_content("unsubscribe")
        send(hd.smtp_port, message, sender="mallory@evil.test", recipients=[forged_mailto])
        assert _confirmed(desk) == {ANN, BOB}


def test_resolving_with_tell_tickets_answers_each_attached_ticket_once_in_its_thread(
    tmp_path: Path, database_url: str, desks: Callable[..., Desk], relay: Relay,
) -> None:
    desk = _desk(desks, relay)
    config = _config(tmp_path, database_url, desk)
    carol, dave, erin, frank = ("carol@customer.test", "dave@customer.test",
                                "erin@other.test", "frank@third.test")
    with helpdesk(desk, relay) as hd:
        send(hd.smtp_port, request("[S0] Dashboard down", "Nothing loads.",
                                   sender=f"Carol <{carol}>", cc=dave), sender=carol)
        send(hd.smtp_port, request("Dashboards blank", "All blank.", sender=erin), sender=erin)
        send(hd.smtp_port, request("Invoice question", "Which VAT?", sender=frank),
             sender=frank)
        confirmations = {a: hd.mails_to(a, "[#")[0] for a in (carol, dave, erin, frank)}
        _incidents(config, "open", "Dashboards fail to load", "--components", "Dashboard",
                   "--message", "Looking into it.")
        with transaction(desk.engine) as session:
            incident = session.get(Incident, 1)
            assert incident is not None
            for number in (1, 2):
                ticket = session.get(Ticket, number)
                assert ticket is not None
                attach(session, incident, ticket, Actor("alice@example.com", route="web"),
                       desk.clock.now())
        relay.settle()
        before = len(relay.received)
        resolved = _incidents(config, "resolve", "1", "--message", "All dashboards load.",
                              "--tell-tickets")
        assert "told tickets #1, #2" in resolved
        told = relay.settle()[before:]
        # One mail to each participant of each attached ticket; none on the other ticket.
        assert sorted(r.rcpt_tos for r in told) == [(carol,), (dave,), (erin,)]
        for mail in told:
            reader = mail.rcpt_tos[0]
            number = 2 if reader == erin else 1
            message = mail.message
            assert str(message["Subject"]).startswith(f"Re: [#{number}] ")
            # Threaded under the mail this reader already has from the ticket.
            assert message["In-Reply-To"] == confirmations[reader].message["Message-ID"]
            assert message["Auto-Submitted"] == "auto-generated"
            text = mail.text()
            assert "is resolved: Dashboards fail to load" in text
            assert "All dashboards load." in text
        # Carol answers it: her mail joins ticket 1, as any answer to it would.
        to_carol = next(r for r in told if r.rcpt_tos == (carol,))
        send(hd.smtp_port, reply_to(to_carol, f"Carol <{carol}>", "Thanks, works again."),
             sender=carol, recipients=envelope_to(to_carol))
    shown = json.loads(run(config, "tickets", "show", "1", "--json").stdout)
    texts = [m["text"] for m in shown["messages"]]
    assert any("is resolved: Dashboards fail to load" in t for t in texts)
    assert any("Thanks, works again." in t for t in texts)
    assert len(json.loads(run(config, "tickets", "list", "--json").stdout)) == 3


def test_a_reader_subscribes_confirms_and_unsubscribes_in_a_browser_without_javascript(
    tmp_path: Path, database_url: str, desks: Callable[..., Desk], relay: Relay, chromium: Any,
) -> None:
    desk = _desk(desks, relay)
    config = _config(tmp_path, database_url, desk)
    context = chromium.new_context(java_script_enabled=False)
    context.set_default_timeout(15_000)
    try:
        with helpdesk(desk, relay) as hd:
            page = context.new_page()
            page.goto(hd.url + "/status")
            assert page.locator("footer a").count() == 0  # no link to the page itself
            page.get_by_label("Get a mail each time an incident is opened, updated or "
                              "resolved").fill(ANN)
            page.click("button:has-text('Subscribe to updates')")
            page.wait_for_selector("h1:has-text('Check your mail')")
            assert f"A confirmation was mailed to {ANN}" in page.inner_text("main")
            page.goto(_confirm_link(hd, ANN))
            assert page.locator("main form button").count() == 1
            page.click("button:has-text('Confirm subscription')")
            page.wait_for_selector("text=You are subscribed")
            assert ANN in page.inner_text("main")

            _incidents(config, "open", "Dashboards fail to load", "--components", "Dashboard",
                       "--message", "We are looking into errors loading dashboards.")
            update = hd.mails_to(ANN, STATUS_TAG)[0]
            # /status itself may be kept for a minute (it is cacheable); the incident's
            # own page is new to this browser.
            page.goto(f"{hd.url}/status/incidents/1")
            assert "We are looking into errors loading dashboards." in page.inner_text("main")
            manage = MANAGE.search(update.text())
            assert manage, update.text()
            page.goto(manage.group(1))
            assert ANN in page.inner_text("main")
            page.click("button:has-text('End my subscription')")
            page.wait_for_selector("h1:has-text('Unsubscribed')")
            assert _confirmed(desk) == set()
            assert "mailed to 0 subscriber(s)" in _incidents(config, "resolve", "1")
    finally:
        context.close()


def test_updates_leave_out_bouncing_machine_and_over_limit_readers_and_use_no_room_of_the_ceiling(
    desks: Callable[..., Desk],
) -> None:
    desk = desks(clock=FixedClock(datetime(2026, 3, 3, 9, 40, tzinfo=UTC)),
                 limits={"per_recipient_per_hour": 2, "overall_per_hour": 3},
                 status={"components": ["Dashboard"]})
    now = desk.clock.now()
    readers = [f"reader{n}@reader.test" for n in range(5)]
    with transaction(desk.engine) as session:
        for address in [*readers, "noreply@reader.test"]:
            session.add(StatusSubscriber(address=address, key=secrets.token_hex(16),
                                         created_at=now, confirmed_at=now))
        mark_bouncing(session, readers[0], "550 5.1.1 no such user", now)
        incident, posted = open_incident(
            session, "Dashboards fail to load", components=["Dashboard"], state="investigating",
            message="Looking into it.", author="ops", now=now, known=("Dashboard",))
        told = [publish(session, desk, incident, posted, now)]
        for step in ("A cache node is bad.", "Replacing it."):
            told.append(publish(session, desk, incident, post_update(
                session, incident, state=None, message=step, author="ops", now=now), now))
    # Four readers mailed, over the ceiling of three automatic mails an hour; then again;
    # the third update in the hour is over each reader's limit of two.
    assert [(t.subscribers, t.withheld) for t in told] == [(4, 2), (4, 2), (0, 6)]
    with transaction(desk.engine) as session:
        sent = session.exec(select(Outbox.recipients).where(Outbox.kind == "status_update")).all()
    assert sorted(json.loads(r)[0] for r in sent) == sorted(readers[1:] * 2)
    # The customers' confirmations still have all the room of the hourly ceiling.
    outcome = ingest(desk, Inbound(request("Dashboard down", "Nothing loads.").as_bytes(),
                                  "pipe", "carol@customer.test", ("support@example.com",)))
    assert outcome.ticket == 1
    with transaction(desk.engine) as session:
        confirmation = session.exec(select(Outbox).where(Outbox.kind == "confirmation")).one()
    assert json.loads(confirmation.recipients) == ["carol@customer.test"]
