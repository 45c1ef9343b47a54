"""Replies reach everyone on the ticket, once, threaded; agents work from their mail client."""

from __future__ import annotations

import email
import email.policy
import email.utils
from collections.abc import Callable
from email.message import EmailMessage

import pytest
from sqlmodel import select

from tests.harness import Received, Relay, request, send, serving
from tests.servers import corpus_dir, free_port
from ticketing.conversation import reply_token
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Ticket
from ticketing.reports import show_ticket

CAROL = "carol@customer.test"
DAVE = "dave@customer.test"
ERIN = "erin@customer.test"
FRANK = "frank@customer.test"
ALICE = "alice@example.com"
BOB = "bob@example.com"


@pytest.fixture
def desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE, BOB]})


def reply_to(received: Received, sender: str, body: str, cc: str = "",
             subject: str | None = None) -> EmailMessage:
    """A reply built the way mail clients build it: to Reply-To, threaded, the original quoted."""
    original = received.message
    message = EmailMessage()
    message["From"] = sender
    message["To"] = original["Reply-To"]
    if cc:
        message["Cc"] = cc
    message["Subject"] = subject or f"Re: {original['Subject']}"
    message["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2].strip(">"))
    message["In-Reply-To"] = original["Message-ID"]
    message["References"] = f"{original.get('References', '')} {original['Message-ID']}".strip()
    quoted = "\n".join("> " + line for line in received.text().splitlines())
    message.set_content(f"{body}\n\nOn Tue, 3 Mar 2026, Example Support wrote:\n{quoted}\n")
    return message


def envelope_to(received: Received) -> list[str]:
    return [email.utils.parseaddr(received.message["Reply-To"])[1]]


def recipients(mails: list[Received]) -> list[str]:
    return sorted(r for mail in mails for r in mail.rcpt_tos)


def test_the_whole_story_reaches_everyone_once(desk: Desk, relay: Relay) -> None:
    with serving(desk) as port:
        send(port, request("[S2] Exports are slow", "Exports take ten minutes.",
                           sender=f"Carol <{CAROL}>", cc=f"{DAVE}, {ERIN}"))
        first = relay.wait_for(3)
        relay.settle()
        assert recipients(relay.received) == sorted([CAROL, DAVE, ERIN, ALICE, BOB])
        notice = next(m for m in first if m.rcpt_tos == (ALICE,))
        assert "Exports take ten minutes." in notice.text()

        # Alice answers the notice from her own client: public, she takes the ticket.
        step = len(relay.received)
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>", "We are looking into it."),
             sender=ALICE, recipients=envelope_to(notice))
        relay.settle()
        answers = relay.received[step:]
        assert recipients(answers) == sorted([CAROL, DAVE, ERIN])
        for mail in answers:
            assert mail.message["From"].startswith("Alice Agent via Example Support")
            assert mail.message["In-Reply-To"]
            assert "We are looking into it." in mail.text()
        to_dave = next(m for m in answers if m.rcpt_tos == (DAVE,))

        # Dave answers with "reply all" and adds his manager, who got it directly.
        step = len(relay.received)
        send(port, reply_to(to_dave, DAVE, "Also happens for PDF exports.", cc=FRANK),
             sender=DAVE, recipients=envelope_to(to_dave))
        relay.settle()
        assert recipients(relay.received[step:]) == sorted([ALICE, CAROL, ERIN])

        # An internal note reaches the agents only.
        step = len(relay.received)
        send(port, reply_to(to_dave, ALICE, "#note\nThe export queue is stuck again."),
             sender=ALICE, recipients=envelope_to(to_dave))
        relay.settle()
        assert recipients(relay.received[step:]) == [BOB]

        # Solved: the customers hear of it, and the manager follows now.
        step = len(relay.received)
        send(port, reply_to(to_dave, ALICE, "#status solved\nThe queue is running again."),
             sender=ALICE, recipients=envelope_to(to_dave))
        relay.settle()
        solved = relay.received[step:]
        assert recipients(solved).count(CAROL) == 1  # the answer, carrying the status
        assert sorted(set(recipients(solved))) == sorted([CAROL, DAVE, ERIN, FRANK])
        assert ALICE not in recipients(solved)

        # The customer answers: the ticket reopens.
        step = len(relay.received)
        last = next(m for m in solved if m.rcpt_tos == (CAROL,))
        send(port, reply_to(last, CAROL, "Still slow for me, sorry."),
             sender=CAROL, recipients=envelope_to(last))
        relay.settle()
        reopened = relay.received[step:]
        # Nothing to Carol about her own mail; the others get it, saying it reopened.
        assert sorted(recipients(reopened)) == sorted([ALICE, DAVE, ERIN, FRANK])
        assert all("This reply reopened ticket" in m.text() for m in reopened)

    with transaction(desk.engine) as session:
        ticket = session.exec(select(Ticket)).one()
        shown = show_ticket(session, ticket.id)
    assert shown is not None
    assert shown["status"] == "open"
    assert shown["assignee"] == ALICE
    assert FRANK in shown["followers"]
    kinds = [m["kind"] for m in shown["messages"]]
    assert kinds == ["request", "reply", "reply", "note", "reply", "reply"]
    texts = [m["text"] for m in shown["messages"]]
    assert texts[1] == "We are looking into it."
    assert texts[2] == "Also happens for PDF exports."
    assert texts[3] == "The export queue is stuck again."
    assert "wrote:" in shown["messages"][1]["full_text"]
    # Every mail we sent threads: one conversation per ticket in every reader's client.
    # Each reader's next mail answers one they already hold and names them all.
    held: dict[str, list[str]] = {}
    for mail in relay.received:
        assert f"[#{ticket.id}]" in mail.message["Subject"]
        for reader in mail.rcpt_tos:
            before = held.setdefault(reader, [])
            if before:
                if reader == mail.rcpt_tos[0]:
                    assert mail.message["In-Reply-To"] == before[-1]
                assert set(before) <= set(mail.message["References"].split())
            before.append(mail.message["Message-ID"])


