"""The Queue's search box: full-text over subjects and every mail's text, on both databases."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote

from sqlalchemy import Engine
from sqlmodel import SQLModel

from tests.harness import Relay, request, send, wait_until_sent
from tests.helpdesk import WebClient, helpdesk
from tests.servers import free_port
from tests.test_threads import reply_to
from ticketing.db import make_engine, migrate, transaction
from ticketing.desk import Desk
from ticketing.models import Message, Participant, Ticket
from ticketing.queueview import QueueFilter, queue

ALICE = "alice@example.com"
CAROL = "carol@customer.test"
PASSWORD = "correct horse battery"


def _numbers(body: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb'<a href="/desk/tickets/(\d+)">', body)]


def _desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE]})


HOSTILE = [
    '"', '"unclosed phrase', "*", "totals*", "NEAR(totals doubled)", "-totals", "totals AND",
    "AND OR NOT", "(", ")", "((totals)", "subject:totals", "^totals", "totals + doubled",
    "'; DROP TABLE ticket; --", "a" * 5000, "word " * 2000, "%_\\", "naïve café ☕",
    "\u200b", "{}[]<>", "totals & | ! :*", "NEAR", "!", "the",
]


def test_the_search_finds_words_in_any_mail_s0_first_and_survives_any_query(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        hd.add_account(ALICE, "Alice Agent", password=PASSWORD)
        hd.add_account(CAROL, password=PASSWORD)
        send(hd.smtp_port, request("Invoices are wrong", "The totals are doubled."))
        send(hd.smtp_port, request("[S0] Everything is down", "No page loads; totals gone."))
        send(hd.smtp_port, request("Exports are slow", "Ten minutes for one file."))
        confirmation = hd.mails_to(CAROL, "Invoices are wrong")[0]
        # A word that is only in the body of a later mail on #1.
        send(hd.smtp_port, reply_to(confirmation, f"Carol <{CAROL}>",
                                    "It started after the zeppelin release."))
        wait_until_sent(hd.desk.engine)
        agent = WebClient(hd.url)
        agent.sign_in(ALICE, PASSWORD)

        def found(typed: str) -> list[int]:
            status, _, body = agent.get("/desk?q=" + quote(typed))
            assert status == 200 and b"Queue" in body, (typed, status, body[:300])
            return _numbers(body)

        assert found("zeppelin") == [1]
        assert found("ZEPPELIN release") == [1]
        assert found("zeppelin exports") == []  # every word, in one mail or the subject
        assert found("totals") == [2, 1]  # S0 first
        assert found("export") == [3]  # "Exports" in the subject, by its stem
        assert found('"totals"') == [2, 1]  # the syntax is dropped, the word kept
        for typed in HOSTILE:
            found(typed)
        # A customer learns nothing of the desk's search.
        customer = WebClient(hd.url)
        customer.sign_in(CAROL, PASSWORD)
        status, _, body = customer.get("/desk?q=zeppelin")
        assert status == 404 and b"zeppelin" not in body


def test_an_upgrade_indexes_the_mail_already_stored_and_knows_when_the_customer_wrote(
    desks: Callable[..., Desk], database_url: str
) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import insert

    from ticketing.db import MIGRATIONS

    engine: Engine = make_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    command.downgrade(config, "0009")  # before the search indexes
    # A ticket as that release stored it: the columns it had then.
    wrote = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    opened = Ticket(id=1, subject="Invoices are wrong", requester=CAROL, created_at=wrote,
                    updated_at=wrote, status_changed_at=wrote).model_dump()
    del opened["customer_wrote_at"]
    mail = Message(id=1, ticket_id=1, dedupe_key="<1@customer.test>", kind="request",
                   from_address=CAROL, text="The totals are doubled by the zeppelin module.",
                   created_at=wrote).model_dump()
    person = Participant(ticket_id=1, address=CAROL, role="requester", created_at=wrote)
    with engine.begin() as connection:
        connection.execute(insert(SQLModel.metadata.tables["ticket"]), [opened])
        connection.execute(insert(SQLModel.metadata.tables["message"]), [mail])
        connection.execute(insert(SQLModel.metadata.tables["participant"]),
                           [person.model_dump(exclude={"id"})])
    migrate(engine)
    engine.dispose()
    desk = desks()
    with transaction(desk.engine) as session:
        for typed in ("zeppelin", "invoice"):
            lines = queue(session, desk.settings, QueueFilter(text=typed), desk.clock.now())
            assert [line.number for line in lines] == [1]
        ticket = session.get(Ticket, 1)
        assert ticket is not None and ticket.customer_wrote_at == wrote
