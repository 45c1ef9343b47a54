"""A mail the database cannot take stands in front of no other, on every route."""

from __future__ import annotations

import io
import smtplib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import pytest
from imapclient import IMAPClient
from sqlalchemy import text
from sqlmodel import col, select

from mailgate.exitcodes import EX_OK
from mailgate.imap import ImapFetcher
from mailgate.pipe import deliver
from tests.dovecot import Dovecot
from tests.harness import send, serving
from tests.servers import free_port
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.ingest import ingest
from ticketing.models import Message, Quarantine, Ticket
from ticketing.settings import ImapMailbox

REFERENCES = 70_000


def _mail(n: int, subject: str, references: int = 0) -> bytes:
    folded = "".join(f"\r\n <ref-{i}@attacker.test>" for i in range(references))
    return (
        f"From: Customer {n} <customer{n}@client.example>\r\n"
        "To: support@example.com\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <poison-test-{n}@client.example>\r\n"
        + (f"References:{folded}\r\n" if references else "")
        + "Date: Tue, 03 Mar 2026 10:00:00 -0800\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"Please help with request {n}.\r\n"
    ).encode()


def _poison() -> bytes:
    raw = _mail(0, "Poison", REFERENCES)
    assert len(raw) > 1_000_000
    return raw


GOOD = [_mail(n, f"Good request {n}") for n in (1, 2, 3)]


def _subjects(desk: Desk) -> list[str]:
    with transaction(desk.engine) as session:
        return sorted(session.exec(select(Ticket.subject)).all())


def test_a_mail_with_70000_references_holds_up_no_mail_by_smtp(
    desks: Callable[..., Desk]
) -> None:
    desk = desks(smtp={"port": free_port()})
    with serving(desk) as port:
        assert send(port, _poison(), "customer0@client.example") == {}
        for raw in GOOD:
            assert send(port, raw, "customer@client.example") == {}
    assert _subjects(desk) == ["Good request 1", "Good request 2", "Good request 3", "Poison"]


def test_a_mail_with_70000_references_holds_up_no_mail_by_imap(
    desks: Callable[..., Desk], dovecot: Dovecot
) -> None:
    desk = desks()
    with IMAPClient(dovecot.host, dovecot.port, ssl=False, timeout=30) as client:
        client.login(dovecot.user, dovecot.password)
        for raw in (_poison(), *GOOD):
            client.append("INBOX", raw)
    box = ImapMailbox(host=dovecot.host, port=dovecot.port, user=dovecot.user,
                      password=dovecot.password, security="none", move_to="Done")
    fetcher = ImapFetcher(box, desk.engine, partial(ingest, desk), desk.clock)
    try:
        assert fetcher.fetch_once() == 4
        assert not fetcher.storage_fault
    finally:
        fetcher.close()
    assert _subjects(desk) == ["Good request 1", "Good request 2", "Good request 3", "Poison"]
    with IMAPClient(dovecot.host, dovecot.port, ssl=False, timeout=30) as client:
        client.login(dovecot.user, dovecot.password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        assert client.select_folder("Done")[b"EXISTS"] == 4


@contextmanager
def _refusing(desk: Desk, subject: str) -> Iterator[None]:
    """The database refuses to store a mail with this subject, as it refuses a statement
    over one of its limits: the same fault on every try, whatever the route."""
    statements = {
        "sqlite": [
            f"CREATE TRIGGER refuse BEFORE INSERT ON message WHEN NEW.subject = '{subject}' "
            "BEGIN SELECT RAISE(ABORT, 'statement too large'); END"],
        "postgresql": [
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.subject = '{subject}' THEN RAISE EXCEPTION 'statement too large' "
            "USING ERRCODE = 'program_limit_exceeded'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse BEFORE INSERT ON message FOR EACH ROW "
            "EXECUTE FUNCTION refuse()"],
    }[desk.engine.dialect.name]
    with desk.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    yield


def test_a_mail_that_keeps_failing_is_quarantined_after_three_tries_on_any_route(
    desks: Callable[..., Desk]
) -> None:
    desk = desks(smtp={"port": free_port()})
    refused = _mail(9, "Refused by the database")
    with _refusing(desk, "Refused by the database"), serving(desk) as port:
        # The sender's server tries twice (451), then the MTA's pipe once: quarantined.
        for good in GOOD[:2]:
            with pytest.raises(smtplib.SMTPDataError) as caught:
                send(port, refused, "customer9@client.example")
            assert caught.value.smtp_code == 451
            assert send(port, good, "c@client.example") == {}
        assert deliver(desk, io.BytesIO(refused), "support@example.com") == EX_OK
        assert deliver(desk, io.BytesIO(GOOD[2]), "support@example.com") == EX_OK
    assert _subjects(desk) == ["Good request 1", "Good request 2", "Good request 3"]
    with transaction(desk.engine) as session:
        quarantined = session.exec(select(Quarantine)).all()
        kept = session.exec(select(Message).where(col(Message.subject).startswith("Refused"))).all()
    assert [(q.route, "statement too large" in q.error) for q in quarantined] == [("pipe", True)]
    assert kept == []
    assert desk.blobs.get(quarantined[0].raw_sha256) == refused


def test_a_mail_that_keeps_failing_holds_up_an_imap_folder_for_three_passes_only(
    desks: Callable[..., Desk], dovecot: Dovecot
) -> None:
    desk = desks()
    refused = _mail(9, "Refused by the database")
    with IMAPClient(dovecot.host, dovecot.port, ssl=False, timeout=30) as client:
        client.login(dovecot.user, dovecot.password)
        for raw in (refused, *GOOD):
            client.append("INBOX", raw)
    box = ImapMailbox(host=dovecot.host, port=dovecot.port, user=dovecot.user,
                      password=dovecot.password, security="none", move_to="Done")
    fetcher = ImapFetcher(box, desk.engine, partial(ingest, desk), desk.clock)
    with _refusing(desk, "Refused by the database"):
        try:
            # Two passes stop at it, as at any storage fault; the third quarantines it.
            for _ in range(2):
                assert fetcher.fetch_once() == 0
                assert fetcher.storage_fault
            assert fetcher.fetch_once() == 4
            assert not fetcher.storage_fault
        finally:
            fetcher.close()
    assert _subjects(desk) == ["Good request 1", "Good request 2", "Good request 3"]
    with transaction(desk.engine) as session:
        quarantined = session.exec(select(Quarantine)).all()
    assert [q.route for q in quarantined] == [f"imap:{box.key}"]
    assert desk.blobs.get(quarantined[0].raw_sha256) == refused
    with IMAPClient(dovecot.host, dovecot.port, ssl=False, timeout=30) as client:
        client.login(dovecot.user, dovecot.password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        assert client.select_folder("Done")[b"EXISTS"] == 4