def test_stranger_with_ticket_number_but_no_token_opens_new_ticket(desk: Desk, relay: Relay) -> None:
    with serving(desk) as port:
        send(port, request("Billing question", "How do I pay?", sender=CAROL))
        relay.wait_for(1)
        with transaction(desk.engine) as session:
            number = session.exec(select(Ticket)).one().id
        assert number is not None
        forged = f"support+{number}-{'0' * 16}@example.com"
        send(port, request(f"Re: [#{number}] Billing question", "Let me in",
                           sender="mallory@evil.test", to=forged), recipients=[forged])
        send(port, request(f"Re: [#{number}] Billing question", "Me too",
                           sender="mallory@evil.test"))
        relay.settle()
    with transaction(desk.engine) as session:
        tickets = session.exec(select(Ticket).order_by(Ticket.id)).all()
        first = show_ticket(session, number)
    assert len(tickets) == 3
    assert first is not None and len(first["messages"]) == 1
    assert "mallory@evil.test" not in first["participants"]


def test_colleague_replying_from_another_address_with_the_token_joins(desk: Desk, relay: Relay) -> None:
    with serving(desk) as port:
        send(port, request("VPN drops", "Every hour.", sender=CAROL, cc=DAVE))
        confirmation = relay.wait_for(1)[0]
        with transaction(desk.engine) as session:
            number = session.exec(select(Ticket)).one().id
        assert number is not None
        token = f"support+{reply_token(number, desk.settings.support.secret)}@example.com"
        # Dave answers the confirmation he got, from his other account (a mail from
        # outside the ticket with no thread headers stays with the agents: test_trust).
        message = reply_to(confirmation, "dave.private@home.test", "Same here, from my other account.")
        assert envelope_to(confirmation) == [token]
        send(port, message, recipients=[token])
        relay.settle()
    with transaction(desk.engine) as session:
        assert len(session.exec(select(Ticket)).all()) == 1
        shown = show_ticket(session, number)
    assert shown is not None
    assert [m["from"] for m in shown["messages"]] == [CAROL, "dave.private@home.test"]
    assert "dave.private@home.test" in shown["participants"]


def test_outlook_reply_without_in_reply_to_joins_by_tag_when_sender_takes_part(
    desk: Desk, relay: Relay
) -> None:
    with serving(desk) as port:
        send(port, request("Printer offline", "Since noon.", sender=CAROL))
        relay.wait_for(1)
        with transaction(desk.engine) as session:
            number = session.exec(select(Ticket)).one().id
        send(port, request(f"AW: [#{number}] Printer offline", "Works again, thanks!",
                           sender=CAROL))
        relay.settle()
    with transaction(desk.engine) as session:
        assert len(session.exec(select(Ticket)).all()) == 1
        shown = show_ticket(session, number)
    assert shown is not None
    assert shown["subject"] == "Printer offline"
    assert [m["text"] for m in shown["messages"]][-1] == "Works again, thanks!"


def test_unfollow_stops_further_mail(desk: Desk, relay: Relay) -> None:
    with serving(desk) as port:
        send(port, request("Slow search", "Search takes 30 s.", sender=CAROL, cc=DAVE))
        first = relay.wait_for(1, where=lambda r: CAROL in r.rcpt_tos)[0]
        relay.settle()
        send(port, reply_to(first, DAVE, "#unfollow"), sender=DAVE, recipients=envelope_to(first))
        relay.settle()
        step = len(relay.received)
        send(port, reply_to(first, CAROL, "Any news?"), sender=CAROL, recipients=envelope_to(first))
        relay.settle()
        assert DAVE not in recipients(relay.received[step:])
        assert sorted(recipients(relay.received[step:])) == sorted([ALICE, BOB])


