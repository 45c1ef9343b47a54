"""Spam through Cc: a mail copying a thousand strangers mails a few of them, never all."""

from __future__ import annotations

from collections.abc import Callable

from sqlmodel import func, select

from tests.harness import Received, Relay, send, serving
from tests.servers import free_port
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Message, Participant, Ticket

ALICE = "alice@example.com"
VICTIMS = [f"victim{i}@third-party.test" for i in range(1000)]


def _spam(i: int) -> bytes:
    # Written by hand: folding a thousand addresses with the email package takes a second.
    cc = ",\r\n ".join(VICTIMS)
    return (f"From: spammer{i}@evil.test\r\nTo: support@example.com\r\nCc: {cc}\r\n"
            f"Subject: Cheap pills {i}\r\nMessage-ID: <spam-{i}@evil.test>\r\n"
            f"Date: Mon, 30 Nov 2026 05:00:00 +0000\r\n\r\nBuy now at evil.test\r\n").encode()


def _confirmation(mail: Received) -> bool:
    return mail.message["Auto-Submitted"] == "auto-replied"


def _deliveries(mails: list[Received]) -> int:
    return sum(len(m.rcpt_tos) for m in mails)


def test_a_thousand_copied_get_no_confirmation_beyond_the_ceiling(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE]})
    with serving(desk) as port:
        send(port, _spam(0), sender="spammer0@evil.test")
        (notice,) = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,))
        (confirmation,) = relay.wait_for(1, where=_confirmation)
        for i in range(1, 13):
            send(port, _spam(i), sender=f"spammer{i}@evil.test")
        relay.wait_for(13, timeout=60, where=lambda r: r.rcpt_tos == (ALICE,))
        relay.wait_for(13, timeout=60, where=_confirmation)
        received = relay.settle()
    # The first mail: the requester and the first 20 copied, no more.
    assert len(confirmation.rcpt_tos) == 21
    assert set(confirmation.rcpt_tos) == {"spammer0@evil.test", *VICTIMS[:20]}
    # All 13 mails together: at most 13 x 21 confirmations (fewer: each victim also has
    # an hourly limit of its own), and the agents' notices.
    confirmations = [m for m in received if _confirmation(m)]
    assert len(confirmations) == 13
    assert _deliveries(confirmations) <= 13 * 21
    assert _deliveries(received) < 10_000
    assert {a for m in received for a in m.rcpt_tos} & set(VICTIMS[20:]) == set()
    # The rest are named to the agents, and kept on the message.
    text = notice.text()
    assert "980 more copied addresses, over the limit of 20" in text
    assert VICTIMS[20] in text and VICTIMS[219] in text
    with transaction(desk.engine) as session:
        ticket = session.exec(select(Ticket).where(Ticket.requester == "spammer0@evil.test")).one()
        people = session.exec(select(func.count()).select_from(Participant)
                              .where(Participant.ticket_id == ticket.id)).one()
        request_row = session.exec(select(Message).where(Message.ticket_id == ticket.id)).one()
        assert people == 21
        assert VICTIMS[999] in request_row.recipients


def test_the_overall_ceiling_holds_within_one_mail_and_is_on_by_default(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    assert desks().settings.limits.overall_per_hour == 2000  # with no [limits] at all
    # An operator who lifts the copied ceiling still has the hourly one.
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE]}, support={"max_copied": 0},
                 limits={"overall_per_hour": 300})
    with serving(desk) as port:
        for i in range(3):
            send(port, _spam(i), sender=f"spammer{i}@evil.test")
        relay.wait_for(3, timeout=60, where=lambda r: r.rcpt_tos == (ALICE,))
        (confirmation,) = relay.wait_for(1, where=_confirmation)
        received = relay.settle()
    assert [m for m in received if _confirmation(m)] == [confirmation]
    assert len(confirmation.rcpt_tos) == 300
