"""Regressions in threads, agents, severity and limits, end to end over SMTP with a relay."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest
from sqlmodel import col, select

from tests.harness import Received, Relay, request, send, serving, wait_until_sent
from tests.servers import free_port
from tests.test_oncall_e2e import Pager
from tests.test_threads import envelope_to, recipients, reply_to
from ticketing.clock import FixedClock
from ticketing.conversation import reply_address
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Ticket
from ticketing.reports import list_inbound, show_ticket

CAROL = "carol@customer.test"
DAVE = "dave@customer.test"
ALICE = "alice@example.com"
BOB = "bob@example.com"
VICTIM = "victim@elsewhere.test"
AUTHSERV = "mx.example.com"
GENUINE = (f"{AUTHSERV}; dkim=pass header.d=example.com; "
           "spf=pass smtp.mailfrom=example.com")


@pytest.fixture
def clock() -> FixedClock:
    # A Tuesday, 10:00 in Los Angeles.
    return FixedClock(datetime(2026, 3, 3, 18, 0, tzinfo=UTC))


def _desk(desks: Callable[..., Desk], relay: Relay, clock: FixedClock | None = None,
          **sections: dict[str, object]) -> Desk:
    agents: dict[str, object] = {"addresses": [ALICE, BOB]}
    agents.update(sections.pop("agents", {}))
    # The test's own client stands in for the border host that writes Authentication-Results.
    return desks(clock=clock, smtp={"port": free_port(), "trusted_relays": ["127.0.0.1"]},
                 outbound={"relay": relay.address}, agents=agents, **sections)


def _tickets(desk: Desk) -> list[Ticket]:
    with transaction(desk.engine) as session:
        return list(session.exec(select(Ticket).order_by(col(Ticket.id))).all())


def _shown(desk: Desk, number: int | None) -> dict[str, Any]:
    assert number is not None
    with transaction(desk.engine) as session:
        shown = show_ticket(session, number)
    assert shown is not None
    return shown


def _senders(shown: dict[str, Any]) -> list[str]:
    return [str(m["from"]) for m in shown["messages"]]


def _to(address: str) -> Callable[[Received], bool]:
    return lambda r: address in r.rcpt_tos


# 3. A forged agent address with the ticket tag in the subject.

def _forged_agent_mail(number: int) -> EmailMessage:
    """From an agent's address, the ticket tag in the subject; no token, no thread
    headers, no Authentication-Results."""
    return request(f"Re: [#{number}] Invoice broken", "Please send your card number to me.",
                   sender=f"Alice Agent <{ALICE}>")


def test_forged_agent_address_with_the_ticket_tag_opens_a_new_ticket(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay, agents={"trust": "authentication-results",
                                       "trusted_authserv_id": AUTHSERV})
    with serving(desk) as port:
        send(port, request("Invoice broken", "The invoice is empty.", sender=CAROL))
        relay.wait_for(1, where=_to(CAROL))
        relay.settle()
        [ticket] = _tickets(desk)
        step = len(relay.received)
        send(port, _forged_agent_mail(ticket.id or 0), sender=ALICE)
        after = relay.settle()[step:]
    assert CAROL not in recipients(after)
    tickets = _tickets(desk)
    assert len(tickets) == 2
    assert _senders(_shown(desk, ticket.id)) == [CAROL]
    assert tickets[1].requester == ALICE


def test_forged_agent_address_with_the_tag_of_a_ticket_the_agent_works_on_opens_a_new_ticket(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay, agents={"trust": "authentication-results",
                                       "trusted_authserv_id": AUTHSERV})
    with serving(desk) as port:
        send(port, request("Invoice broken", "The invoice is empty.", sender=CAROL))
        notice = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,))[0]
        relay.settle()
        [ticket] = _tickets(desk)
        # Alice really answers (authenticated): she takes the ticket.
        answer = reply_to(notice, f"Alice Agent <{ALICE}>", "We are on it.")
        answer["Authentication-Results"] = GENUINE
        send(port, answer, sender=ALICE, recipients=envelope_to(notice))
        relay.settle()
        assert _tickets(desk)[0].assignee == ALICE
        step = len(relay.received)
        send(port, _forged_agent_mail(ticket.id or 0), sender=ALICE)
        after = relay.settle()[step:]
    assert CAROL not in recipients(after)
    assert _senders(_shown(desk, ticket.id)) == [CAROL, ALICE]
    assert len(_tickets(desk)) == 2


# 4. Answers to a ticket closed longer than tickets.reopen_days ago.

def _long_closed(desk: Desk, relay: Relay, clock: FixedClock, port: int) -> tuple[
        Ticket, Received, Received]:
    """A ticket an agent closed, reopen_days and a day ago: (ticket, notice, confirmation)."""
    send(port, request("Exports broken", "CSV exports fail.", sender=f"Carol <{CAROL}>"))
    notice = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,))[0]
    confirmation = relay.wait_for(1, where=_to(CAROL))[0]
    relay.settle()
    send(port, reply_to(notice, f"Alice Agent <{ALICE}>", "#status closed\nFixed in 4.2."),
         sender=ALICE, recipients=envelope_to(notice))
    relay.settle()
    [ticket] = _tickets(desk)
    assert ticket.status == "closed"
    clock.advance(days=desk.settings.tickets.reopen_days + 1)
    return ticket, notice, confirmation


def test_agent_answering_a_long_closed_ticket_stays_on_it(
    desks: Callable[..., Desk], relay: Relay, clock: FixedClock
) -> None:
    desk = _desk(desks, relay, clock)
    with serving(desk) as port:
        ticket, notice, _ = _long_closed(desk, relay, clock, port)
        step = len(relay.received)
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>", "A follow-up: 4.2.1 is out too."),
             sender=ALICE, recipients=envelope_to(notice))
        after = relay.settle()[step:]
    tickets = _tickets(desk)
    assert [t.id for t in tickets] == [ticket.id]
    assert ALICE not in [t.requester for t in tickets]
    assert _senders(_shown(desk, ticket.id)) == [CAROL, ALICE, ALICE]
    assert CAROL in recipients(after)
    for mail in after:
        assert f"[#{ticket.id}]" in mail.message["Subject"]


def test_customer_answering_a_long_closed_ticket_gets_a_new_linked_ticket(
    desks: Callable[..., Desk], relay: Relay, clock: FixedClock
) -> None:
    desk = _desk(desks, relay, clock)
    with serving(desk) as port:
        ticket, _, confirmation = _long_closed(desk, relay, clock, port)
        send(port, reply_to(confirmation, f"Carol <{CAROL}>", "It is broken again."),
             sender=CAROL, recipients=envelope_to(confirmation))
        relay.settle()
    tickets = _tickets(desk)
    assert len(tickets) == 2
    old, new = _shown(desk, ticket.id), _shown(desk, tickets[1].id)
    assert old["status"] == "closed"
    assert _senders(old) == [CAROL, ALICE]
    assert new["requester"] == CAROL
    assert new["linked_ticket"] == ticket.id
    assert _senders(new) == [CAROL]


# 5. A severity tag carried along in the subject of an earlier reply.

def _pages_settle(desk: Desk, pager: Pager) -> int:
    """How many POSTs the pager has had, once the desk has no page left to deliver now."""
    wait_until_sent(desk.engine, desk.clock)
    return pager.calls


def test_carried_severity_tag_does_not_raise_a_lowered_ticket_or_page_again(
    desks: Callable[..., Desk], relay: Relay, clock: FixedClock
) -> None:
    with Pager() as pager:
        desk = _desk(desks, relay, clock, oncall={"webhook": {"url": pager.url,
                                                              "secret": "webhook-secret"}})
        with serving(desk) as port:
            opening = request("Dashboard slow", "Charts take a minute.", sender=CAROL, cc=DAVE)
            send(port, opening)
            relay.wait_for(1, where=_to(CAROL))
            relay.settle()
            # Dave answers Carol's mail (he got it from her directly) and raises it.
            raised = request("Re: [S0] Dashboard slow", "Now it is down for all of us.",
                             sender=DAVE, cc=CAROL, In_Reply_To=opening["Message-ID"],
                             References=opening["Message-ID"])
            send(port, raised)
            pager.wait_for(1)
            to_alice = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,)
                                      and "down for all" in r.text())[0]
            relay.settle()
            assert _tickets(desk)[0].severity == 0
            assert _pages_settle(desk, pager) == 1
            send(port, reply_to(to_alice, ALICE, "#severity S2\nOnly the charts are down."),
                 sender=ALICE, recipients=envelope_to(to_alice))
            relay.settle()
            assert _tickets(desk)[0].severity == 2
            before = _pages_settle(desk, pager)
            # Carol answers Dave's mail: "Re: Re: [S0]", the tag Dave put there.
            carried = request("Re: Re: [S0] Dashboard slow", "Thanks, the tables work now.",
                              sender=CAROL, cc=DAVE, In_Reply_To=raised["Message-ID"],
                              References=f"{opening['Message-ID']} {raised['Message-ID']}")
            send(port, carried)
            relay.settle()
            after = _pages_settle(desk, pager)
    [ticket] = _tickets(desk)
    assert ticket.severity == 2
    assert _senders(_shown(desk, ticket.id))[-1] == CAROL
    assert before == 1
    assert after == before


# 6. Everyone copied on a request is rate-limited.

def test_address_copied_on_many_requests_gets_at_most_the_hourly_limit(
    desks: Callable[..., Desk], relay: Relay, clock: FixedClock
) -> None:
    desk = _desk(desks, relay, clock)
    limit = desk.settings.limits.per_recipient_per_hour
    senders = [f"sender{n}@customer{n}.test" for n in range(limit + 5)]
    with serving(desk) as port:
        for sender in senders:
            send(port, request("You have won", "Claim your prize.", sender=sender, cc=VICTIM))
        received = relay.settle()
    assert len(_tickets(desk)) == len(senders)
    to_victim = [r for r in received if VICTIM in r.rcpt_tos]
    assert 1 <= len(to_victim) <= limit
    # The requesters themselves still hear from us, each once.
    assert sorted(s for r in received for s in r.rcpt_tos if s in senders) == sorted(senders)


# 7. A long display name.

def test_sender_with_a_250_character_display_name_gets_a_ticket(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay)
    name = ("Zoë Ångström-Ørsted of the Department of Very Long Names " * 5)[:250]
    colleague = ("Dave " * 50)[:250]
    assert len(name) == len(colleague) == 250
    message = request("Login fails", "I cannot log in.", sender=email.utils.formataddr((name, CAROL)),
                      cc=email.utils.formataddr((colleague, DAVE)))
    with serving(desk) as port:
        send(port, message)
        relay.wait_for(1, where=_to(CAROL))
        received = relay.settle()
    with transaction(desk.engine) as session:
        stored = list_inbound(session)
    assert [r for r in stored if r["kind"] == "quarantined"] == []
    [ticket] = _tickets(desk)
    assert ticket.requester == CAROL
    assert name.startswith(ticket.requester_name) and ticket.requester_name
    assert [r.rcpt_tos for r in received if CAROL in r.rcpt_tos] == [(CAROL, DAVE)]
    assert [r for r in received if r.rcpt_tos == (ALICE,)]


# 8. #unfollow from the requester.

def test_requester_who_unfollowed_gets_no_status_notice(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay)
    with serving(desk) as port:
        send(port, request("Slow search", "Search takes 30 s.", sender=CAROL, cc=DAVE))
        confirmation = relay.wait_for(1, where=_to(CAROL))[0]
        notice = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,))[0]
        relay.settle()
        send(port, reply_to(confirmation, CAROL, "#unfollow"), sender=CAROL,
             recipients=envelope_to(confirmation))
        relay.settle()
        step = len(relay.received)
        send(port, reply_to(notice, ALICE, "#status solved\nSearch is fast again."),
             sender=ALICE, recipients=envelope_to(notice))
        after = relay.settle()[step:]
    assert CAROL not in recipients(after)
    assert DAVE in recipients(after)  # the reply still reaches who follows
    [ticket] = _tickets(desk)
    assert ticket.status == "solved"


# 10. A Message-ID folded over two lines, without angle brackets.

@pytest.mark.parametrize(("folded", "kept"), [
    (b"Message-ID:\r\n 20260303101500.4711@mail.customer.test\r\n", True),
    (b"Message-ID: 20260303101500.4711\r\n\t@mail.customer.test\r\n", False),
], ids=["before-the-id", "inside-the-id"])
def test_folded_message_id_without_brackets_makes_a_ticket(
    desks: Callable[..., Desk], relay: Relay, folded: bytes, kept: bool
) -> None:
    desk = _desk(desks, relay)
    raw = (
        b"From: Carol <carol@customer.test>\r\n"
        b"To: support@example.com\r\n"
        b"Subject: Printer offline\r\n"
        b"Date: Tue, 03 Mar 2026 10:15:00 -0800\r\n"
        + folded
        + b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"The printer has been offline since noon.\r\n"
    )
    with serving(desk) as port:
        assert send(port, raw, sender=CAROL) == {}
        assert send(port, raw, sender=CAROL) == {}  # the same mail again is stored once
        confirmation = relay.wait_for(1, where=_to(CAROL))[0]
        relay.settle()
    with transaction(desk.engine) as session:
        stored = list_inbound(session)
    assert [r for r in stored if r["kind"] == "quarantined"] == []
    [ticket] = _tickets(desk)
    assert ticket.subject == "Printer offline"
    shown = _shown(desk, ticket.id)
    [first] = shown["messages"]
    assert "offline since noon" in first["text"]
    # What we send back threads under a well-formed id, or under none.
    answered = confirmation.message["In-Reply-To"]
    assert answered is None or re.fullmatch(r"<[^\s<>]+>", str(answered))
    if kept:  # folding white space before the id is no part of it (RFC 5322 3.2.2)
        assert first["message_id"] == "20260303101500.4711@mail.customer.test"
        assert answered == "<20260303101500.4711@mail.customer.test>"
    reply_address_shown = email.utils.parseaddr(confirmation.message["Reply-To"])[1]
    assert reply_address_shown == reply_address(ticket.id or 0, desk.settings)
    assert len([r for r in relay.received if CAROL in r.rcpt_tos]) == 1