def test_bad_agent_command_gets_a_private_error_not_a_public_reply(desk: Desk, relay: Relay) -> None:
    with serving(desk) as port:
        send(port, request("Quota", "We hit the quota.", sender=CAROL))
        notice = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,))[0]
        relay.settle()
        step = len(relay.received)
        send(port, reply_to(notice, ALICE, "#status finished\nAll done."), sender=ALICE,
             recipients=envelope_to(notice))
        relay.settle()
        after = relay.received[step:]
    assert recipients(after) == [ALICE]
    assert "finished" in after[0].text()


def _rethread(raw: bytes, sender: str, in_reply_to: str, references: list[str],
              subject: str | None = None) -> bytes:
    """A real client's mail made into an answer to one of ours: only the addressing and
    threading headers change, the body and structure stay as the client built them."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    for name in ("From", "To", "Cc", "In-Reply-To", "References", "Delivered-To"):
        del message[name]
    message["From"] = sender
    message["To"] = "support@example.com"
    message["In-Reply-To"] = in_reply_to
    message["References"] = " ".join(references)
    if subject is not None:
        del message["Subject"]
        message["Subject"] = subject
    return message.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))


def test_replies_as_real_clients_build_them_land_in_the_ticket(desk: Desk, relay: Relay) -> None:
    corpus = corpus_dir()
    gmail = (corpus / "django-mailbox" / "message_with_long_content.eml").read_bytes()
    zimbra_forward = (corpus / "php-mime-mail-parser" / "issue158a").read_bytes()
    with serving(desk) as port:
        send(port, request("Invoices missing", "March invoices are missing.", sender=CAROL))
        confirmation = relay.wait_for(1, where=lambda r: CAROL in r.rcpt_tos)[0]
        ours = confirmation.message["Message-ID"]
        # Gmail: a long References chain with ours somewhere in the middle.
        chain = [f"<CAAq{i}x@mail.gmail.com>" for i in range(30)]
        send(port, _rethread(gmail, CAROL, chain[-1], [*chain[:15], ours, *chain[15:]]),
             sender=CAROL)
        # A reply that changed the subject, answering our mail directly.
        send(port, _rethread(gmail, CAROL, ours, [ours], subject="Totally different subject")
             .replace(b"CAAqFzoDNo1JC", b"CAAqFzoDNo2JC"), sender=CAROL)
        # A forward (Zimbra, with the forwarded mail enclosed) that keeps our References.
        send(port, _rethread(zimbra_forward, CAROL, ours, [ours]), sender=CAROL)
        relay.settle()
    with transaction(desk.engine) as session:
        tickets = session.exec(select(Ticket)).all()
        shown = show_ticket(session, tickets[0].id or 0)
    assert len(tickets) == 1
    assert shown is not None
    assert shown["subject"] == "Invoices missing"  # a changed subject does not rename it
    assert [m["kind"] for m in shown["messages"]] == ["request", "reply", "reply", "reply"]
    assert shown["messages"][3]["attachments"]  # the enclosed mail came along


def test_a_long_request_comes_back_in_part_and_the_agents_get_it_whole(
        desk: Desk, relay: Relay) -> None:
    log = "".join(f"line {n:05d} of the export log: worker 7 timed out\n" for n in range(1, 5001))
    with serving(desk) as port:
        send(port, request("[S2] Exports fail", "Every export fails. The log:\n\n" + log,
                           sender=f"Carol <{CAROL}>"))
        first = relay.wait_for(3)
        confirmation = next(m for m in first if m.rcpt_tos == (CAROL,))
        notice = next(m for m in first if m.rcpt_tos == (ALICE,))

        # The customer has what they sent: the confirmation quotes its start, and says so.
        text = confirmation.text()
        assert "> Every export fails. The log:" in text
        assert "line 00050 of the export log" in text
        assert "line 05000" not in text
        assert "more lines, kept with the ticket]" in text
        html = confirmation.message.get_body(("html",))
        assert html is not None
        assert "line 00050" in html.get_content() and "line 05000" not in html.get_content()
        assert len(confirmation.raw) < 40_000 < len(log)
        # The agents work from the whole request.
        assert "line 05000 of the export log" in notice.text()

        # Every mail after it quotes it in part too, however many follow.
        step = len(relay.received)
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>", "Which export, please?"),
             sender=ALICE, recipients=envelope_to(notice))
        relay.settle()
        answer = next(m for m in relay.received[step:] if m.rcpt_tos == (CAROL,))
        assert "Which export, please?" in answer.text()
        assert "line 00001 of the export log" in answer.text()
        assert "line 05000" not in answer.text()
        assert len(answer.raw) < 40_000
    with transaction(desk.engine) as session:
        ticket = session.exec(select(Ticket)).one()
        shown = show_ticket(session, ticket.id)
    assert shown is not None
    assert "line 05000 of the export log" in shown["messages"][0]["text"]
