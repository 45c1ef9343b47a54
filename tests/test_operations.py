"""What the operator relies on: quarantine and replay, template overrides, the MTA pipe, limits."""

from __future__ import annotations

import io
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

from sqlmodel import select

from mailgate import pipe
from tests.harness import Relay, request, send, serving
from tests.servers import corpus_dir, free_port, missing, self_signed_certificate
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.ingest import replay
from ticketing.models import Message, Quarantine, Ticket
from ticketing.reports import list_inbound


def test_a_mail_that_breaks_ingest_is_quarantined_and_replayed_after_the_fix(
    desks: Callable[..., Desk], relay: Relay, tmp_path: Path
) -> None:
    override = tmp_path / "my-templates"
    override.mkdir()
    # An operator's override that names a variable we do not have: rendering fails.
    (override / "confirmation.txt").write_text("Hello {{ no_such_thing.name }}\n")
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 templates={"override": str(override)})
    with serving(desk) as port:
        refused = send(port, request("Printer on fire", "Really."))
        assert refused == {}  # acknowledged: it is kept, not lost
        relay.settle()
    with transaction(desk.engine) as session:
        assert session.exec(select(Ticket)).all() == []
        quarantined = session.exec(select(Quarantine)).one()
        listed = list_inbound(session)
    assert "no_such_thing" in quarantined.error
    assert [r["status"] for r in listed] == ["quarantined"]
    # The fix: the override goes; the kept mail goes through ingest again.
    (override / "confirmation.txt").unlink()
    outcome = replay(desk, quarantined.id or 0)
    assert outcome.status == "new_ticket"
    with transaction(desk.engine) as session:
        ticket = session.exec(select(Ticket)).one()
        again = session.get(Quarantine, quarantined.id)
    assert ticket.subject == "Printer on fire"
    assert again is not None and again.replayed_at is not None


def test_an_operator_template_override_is_used(desks: Callable[..., Desk], relay: Relay,
                                               tmp_path: Path) -> None:
    override = tmp_path / "my-templates"
    override.mkdir()
    (override / "confirmation.txt").write_text(
        "{{ marker }}\nThanks {{ requester }}, ticket {{ tag }} is ours now. -- ACME\n")
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 templates={"override": str(override)})
    with serving(desk) as port:
        send(port, request("Login loop", "It loops."))
        confirmation = relay.wait_for(1)[0]
    assert "is ours now. -- ACME" in confirmation.text()
    html = confirmation.message.get_body(("html",))
    assert html is not None and "Login loop" in html.get_content()  # ours, not overridden


# Each kind of mail the corpus manifest names, this many files of it, goes through the pipe.
PER_KIND = 3


def pipe_sample(rows: list[list[str]]) -> list[str]:
    """The corpus files the pipe takes: the first PER_KIND of each kind, the smallest and
    the largest. (Every corpus mail goes through the whole ingest on each database in
    test_corpus.py, over SMTP; the pipe differs from it only in how the mail comes in.)"""
    chosen: dict[str, None] = {}
    taken: dict[str, int] = {}
    for row in sorted(rows):
        for kind in row[5].split(","):
            if taken.get(kind, 0) < PER_KIND:
                taken[kind] = taken.get(kind, 0) + 1
                chosen[row[0]] = None
    by_size = sorted(rows, key=lambda r: int(r[6]))
    for row in by_size[:PER_KIND] + by_size[-PER_KIND:]:
        chosen[row[0]] = None
    return list(chosen)


def test_the_mta_pipe_takes_each_kind_of_corpus_mail(desks: Callable[..., Desk]) -> None:
    """`mailgate deliver` runs pipe.deliver on stdin; here the same function takes each file."""
    corpus = corpus_dir()
    skip = ("not_rfc5322", "no_headers", "not_single_message")
    rows = [line.split("\t") for line in (corpus / "MANIFEST.tsv").read_text().splitlines()[1:]]
    rows = [r for r in rows if not any(s in r[5] for s in skip)]
    files = [corpus / path for path in pipe_sample(rows)]
    assert len({kind for r in rows for kind in r[5].split(",")}) > 30
    desk = desks(smtp={"max_message_size": 50_000_000})
    codes = [pipe.deliver(desk, io.BytesIO(path.read_bytes()), "support@example.com", "")
             for path in files]
    empty = [f for f, c in zip(files, codes, strict=True) if c == pipe.EX_DATAERR]
    assert all(c == pipe.EX_OK for c in codes if c != pipe.EX_DATAERR), set(codes)
    assert all(not f.read_bytes().strip() for f in empty)
    with transaction(desk.engine) as session:
        stored = len(session.exec(select(Message.id)).all())
        quarantined = len(session.exec(select(Quarantine.id)).all())
    assert quarantined == 0
    assert stored + quarantined <= len(files) - len(empty)
    assert stored > 0.8 * len(files)  # the rest are the corpus's own duplicates


def test_swaks_as_a_real_smtp_client(desks: Callable[..., Desk], relay: Relay) -> None:
    if shutil.which("swaks") is None:
        missing("swaks is not installed (Debian package swaks)")
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address})
    with serving(desk) as port:
        result = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{port}", "--to", "support@example.com",
             "--from", "erin@customer.test", "--header", "Subject: [S1] Sync stuck",
             "--header", "Cc: frank@customer.test", "--body", "The sync has been stuck since 9."],
            capture_output=True, text=True, timeout=60, check=False)
        confirmation = relay.wait_for(1)
    assert result.returncode == 0, result.stdout
    assert "250 2.0.0 OK new_ticket" in result.stdout
    assert set(confirmation[0].rcpt_tos) == {"erin@customer.test", "frank@customer.test"}
    with transaction(desk.engine) as session:
        ticket = session.exec(select(Ticket)).one()
    assert (ticket.subject, ticket.severity) == ("Sync stuck", 1)


def test_one_client_cannot_hold_every_connection(desks: Callable[..., Desk]) -> None:
    desk = desks(smtp={"port": free_port(), "max_connections_per_client": 3})
    with serving(desk) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            for connection in held:
                assert connection.recv(200).startswith(b"220")
            extra = socket.create_connection(("127.0.0.1", port))
            assert extra.recv(200).startswith(b"421")
            extra.close()
        finally:
            for connection in held:
                connection.close()
        # Once they are gone, the client is served again.
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert client.noop()[0] == 250


def test_a_client_can_start_tls_with_the_configured_certificate(
    desks: Callable[..., Desk], relay: Relay, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path, "smtp")
    desk = desks(smtp={"port": free_port(), "tls_cert": str(cert), "tls_key": str(key)},
                 outbound={"relay": relay.address})
    # The client trusts only this certificate, so the handshake proves it is the one served.
    trust = ssl.create_default_context(cafile=str(cert))
    with serving(desk) as port, smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert client.starttls(context=trust)[0] == 220
        client.ehlo()
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.getpeercert() is not None
        client.send_message(request("[S2] Invoices over TLS", "Sent encrypted."),
                            to_addrs=["support@example.com"])
        confirmation = relay.wait_for(1)
    assert list(confirmation[0].rcpt_tos) == ["carol@customer.test"]
    with transaction(desk.engine) as session:
        ticket = session.exec(select(Ticket)).one()
    assert (ticket.subject, ticket.severity) == ("Invoices over TLS", 2)


def test_without_a_certificate_the_listener_offers_no_starttls(
    desks: Callable[..., Desk]
) -> None:
    desk = desks(smtp={"port": free_port()})
    with serving(desk) as port, smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
