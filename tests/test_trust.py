"""Hostile mail, end to end over SMTP with a relay: what a forger, a stranger or a
lookalike can and cannot make the desk do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlmodel import col, select

from tests.harness import Received, Relay, request, send, serving
from tests.servers import free_port
from tests.test_threads import envelope_to, recipients, reply_to
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Ticket
from ticketing.reports import show_ticket

CAROL = "carol@customer.test"
DAVE = "dave@customer.test"
EVE = "eve@evil.test"
ALICE = "alice@example.com"
BOB = "bob@example.com"


def _desk(desks: Callable[..., Desk], relay: Relay, **sections: dict[str, object]) -> Desk:
    agents: dict[str, object] = {"addresses": [ALICE, BOB]}
    agents.update(sections.pop("agents", {}))
    smtp: dict[str, object] = {"port": free_port()}
    smtp.update(sections.pop("smtp", {}))
    return desks(smtp=smtp, outbound={"relay": relay.address}, agents=agents, **sections)


def _tickets(desk: Desk) -> list[Ticket]:
    with transaction(desk.engine) as session:
        return list(session.exec(select(Ticket).order_by(col(Ticket.id))).all())


def _shown(desk: Desk, number: int | None) -> dict[str, Any]:
    assert number is not None
    with transaction(desk.engine) as session:
        shown = show_ticket(session, number)
    assert shown is not None
    return shown


def _to(address: str) -> Callable[[Received], bool]:
    return lambda r: address in r.rcpt_tos


def _opened(desk: Desk, relay: Relay, port: int, sender: str = CAROL,
            body: str = "Invoice 7 is wrong. My account number is 4711-0815.",
            ) -> tuple[Ticket, Received, Received]:
    """A request from `sender`: (the ticket, its confirmation, Alice's notice)."""
    send(port, request("Invoice wrong", body, sender=sender))
    confirmation = relay.wait_for(1, where=_to(sender))[0]
    notice = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,))[0]
    relay.settle()
    [ticket] = _tickets(desk)
    return ticket, confirmation, notice


# Hijack by a forged From: the subject tag and the requester's address, nothing else.

def _forged_from_requester(number: int, body: str, cc: str = "") -> Any:
    """From the requester, the ticket tag in the subject, to the plain support address:
    no reply token, no In-Reply-To or References."""
    return request(f"Re: [#{number}] Invoice wrong", body, sender=f"Carol <{CAROL}>", cc=cc)


def test_forged_from_with_the_ticket_tag_adds_no_follower(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay)
    with serving(desk) as port:
        ticket, _, notice = _opened(desk, relay, port)
        send(port, _forged_from_requester(ticket.id or 0, "Please copy my accountant.", cc=EVE),
             sender=EVE)
        relay.settle()
        step = len(relay.received)
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>", "Your account 4711-0815 is fixed."),
             sender=ALICE, recipients=envelope_to(notice))
        relay.wait_for(step + 1)
        answer = relay.settle()[step:]
    assert CAROL in recipients(answer)
    assert EVE not in recipients(answer)
    assert all(EVE not in r.rcpt_tos for r in relay.received)
    # The forged mail is on the thread all the same, for the agents to judge.
    shown = _shown(desk, ticket.id)
    assert [m["text"].strip() for m in shown["messages"]][1] == "Please copy my accountant."
    assert EVE not in shown["participants"]


def test_forged_unfollow_with_the_ticket_tag_keeps_the_requester_on_the_ticket(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay)
    with serving(desk) as port:
        ticket, confirmation, notice = _opened(desk, relay, port)
        send(port, _forged_from_requester(ticket.id or 0, "#unfollow"), sender=EVE)
        relay.settle()
        step = len(relay.received)
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>", "Fixed: a new invoice is out."),
             sender=ALICE, recipients=envelope_to(notice))
        relay.wait_for(step + 1)
        answer = relay.settle()[step:]
        assert recipients(answer) == [CAROL]
        # Carol herself can still leave, by answering a mail of the thread.
        send(port, reply_to(confirmation, f"Carol <{CAROL}>", "#unfollow"), sender=CAROL,
             recipients=envelope_to(confirmation))
        relay.settle()
        step = len(relay.received)
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>", "#status solved\nDone."),
             sender=ALICE, recipients=envelope_to(notice))
        after = relay.settle()[step:]
    assert CAROL not in recipients(after)


# The ticket trick: a stranger's ticket address used to sign up at another service.

def _verification(to: str) -> Any:
    """What a service sends to a new sign-up: no automatic-mail marks at all."""
    return request("Confirm your address", "Your verification code is 538-211.",
                   sender="Chat Service <noreply@chat.test>", to=to)


def test_service_mail_to_a_strangers_reply_address_stays_with_the_agents(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay)
    with serving(desk) as port:
        ticket, confirmation, notice = _opened(desk, relay, port, sender=EVE, body="Hello?")
        step = len(relay.received)
        send(port, _verification(envelope_to(confirmation)[0]), sender="bounces@chat.test",
             recipients=envelope_to(confirmation))
        relay.wait_for(step + 1)
        told = relay.settle()[step:]
        # The agents see it; the stranger who opened the ticket does not.
        assert recipients(told) == [ALICE, BOB]
        assert all("538-211" in r.text() for r in told)
        # Nor later, quoted below an agent's answer.
        step = len(relay.received)
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>", "How can we help?"),
             sender=ALICE, recipients=envelope_to(notice))
        relay.wait_for(step + 1)
        # A colleague of the requester (the same domain) is passed on as ever.
        colleague = request(f"Re: [#{ticket.id}] Invoice wrong", "I am Eve's colleague.",
                            sender="mallory@evil.test", to=envelope_to(confirmation)[0])
        send(port, colleague, sender="mallory@evil.test", recipients=envelope_to(confirmation))
        relay.wait_for(1, where=lambda r: EVE in r.rcpt_tos and "colleague" in r.text())
        relay.settle()
    assert not [r for r in relay.received if EVE in r.rcpt_tos and "538-211" in r.text()]
    shown = _shown(desk, ticket.id)
    kept = [m for m in shown["messages"] if "538-211" in m["text"]]
    assert [m["from"] for m in kept] == ["noreply@chat.test"]
    assert kept[0]["note"]
    assert "noreply@chat.test" not in shown["participants"]
    assert shown["status"] == "open"
