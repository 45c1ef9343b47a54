"""Mail that must not make a ticket or an answer, and senders who may not open tickets."""

from __future__ import annotations

import email.utils
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlmodel import col, select

from tests.harness import Received, Relay, request, send, serving
from tests.servers import corpus_dir, free_port
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.inbound import Inbound
from ticketing.ingest import ingest, release
from ticketing.models import Account, Message, Ticket
from ticketing.reports import list_inbound, show_ticket

CAROL = "carol@customer.test"
ALICE = "alice@example.com"


def _responder_answer(mail: Received, headers: bool, n: int) -> bytes:
    """What an out-of-office responder sends back: with RFC 3834 headers, or none at all."""
    original = mail.message
    answer = request(f"Out of office: {original['Subject']}", "I am away until Monday.",
                     sender=mail.rcpt_tos[0], to="support@example.com")
    del answer["Message-ID"]
    answer["Message-ID"] = f"<ooo-{n}@customer.test>"
    if headers:
        answer["Auto-Submitted"] = "auto-replied"
        answer["In-Reply-To"] = original["Message-ID"]
    return answer.as_bytes()


@pytest.mark.parametrize("with_headers", [True, False], ids=["rfc3834", "no-headers"])
def test_auto_responder_ping_pong_stays_bounded(
    desks: Callable[..., Desk], relay: Relay, with_headers: bool
) -> None:
    clock = FixedClock(datetime(2026, 3, 3, 18, 0, tzinfo=UTC))
    desk = desks(clock=clock, smtp={"port": free_port()}, outbound={"relay": relay.address})
    limit = desk.settings.limits.per_recipient_per_hour
    answered = 0
    with serving(desk) as port:
        send(port, request("Hello", "First mail.", sender=CAROL), sender=CAROL)
        # A minute of traffic: every mail that reaches the responder is answered at once.
        for second in range(60):
            relay.settle(quiet=0.15)
            for mail in relay.received[answered:]:
                answered += 1
                send(port, _responder_answer(mail, with_headers, answered), sender=CAROL)
            clock.advance(seconds=1)
        sent = relay.settle()
    to_carol = [m for m in sent if CAROL in m.rcpt_tos]
    assert 1 <= len(to_carol) <= limit
    if with_headers:
        assert len(to_carol) == 1  # RFC 3834 replies are never answered
    with transaction(desk.engine) as session:
        tickets = session.exec(select(Ticket)).all()
    assert len(tickets) <= limit + 1


def test_out_of_office_on_a_ticket_is_stored_silently(desks: Callable[..., Desk],
                                                      relay: Relay) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE]})
    with serving(desk) as port:
        send(port, request("Disk full", "Our disk is full.", sender=CAROL))
        confirmation = relay.wait_for(1, where=lambda r: CAROL in r.rcpt_tos)[0]
        relay.settle()
        before = len(relay.received)
        send(port, _responder_answer(confirmation, True, 1), sender=CAROL)
        after = relay.settle()
    assert len(after) == before
    with transaction(desk.engine) as session:
        ticket = session.exec(select(Ticket)).one()
        shown = show_ticket(session, ticket.id)
    assert shown is not None
    assert [m["kind"] for m in shown["messages"]] == ["request", "auto_reply"]


def test_real_bounces_and_auto_replies_get_no_answer(desks: Callable[..., Desk],
                                                     relay: Relay) -> None:
    corpus = corpus_dir()
    rows = [line.split("\t") for line in (corpus / "loops" / "MANIFEST.tsv").read_text()
            .splitlines()[1:] if line.strip()]
    automatic = [corpus / "loops" / r[0] for r in rows if r[5] not in ("control_human",)]
    bounces = sorted((corpus / "sisimai-set-of-emails").glob("lhost-postfix-0*.eml"))[:8]
    files = [f for f in automatic + bounces if f.is_file()]
    assert len(files) > 20
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address})
    with serving(desk) as port:
        for path in files:
            raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            send(port, raw, "<>" if "lhost" in path.name else "someone@elsewhere.test")
        answered = relay.settle()
    with transaction(desk.engine) as session:
        kinds = [m.kind for m in session.exec(select(Message)).all()]
    assert len(kinds) == len(files)
    assert "request" not in kinds
    assert answered == []


