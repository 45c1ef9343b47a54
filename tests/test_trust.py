"""Hostile mail, end to end over SMTP with a relay: what a forger, a stranger or a
lookalike can and cannot make the desk do."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlmodel import col, select

from tests.harness import Received, Relay, request, send, serving
from tests.servers import dkim_key, free_port
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
BORDER = "127.0.0.1"  # the operator's border mail server, which writes Authentication-Results
OUTSIDE = "127.0.0.2"  # anyone on the internet, talking to serve directly


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


# Forged agent powers: a header naming our border host, written by the sender.

AUTHSERV = "mx.example.com"
PASSED = f"{AUTHSERV}; dkim=pass header.d=example.com; spf=pass smtp.mailfrom=example.com"


def _agent_mail(number: int, desk: Desk, body: str, results: str = "") -> Any:
    from ticketing.conversation import reply_address

    message = request(f"Re: [#{number}] Invoice wrong", body, sender=f"Alice Agent <{ALICE}>",
                      to=reply_address(number, desk.settings))
    if results:
        message["Authentication-Results"] = results
    return message


def test_authentication_results_from_outside_the_border_grant_no_agent_powers(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay, smtp={"trusted_relays": [f"{BORDER}/32"]},
                 agents={"trust": "authentication-results", "trusted_authserv_id": AUTHSERV})
    with serving(desk) as port:
        ticket, _, _ = _opened(desk, relay, port)
        number = ticket.id or 0
        forged = _agent_mail(number, desk, "#status pending\nSend us your card number.", PASSED)
        send(port, forged, sender=ALICE, recipients=[forged["To"]], source=OUTSIDE)
        relay.settle()
        [after] = _tickets(desk)
        assert (after.status, after.assignee) == ("open", None)
        # The same header handed over by the border host is believed.
        genuine = _agent_mail(number, desk, "#status pending\nWe are on it.", PASSED)
        send(port, genuine, sender=ALICE, recipients=[genuine["To"]], source=BORDER)
        relay.settle()
    [ticket] = _tickets(desk)
    assert (ticket.status, ticket.assignee) == ("pending", ALICE)
    texts = [m["text"] for m in _shown(desk, number)["messages"]]
    # The forged mail is kept as a customer's words, its command plain text.
    assert texts[1].startswith("#status pending")
    assert texts[2].strip() == "We are on it."


# agents.trust = "dkim": serve checks the signature itself, keys from a DNS of the test's own.

@pytest.fixture(scope="module")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[bytes, bytes]]]:
    folder: Path = tmp_path_factory.mktemp("dkim")
    yield {domain: dkim_key(folder, domain) for domain in ("example.com", "evil.test")}


def _signed(message: Any, domain: str, key: bytes) -> bytes:
    raw: bytes = message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    signature: bytes = dkim.sign(raw, b"s1", domain.encode(), key,
                                 include_headers=[b"from", b"to", b"subject", b"message-id"])
    return signature + raw


def test_dkim_trust_believes_only_a_valid_signature_of_the_agents_domain(
    desks: Callable[..., Desk], relay: Relay, dkim_keys: dict[str, tuple[bytes, bytes]]
) -> None:
    published = {f"s1._domainkey.{d}.".encode(): txt for d, (_, txt) in dkim_keys.items()}
    asked: list[bytes] = []

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        asked.append(name)
        return published.get(name)

    desk = _desk(desks, relay, txt_lookup=lookup, agents={"trust": "dkim"})
    example_key, evil_key = dkim_keys["example.com"][0], dkim_keys["evil.test"][0]
    with serving(desk) as port:
        ticket, _, _ = _opened(desk, relay, port)
        number = ticket.id or 0
        attacks = [
            # A results header of any host's: nobody checked anything.
            _agent_mail(number, desk, "#status pending\nForged 1.", PASSED).as_bytes(),
            # A good signature, of the attacker's own domain.
            _signed(_agent_mail(number, desk, "#status pending\nForged 2."), "evil.test", evil_key),
            # Our domain's signature on another text.
            _signed(_agent_mail(number, desk, "#status solved\nForged 3."), "example.com",
                    example_key).replace(b"Forged 3.", b"Forged 4."),
        ]
        for raw in attacks:
            send(port, raw, sender=ALICE, recipients=[_agent_mail(number, desk, "")["To"]],
                 source=OUTSIDE)
        relay.settle()
        [after] = _tickets(desk)
        assert (after.status, after.assignee) == ("open", None)
        genuine = _signed(_agent_mail(number, desk, "#status pending\nWe are on it."),
                          "example.com", example_key)
        send(port, genuine, sender=ALICE, recipients=[_agent_mail(number, desk, "")["To"]],
             source=OUTSIDE)
        relay.settle()
    [ticket] = _tickets(desk)
    assert (ticket.status, ticket.assignee) == ("pending", ALICE)
    assert b"s1._domainkey.example.com." in asked
    texts = [m["text"].strip() for m in _shown(desk, number)["messages"]]
    assert texts[-1] == "We are on it."
    assert [t.splitlines()[-1] for t in texts[1:4]] == ["Forged 1.", "Forged 2.", "Forged 4."]


# Lookalikes of our own mail, and a Message-ID taken by someone else first.

def test_another_desks_loop_header_and_a_lookalike_message_id_make_tickets(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay)
    senders = [CAROL, DAVE, "erin@customer.test"]
    with serving(desk) as port:
        # A customer whose own desk (mailgate too) marks what it sends.
        send(port, request("Invoice wrong", "From our desk.", sender=CAROL,
                           X_Mailgate_Loop="support@customer.test"))
        # Message-IDs shaped like ours: the old shape, and the new one signed wrongly.
        for sender, lookalike in (
            (DAVE, "mailgate.0123456789abcdef0123456789abcdef@example.com"),
            ("erin@customer.test", "mailgate.0123456789abcdef01234567.0123456789abcdef@example.com"),
        ):
            message = request("Invoice wrong", "Lookalike.", sender=sender)
            message.replace_header("Message-ID", f"<{lookalike}>")
            send(port, message, sender=sender)
        confirmations = relay.wait_for(3, where=lambda r: r.rcpt_tos[0] in senders)
        relay.settle()
        # Our own mail coming back is still ours: no ticket, no answer.
        step = len(relay.received)
        send(port, confirmations[0].raw, sender=CAROL)
        assert relay.settle()[step:] == []
    assert sorted(r.rcpt_tos[0] for r in confirmations) == sorted(senders)
    assert sorted(t.requester for t in _tickets(desk)) == sorted(senders)


def test_a_message_id_sent_first_by_someone_else_does_not_swallow_the_real_mail(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = _desk(desks, relay)
    real = request("Invoice wrong", "My account number is 4711-0815.", sender=f"Carol <{CAROL}>")
    with serving(desk) as port:
        taken = request("Hello", "Nothing to see.", sender=EVE)
        taken.replace_header("Message-ID", real["Message-ID"])
        send(port, taken, sender=EVE)
        relay.wait_for(1, where=_to(EVE))
        send(port, real, sender=CAROL)
        send(port, real, sender=CAROL)  # the MTA's retry of the same mail is stored once
        relay.wait_for(1, where=_to(CAROL))
        relay.settle()
        # Dave answers Carol's mail with "reply all": it must not reach Eve's ticket.
        answer = request("Re: Invoice wrong", "Mine too, account 4711-0816.", sender=DAVE,
                         cc=CAROL, In_Reply_To=real["Message-ID"], References=real["Message-ID"])
        send(port, answer, sender=DAVE)
        relay.settle()
    assert len([r for r in relay.received if r.rcpt_tos[0] == CAROL and "[#" in
                r.message["Subject"] and "Re:" not in r.message["Subject"]]) == 1
    assert not [r for r in relay.received if EVE in r.rcpt_tos and "4711" in r.text()]
    tickets = _tickets(desk)
    assert [t.requester for t in tickets][:2] == [EVE, CAROL]
    assert [m["from"] for m in _shown(desk, tickets[0].id)["messages"]] == [EVE]
