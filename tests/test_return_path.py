"""Each mail we send has its own return path; only a bounce to it marks its one reader."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlmodel import col, select

from tests.harness import Relay, request, send, serving
from tests.servers import free_port
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Account, Message
from ticketing.returnpath import bounce_address, outbox_id_of

EVE = "eve@attacker.test"
VICTIM = "victim@customer.test"


def _dsn(failed: str, message_id: str, to: str) -> bytes:
    """A delivery status report as the attacker writes it: "failed" for good."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.attacker.test>\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-{uuid.uuid4().hex}@mx.attacker.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.customer.test\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {message_id}\r\n"
        "--b--\r\n"
    ).encode()


def _bouncing(desk: Desk) -> list[str]:
    with transaction(desk.engine) as session:
        return sorted(session.exec(select(Account.address).where(
            col(Account.bouncing_since).is_not(None))).all())


@pytest.mark.parametrize("sent_to", ["support", "return-path"])
def test_a_forged_bounce_about_a_copied_reader_silences_nobody(
    desks: Callable[..., Desk], relay: Relay, sent_to: str
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address})
    with serving(desk) as port:
        # The attacker opens a ticket with the victim copied, and reads the confirmation.
        send(port, request("Hello", "A question.", sender=EVE, cc=VICTIM), sender=EVE)
        confirmation = relay.wait_for(1, where=lambda r: EVE in r.rcpt_tos)[0]
        # Its envelope sender is the mail's own return path, not the support address.
        assert outbox_id_of(confirmation.mail_from, desk.settings) is not None
        # Then sends a report that the victim's address failed for good.
        to = "support@example.com" if sent_to == "support" else confirmation.mail_from
        dsn = _dsn(VICTIM, confirmation.message["Message-ID"], to)
        assert send(port, dsn, "<>", [to]) == {}
        with transaction(desk.engine) as session:
            filed = session.exec(select(Message.kind).where(
                col(Message.subject).startswith("Undelivered"))).all()
        assert filed == ["bounce"]
        assert _bouncing(desk) == []
        # The victim writes in and gets the confirmation.
        send(port, request("My own question", "Please.", sender=VICTIM), sender=VICTIM)
        mine = relay.wait_for(1, where=lambda r: r.rcpt_tos == (VICTIM,))
    assert [m.message["Subject"] for m in mine] == ["[#2] My own question"]
    assert _bouncing(desk) == []


def test_a_return_path_cannot_be_guessed_or_moved_to_another_mail(
    desks: Callable[..., Desk]
) -> None:
    desk = desks()
    real = bounce_address(41, desk.settings)
    assert real.startswith("support+bounce-41-") and real.endswith("@example.com")
    assert outbox_id_of(real, desk.settings) == 41
    assert outbox_id_of(f"<{real.upper()}>", desk.settings) == 41
    forged = real.replace("bounce-41-", "bounce-42-")
    assert outbox_id_of(forged, desk.settings) is None
    assert outbox_id_of("support@example.com", desk.settings) is None
    assert outbox_id_of(real.replace("@example.com", "@elsewhere.test"), desk.settings) is None


def test_an_unmarked_responder_answering_the_return_path_gets_no_answer(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address})
    with serving(desk) as port:
        send(port, request("Hello", "A question.", sender="carol@customer.test"))
        confirmation = relay.wait_for(1)[0]
        # A responder with none of RFC 3834's marks, writing to the return path as
        # RFC 3834 3.1 tells it to.
        answer = request("Re: your mail", "I am away until Monday.",
                         sender="carol@customer.test", to=confirmation.mail_from)
        assert send(port, answer, "carol@customer.test", [confirmation.mail_from]) == {}
        received = relay.settle()
    assert len(received) == 1
    with transaction(desk.engine) as session:
        kinds = session.exec(select(Message.kind).order_by(col(Message.id))).all()
    assert kinds == ["request", "auto_reply"]