def _bounce(failed: str, returned_headers: str) -> bytes:
    """A delivery status report (RFC 3464) from the customer's server: `failed` failed
    for good; the header block of the mail returned."""
    return (
        "From: MAILER-DAEMON@mx.customer.test\r\n"
        "To: support@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <bounce-{uuid.uuid4().hex}@mx.customer.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.customer.test\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nAction: failed\r\n"
        "Status: 5.1.1\r\n\r\n"
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"{returned_headers}"
        "--b--\r\n"
    ).encode()


def test_permanent_bounce_of_our_mail_stops_mail_to_that_address(desks: Callable[..., Desk],
                                                                 relay: Relay) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address})
    with serving(desk) as port:
        send(port, request("Help", "Please.", sender="gone@customer.test"))
        confirmation = relay.wait_for(1)[0]
        dsn = _bounce("gone@customer.test",
                      f"Message-ID: {confirmation.message['Message-ID']}\r\n")
        # Back to the confirmation's own return path, as the customer's server sends it.
        send(port, dsn, "<>", [confirmation.mail_from])
        relay.settle()
        before = len(relay.received)
        send(port, request("Another one", "Again.", sender="gone@customer.test"))
        after = relay.settle()
    assert len(after) == before  # no confirmation to a bouncing address
    with transaction(desk.engine) as session:
        account = session.exec(select(Account).where(Account.address == "gone@customer.test")).one()
    assert account.bouncing_since is not None


def test_forged_bounce_marks_nobody(desks: Callable[..., Desk], relay: Relay) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address})
    dsn = (
        b"From: MAILER-DAEMON@evil.test\r\nTo: support@example.com\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; evil.test\r\n\r\nFinal-Recipient: rfc822; ceo@customer.test\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n"
    )
    with serving(desk) as port:
        send(port, dsn, "<>")
        send(port, request("Hi", "From the CEO.", sender="ceo@customer.test"))
        received = relay.wait_for(1)
    assert [r.rcpt_tos for r in received] == [("ceo@customer.test",)]


def test_registered_policy_holds_strangers_and_release_opens_the_ticket(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 support={"sender_policy": "registered", "allowed_domains": ["partner.test"]})
    with serving(desk) as port:
        send(port, request("Let me in", "I am new.", sender="stranger@nowhere.test"))
        send(port, request("Partner here", "Hello.", sender="pat@partner.test"))
        received = relay.settle()
    to_stranger = [r for r in received if r.rcpt_tos == ("stranger@nowhere.test",)]
    assert len(to_stranger) == 1
    assert "account manager" in to_stranger[0].text()
    assert to_stranger[0].message["Auto-Submitted"] == "auto-replied"
    with transaction(desk.engine) as session:
        tickets = session.exec(select(Ticket)).all()
        held = [r for r in list_inbound(session) if r["status"] == "held"]
    assert [t.requester for t in tickets] == ["pat@partner.test"]
    assert len(held) == 1 and held[0]["from"] == "stranger@nowhere.test"
    outcome = release(desk, int(held[0]["id"].lstrip("m")))
    assert outcome.status == "new_ticket"
    with transaction(desk.engine) as session:
        shown = show_ticket(session, outcome.ticket or 0)
        account = session.exec(
            select(Account).where(Account.address == "stranger@nowhere.test")).one()
    assert shown is not None and shown["requester"] == "stranger@nowhere.test"
    assert "I am new." in shown["messages"][0]["text"]
    assert account.registered


def _agent_reply(number: int, desk: Desk, authentication: str | None) -> bytes:
    from ticketing.conversation import reply_address

    message = request(f"Re: [#{number}] Broken", "#status closed\nClosing this.",
                      sender=ALICE, to=reply_address(number, desk.settings))
    if authentication:
        message["Authentication-Results"] = authentication
    return message.as_bytes()


def test_forged_agent_gets_no_agent_power(desks: Callable[..., Desk], relay: Relay) -> None:
    desk = desks(smtp={"port": free_port(), "trusted_relays": ["127.0.0.1"]},
                 outbound={"relay": relay.address},
                 agents={"addresses": [ALICE], "trust": "authentication-results",
                         "trusted_authserv_id": "mx.example.com"})
    with serving(desk) as port:
        send(port, request("Broken", "It is broken.", sender=CAROL))
        relay.wait_for(1)
        with transaction(desk.engine) as session:
            number = session.exec(select(Ticket)).one().id or 0
        forged = _agent_reply(number, desk, "mx.evil.test; dkim=pass header.d=example.com")
        send(port, forged, ALICE)
        relay.settle()
        with transaction(desk.engine) as session:
            assert session.get(Ticket, number).status == "open"  # type: ignore[union-attr]
        genuine = _agent_reply(number, desk, "mx.example.com; dkim=pass header.d=example.com; "
                                             "spf=pass smtp.mailfrom=example.com")
        genuine = genuine.replace(b"Message-ID: <", b"Message-ID: <genuine.")
        send(port, genuine, ALICE)
        relay.settle()
    with transaction(desk.engine) as session:
        ticket = session.get(Ticket, number)
        shown = show_ticket(session, number)
    assert ticket is not None and ticket.status == "closed"
    assert shown is not None
    # The forged mail was kept as a customer's reply, its "#status" line plain text.
    assert "#status closed" in shown["messages"][1]["text"]
    assert email.utils.parseaddr(shown["messages"][2]["from"])[1] == ALICE


