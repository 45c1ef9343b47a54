"""Mails stored together in one commit: each client gets its own answer, one mail's fault
is its own, and a commit the database fails stores none of them."""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from tests.conftest import make_settings
from tests.harness import Relay, request, serving
from tests.servers import free_port, postgres_url, scratch_database
from tests.test_poison import _refusing
from ticketing.db import StorageError, transaction
from ticketing.desk import Desk
from ticketing.groupcommit import Result, store_together
from ticketing.inbound import Inbound, Outcome, Status
from ticketing.ingest import Prepared, prepare
from ticketing.models import Message, Ticket


def _subjects(desk: Desk) -> list[str]:
    with transaction(desk.engine) as session:
        return sorted(session.exec(select(Ticket.subject)).all())


def _prepared(desk: Desk, subjects: list[str]) -> list[Prepared]:
    mails = []
    for n, subject in enumerate(subjects):
        raw = request(subject, "Please help.", sender=f"c{n}@customer.test").as_bytes()
        prepared = prepare(desk, Inbound(raw, "smtp", "", ("support@example.com",)))
        assert isinstance(prepared, Prepared)
        mails.append(prepared)
    return mails


def _new_tickets(results: list[Result]) -> list[bool]:
    return [isinstance(r, Outcome) and r.status is Status.NEW_TICKET for r in results]


def test_clients_sending_at_once_each_get_their_250_and_every_ticket_exists(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port(), "max_connections_per_client": 0},
                 outbound={"relay": relay.address})
    clients, each = 6, 5
    answers: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    with serving(desk) as port:

        def client(k: int) -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as connection:
                connection.ehlo()
                for n in range(each):
                    mail = request(f"Client {k} request {n}", "Please.",
                                   sender=f"c{k}@customer.test").as_bytes()
                    connection.mail(f"c{k}@customer.test")
                    connection.rcpt("support@example.com")
                    answer = connection.data(mail)
                    with lock:
                        answers.append(answer)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        confirmations = relay.wait_for(clients * each, timeout=60)
    assert len(answers) == clients * each
    assert all(code == 250 and b"new_ticket ticket #" in message for code, message in answers)
    # Each client was told its own ticket: thirty different numbers.
    assert len({message.split(b"#")[1] for _, message in answers}) == clients * each
    assert _subjects(desk) == sorted(f"Client {k} request {n}"
                                     for k in range(clients) for n in range(each))
    assert len(confirmations) == clients * each


def test_a_mail_the_database_refuses_holds_up_none_of_its_batch(
    desks: Callable[..., Desk]
) -> None:
    desk = desks()
    subjects = ["Good one", "Refused by the database", "Good two", "Good three"]
    with _refusing(desk, "Refused by the database"):
        results = store_together(desk, _prepared(desk, subjects))
    assert _new_tickets(results) == [True, False, True, True]
    # Its own outcome, as when it comes by itself: the first try is a temporary failure.
    refused = results[1]
    assert isinstance(refused, StorageError) and refused.mail_fault
    assert _subjects(desk) == ["Good one", "Good three", "Good two"]


@pytest.fixture
def refused_at_commit(desks: Callable[..., Desk]) -> Iterator[Desk]:
    """A desk whose database refuses, at the commit, a transaction that opened a ticket
    with the subject "Trap": a constraint checked only then."""
    desk = desks()
    statements = {
        "sqlite": [
            "CREATE TABLE trap_target (id INTEGER PRIMARY KEY)",
            "CREATE TABLE trap (id INTEGER PRIMARY KEY, target INTEGER "
            "REFERENCES trap_target (id) DEFERRABLE INITIALLY DEFERRED)",
            "CREATE TRIGGER trap AFTER INSERT ON ticket WHEN NEW.subject = 'Trap' "
            "BEGIN INSERT INTO trap (target) VALUES (-1); END"],
        "postgresql": [
            "CREATE FUNCTION trap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'check_violation'; END $$",
            "CREATE CONSTRAINT TRIGGER trap AFTER INSERT ON ticket DEFERRABLE INITIALLY "
            "DEFERRED FOR EACH ROW WHEN (NEW.subject = 'Trap') EXECUTE FUNCTION trap()"],
    }[desk.engine.dialect.name]
    with desk.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    yield desk


def test_a_commit_refused_for_what_one_mail_wrote_stores_the_others_by_themselves(
    refused_at_commit: Desk
) -> None:
    desk = refused_at_commit
    results = store_together(desk, _prepared(desk, ["Good one", "Trap", "Good two"]))
    assert _new_tickets(results) == [True, False, True]
    assert _subjects(desk) == ["Good one", "Good two"]


@pytest.fixture
def postgres_desk(tmp_path: Path, postgres_template: str) -> Iterator[Desk]:
    with scratch_database("mailgate_gc", template=postgres_template) as name:
        desk = Desk.create(make_settings(tmp_path, postgres_url(name)))
        try:
            yield desk
        finally:
            desk.engine.dispose()


def test_a_commit_the_database_fails_stores_none_of_the_batch_and_fails_each_mail(
    postgres_desk: Desk
) -> None:
    """The database server ends the connection at the commit (as at a crash or a
    failover): every mail of the batch has a temporary failure, and none is stored."""
    desk = postgres_desk
    with desk.engine.begin() as connection:
        connection.execute(text(
            "CREATE FUNCTION lost() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$"))
        connection.execute(text(
            "CREATE CONSTRAINT TRIGGER lost AFTER INSERT ON ticket DEFERRABLE INITIALLY "
            "DEFERRED FOR EACH ROW WHEN (NEW.subject = 'Lost at commit') "
            "EXECUTE FUNCTION lost()"))
    results = store_together(desk, _prepared(desk, ["Good one", "Lost at commit", "Good two"]))
    assert [isinstance(r, StorageError) and not r.mail_fault for r in results] == [True] * 3
    assert _subjects(desk) == []
    with transaction(desk.engine) as session:
        assert session.exec(select(col(Message.id))).all() == []
    # The database is back: the same mails, apart, are stored.
    again = store_together(desk, _prepared(desk, ["Good one"]))
    assert _new_tickets(again) == [True]
