"""A customer's request over SMTP becomes a ticket and a confirmation reaches the relay."""

from __future__ import annotations

import email.utils
import hashlib
import json
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import select

from tests.harness import Relay, request, send, serving
from tests.servers import free_port
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Message, Outbox, Ticket
from ticketing.reports import show_ticket

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 300


@pytest.fixture
def desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address})


def _request_with_everything() -> email.message.EmailMessage:
    message = request(
        "[S1] Exports fail with error 500",
        "Since this morning every CSV export fails.\nSteps: open Reports, click Export.\n",
        cc="Dave Stakeholder <dave@customer.test>, Erin Ops <erin@customer.test>",
    )
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    message.add_attachment(PNG, maintype="image", subtype="png", filename="Überblick screen.png")
    return message


def test_request_becomes_ticket_and_confirmation_reaches_everyone(desk: Desk, relay: Relay) -> None:
    original = _request_with_everything()
    with serving(desk) as port:
        refused = send(port, original)
        assert refused == {}
        confirmations = relay.wait_for(1)
    assert len(confirmations) == 1
    confirmation = confirmations[0]
    message = confirmation.message
    assert set(confirmation.rcpt_tos) == {
        "carol@customer.test", "dave@customer.test", "erin@customer.test"}
    assert email.utils.parseaddr(message["To"])[1] == "carol@customer.test"
    assert {a for _, a in email.utils.getaddresses([message["Cc"]])} == {
        "dave@customer.test", "erin@customer.test"}
    with transaction(desk.engine) as session:
        ticket = session.exec(select(Ticket)).one()
        shown = show_ticket(session, ticket.id)
    assert message["Subject"] == f"[#{ticket.id}] Exports fail with error 500"
    assert message["In-Reply-To"] == original["Message-ID"]
    assert original["Message-ID"] in message["References"]
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"].endswith("@example.com>")
    reply_to = email.utils.parseaddr(message["Reply-To"])[1]
    assert reply_to.startswith(f"support+{ticket.id}-") and reply_to.endswith("@example.com")
    text = confirmation.text()
    assert "S1" in text and "severely degraded" in text
    assert "https://status.example.com" in text
    assert f"[#{ticket.id}]" in text
    html = message.get_body(("html",))
    assert html is not None and "Exports fail with error 500" in html.get_content()

    assert shown is not None
    assert shown["subject"] == "Exports fail with error 500"
    assert shown["severity"] == "S1"
    assert shown["requester"] == "carol@customer.test"
    assert set(shown["participants"]) == {
        "carol@customer.test", "dave@customer.test", "erin@customer.test"}
    files = {a["filename"]: a for a in shown["messages"][0]["attachments"]}
    assert set(files) == {"report.pdf", "Überblick screen.png"}
    assert files["report.pdf"]["sha256"] == hashlib.sha256(PDF).hexdigest()
    assert files["report.pdf"]["size"] == len(PDF)
    assert files["Überblick screen.png"]["content_type"] == "image/png"
    assert "every CSV export fails" in shown["messages"][0]["text"]


def test_same_mail_twice_makes_one_ticket_and_one_confirmation(desk: Desk, relay: Relay) -> None:
    original = request("Cannot log in", "The login page spins forever.")
    with serving(desk) as port:
        send(port, original)
        send(port, original)
        received = relay.settle()
    assert len(received) == 1
    with transaction(desk.engine) as session:
        assert len(session.exec(select(Ticket)).all()) == 1
        assert len(session.exec(select(Message)).all()) == 1


def test_same_bytes_without_message_id_are_stored_once(desk: Desk, relay: Relay) -> None:
    raw = (b"From: carol@customer.test\r\nTo: support@example.com\r\n"
           b"Subject: no id here\r\n\r\nHello\r\n")
    with serving(desk) as port:
        send(port, raw, "carol@customer.test", ["support@example.com"])
        send(port, raw, "carol@customer.test", ["support@example.com"])
        received = relay.settle()
    assert len(received) == 1
    with transaction(desk.engine) as session:
        assert len(session.exec(select(Ticket)).all()) == 1


def test_mail_for_other_domains_is_refused_no_open_relay(desk: Desk) -> None:
    with serving(desk) as port:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(port, request("hi", "relay me", to="victim@elsewhere.test"),
                 recipients=["victim@elsewhere.test"])
    code, _ = refused.value.recipients["victim@elsewhere.test"]
    assert code == 550


def test_oversize_mail_is_refused_with_552(tmp_path: Path, database_url: str, relay: Relay,
                                           desks: Callable[..., Desk]) -> None:
    desk = desks(smtp={"port": free_port(), "max_message_size": 20_000},
                 outbound={"relay": relay.address})
    big = request("big", "x" * 50_000)
    with serving(desk) as port:
        with pytest.raises(smtplib.SMTPException) as refused:
            send(port, big)
    assert "552" in str(refused.value)
    with transaction(desk.engine) as session:
        assert session.exec(select(Ticket)).all() == []


def test_storage_fault_answers_451_and_keeps_nothing(desks: Callable[..., Desk],
                                                     relay: Relay) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 storage={"blobs": "folder"})
    data = desk.settings.storage_path / "blobs"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(b"a file where the blob folder should be")  # the data folder cannot take a write
    with serving(desk) as port:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(port, request("anyone there?", "hello"))
    assert refused.value.smtp_code == 451
    with transaction(desk.engine) as session:
        assert session.exec(select(Ticket)).all() == []
        assert session.exec(select(Outbox)).all() == []


def test_outbound_folder_is_the_default_without_relay(desks: Callable[..., Desk]) -> None:
    desk = desks(smtp={"port": free_port()})
    settings = desk.settings
    with serving(desk) as port:
        send(port, request("[S3] Question about invoices", "Where do I find them?"))
        folder = settings.outbound_directory
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not list(folder.glob("*.eml")):
            time.sleep(0.05)
    files = list(folder.glob("*.eml"))
    assert len(files) == 1
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert parsed["Subject"].endswith("] Question about invoices")
    with transaction(desk.engine) as session:
        rows = session.exec(select(Outbox)).all()
    assert [r.status for r in rows] == ["sent"]
    assert json.loads(rows[0].recipients) == ["carol@customer.test"]