def _abuse_report(ours: Received | None, rcpt_to: str, enclosed_to: str,
                  sender: str = "fbl@provider.test", headers: str = "") -> bytes:
    """An RFC 5965 feedback report as a mailbox provider sends it: the reader pressed
    "spam" on `ours` (or on a mail we never sent, when None)."""
    message_id = ours.message["Message-ID"] if ours else f"<mailgate.{uuid.uuid4().hex}@example.com>"
    original_rcpt = f"Original-Rcpt-To: {rcpt_to}\r\n" if rcpt_to else ""
    # The reader's server wrote our envelope sender (its own return path) at delivery.
    return_path = f"Return-Path: <{ours.mail_from}>\r\n" if ours else ""
    return (
        f"{headers}From: Feedback Loop <{sender}>\r\n"
        "To: support@example.com\r\n"
        "Subject: Abuse report\r\n"
        f"Message-ID: <fbl-{uuid.uuid4().hex}@provider.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        "--b\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: ProviderFBL/1.0\r\nVersion: 1\r\n"
        f"{original_rcpt}\r\n"
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"{return_path}"
        "From: Example Support <support@example.com>\r\n"
        f"To: {enclosed_to}\r\n"
        f"Message-ID: {message_id}\r\n"
        "--b--\r\n"
    ).encode()


GRUMPY = {"grumpy@customer.test"}
# The topmost Authentication-Results, as our own border host writes it.
PASSED = "Authentication-Results: mx.example.com; dkim=pass header.d=provider.test\r\n"
TRUSTING = {"trust": "authentication-results", "trusted_authserv_id": "mx.example.com"}


@pytest.mark.parametrize(("copied", "named", "sender", "agents", "headers", "stopped"), [
    (False, "grumpy@customer.test", "fbl@provider.test", {}, "", GRUMPY),
    (False, "", "fbl@provider.test", {}, "", GRUMPY),  # redacted, but one reader
    (False, "", "fbl@mail.provider.test", TRUSTING, PASSED, GRUMPY),  # DKIM-checked
    (False, "other@customer.test", "fbl@provider.test", {}, "", set()),  # not a reader
    (True, "grumpy@customer.test", "fbl@provider.test", {}, "", set()),  # two readers
    (False, "", "fbl@elsewhere.test", {}, "", set()),  # not a feedback loop of ours
    (False, "", "fbl@provider.test", TRUSTING, "", set()),  # its From not authenticated
], ids=["named", "redacted", "authenticated", "names-someone-else", "one-of-two-readers",
        "unknown-loop", "unauthenticated"])
def test_an_abuse_complaint_about_our_mail_stops_mail_to_the_complainant(
    desks: Callable[..., Desk], relay: Relay, copied: bool, named: str, sender: str,
    agents: dict[str, str], headers: str, stopped: set[str],
) -> None:
    desk = desks(smtp={"port": free_port(), "trusted_relays": ["127.0.0.1"]},
                 outbound={"relay": relay.address},
                 support={"feedback_loops": ["provider.test"]}, agents=agents)
    readers = ["grumpy@customer.test", "colleague@customer.test"] if copied else [
        "grumpy@customer.test"]
    with serving(desk) as port:
        send(port, request("Help", "Please.", sender="grumpy@customer.test",
                           cc="colleague@customer.test" if copied else ""))
        confirmation = relay.wait_for(1)[0]
        assert sorted(confirmation.rcpt_tos) == sorted(readers)
        report = _abuse_report(confirmation, named, named or "redacted@customer.test",
                               sender, headers)
        assert send(port, report, sender) == {}
        relay.settle()
        # Each reader writes again: only those not stopped get a confirmation.
        for n, reader in enumerate(readers):
            before = len(relay.received)
            send(port, request(f"Again {n}", "Again.", sender=reader))
            if reader not in stopped:
                relay.wait_for(before + 1)
        after = relay.settle()
    confirmed = {r.rcpt_tos[0] for r in after[1:]}
    assert confirmed == set(readers) - stopped
    with transaction(desk.engine) as session:
        accounts = session.exec(select(Account)).all()
        kinds = [m.kind for m in session.exec(select(Message).order_by(Message.id)).all()]
    assert {a.address for a in accounts if a.bouncing_since is not None} == stopped
    assert all("complaint" in a.bounce_detail for a in accounts if a.address in stopped)
    assert kinds == ["request", "auto_reply", *["request"] * len(readers)]  # no ticket for it


def test_an_abuse_report_about_mail_we_never_sent_marks_nobody(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 support={"feedback_loops": ["provider.test"]})
    with serving(desk) as port:
        # A Message-ID in our form, but of no mail we sent.
        send(port, _abuse_report(None, "ceo@customer.test", "ceo@customer.test"),
             "fbl@provider.test")
        send(port, request("Hi", "From the CEO.", sender="ceo@customer.test"))
        received = relay.wait_for(1)
    assert [r.rcpt_tos for r in received] == [("ceo@customer.test",)]


def test_an_abuse_report_names_the_complainant_where_the_provider_does() -> None:
    from tests.servers import missing
    from ticketing.dsn import read_complaint

    corpus = corpus_dir() / "sisimai-set-of-emails"
    if not corpus.is_dir():
        missing(f"the corpus has no {corpus.name}/")
    found = {}
    for name in ("arf-01.eml", "arf-02.eml", "arf-11.eml", "arf-12.eml"):
        complaint = read_complaint((corpus / name).read_bytes())
        assert complaint is not None, name
        found[name] = (complaint.message_id, complaint.named)
    assert found == {
        # The enclosed mail has no Message-ID; its To is "redacted@example.net".
        "arf-01.eml": ("", ()),
        # Original-Rcpt-To names the reader.
        "arf-02.eml": ("000000000000000000000000.smtp@example.com",
                       ("this-local-part-does-not-exist-on-yahoo@yahoo.com",)),
        # "Undisclosed Recipients"; arf-12 encloses the headers as text/rfc822-header.
        "arf-11.eml": ("ffffffffffffffffffffffffff0000000000@example.net", ()),
        "arf-12.eml": ("0000000000000000000000000@example.net", ()),
    }


def test_a_report_with_thousands_of_parts_is_filed_without_reading_them_all(
    desks: Callable[..., Desk]
) -> None:
    desk = desks()
    parts = "".join(
        "--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\r\n"
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"To: reader{n}@customer.test\r\nMessage-ID: <m{n}@customer.test>\r\n"
        for n in range(3000))
    raw = (
        "From: fbl@provider.test\r\nTo: support@example.com\r\nSubject: Abuse\r\n"
        "Message-ID: <many-parts@provider.test>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
        f"{parts}--b--\r\n"
    ).encode()
    outcome = ingest(desk, Inbound(raw, "smtp", "fbl@provider.test", ("support@example.com",)))
    assert (outcome.status, outcome.detail) == ("classified", "auto_reply (feedback-report)")
    with transaction(desk.engine) as session:
        assert session.exec(select(Account).where(col(Account.bouncing_since).is_not(None))).all() == []


@pytest.mark.parametrize("field", ["Message-ID: ", "Message-Id:\r\n  "],
                         ids=["plain", "folded"])
def test_a_bounce_is_matched_to_the_mail_it_returns_not_to_one_it_refers_to(
    desks: Callable[..., Desk], relay: Relay, field: str
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address})
    with serving(desk) as port:
        send(port, request("First", "One.", sender="alice@customer.test"))
        first = relay.wait_for(1)[0]
        send(port, request("Second", "Two.", sender="bob@customer.test"))
        second = relay.wait_for(2)[1]
        # Bob's server returns the second mail; its headers also name the first one.
        dsn = _bounce("bob@customer.test",
                      f"References: {first.message['Message-ID']}\r\n"
                      f"{field}{second.message['Message-ID']}\r\n")
        send(port, dsn, "<>", [second.mail_from])
    with transaction(desk.engine) as session:
        bouncing = session.exec(select(Account.address).where(
            col(Account.bouncing_since).is_not(None))).all()
        filed = session.exec(select(Message).where(Message.kind == "bounce")).one()
        ticket = session.get(Ticket, filed.ticket_id)
    assert bouncing == ["bob@customer.test"]
    assert ticket is not None and ticket.subject == "Second"
