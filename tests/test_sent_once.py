"""Each mail goes out once: a send the database could not record is not sent again,
and a kill -9 while mail waits to go out loses nothing and resends at most what was in
flight, under the same Message-ID."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, func, text
from sqlmodel import Session, col, select

from mailgate.outbound import Attempt, RelayTransport, Sent, send_due
from tests.conftest import make_settings
from tests.harness import Received, Relay, request, send
from tests.servers import POSTGRES_URL, free_port, postgres_url, scratch_database
from tests.test_cli import run, serving_process, write_config
from ticketing.clock import FixedClock
from ticketing.db import StorageError, make_engine, transaction
from ticketing.desk import Desk
from ticketing.inbound import Inbound
from ticketing.ingest import ingest
from ticketing.models import Outbox, Ticket

LEASE = 300


@pytest.fixture
def cut_database(request: pytest.FixtureRequest) -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A PostgreSQL database of this test's own, and a switch that takes it away from
    every client (no new connections, the open ones ended) and brings it back. Only this
    scratch database goes away: the server goes on serving everyone else."""
    template = request.getfixturevalue("postgres_template")
    admin = create_engine("postgresql+psycopg://" + POSTGRES_URL.removeprefix("postgresql://"),
                          isolation_level="AUTOCOMMIT")
    with scratch_database("mailgate_cut", template=template) as name:

        def switch(away: bool) -> None:
            with admin.connect() as connection:
                connection.execute(text(
                    f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {"false" if away else "true"}'))
                if away:
                    connection.execute(text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
        try:
            yield postgres_url(name), switch
        finally:
            switch(False)
            admin.dispose()


class CuttingRelay:
    """The real relay transport; the database goes away right after the first mail is
    handed over, before the worker can record it."""

    def __init__(self, inner: RelayTransport, cut: Callable[[], None]) -> None:
        self.inner, self.cut, self.cuts = inner, cut, 0

    def send(self, row: Outbox) -> Sent:
        sent = self.inner.send(row)
        if not self.cuts:
            self.cuts += 1
            self.cut()
        return sent

    def close(self) -> None:
        self.inner.close()


def test_a_send_the_database_could_not_record_is_recorded_when_it_is_back_not_sent_again(
    tmp_path: Path, cut_database: tuple[str, Callable[[bool], None]], relay: Relay
) -> None:
    url, switch = cut_database
    clock = FixedClock(datetime(2026, 3, 3, 18, 0, tzinfo=UTC))
    desk = Desk.create(make_settings(tmp_path, url, outbound={"relay": relay.address,
                                                              "lease": LEASE}), clock=clock)
    try:
        for n in range(3):
            raw = request(f"Request {n}", "Please.", sender=f"c{n}@customer.test").as_bytes()
            assert ingest(desk, Inbound(raw, "smtp", "", ("support@example.com",))).ticket
        kept: list[Attempt] = []
        transport = CuttingRelay(RelayTransport(desk.settings.outbound),
                                 lambda: switch(True))
        with pytest.raises(StorageError):
            send_due(desk, transport, "machine-a", unrecorded=kept)
        assert len(relay.received) == 1 and len(kept) == 1
        # The database is away longer than the lease; then it is back.
        clock.advance(seconds=LEASE + 60)
        switch(False)
        assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a",
                           unrecorded=kept) == 2
        received = Counter(r.message["Message-ID"] for r in relay.received)
        with transaction(desk.engine) as session:
            rows = session.exec(select(Outbox).order_by(col(Outbox.id))).all()
    finally:
        desk.engine.dispose()
    assert kept == []
    assert sorted(received.values()) == [1, 1, 1]
    assert [(r.status, r.attempts) for r in rows] == [("sent", 1)] * 3
    assert set(received) == {f"<{r.message_id}>" for r in rows}


class HoldingRelay:
    """A relay on loopback that holds each mail it is handed, unanswered, until it is told
    to let mail through: mail queues up behind the one being handed over, however fast
    or slow the machine takes mail in. Once told, it takes every mail at once."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self._through = asyncio.Event()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                      decode_data=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # A client that goes away meanwhile ends this wait: its mail is not taken.
        await self._through.wait()
        with self.lock:
            self.received.append(Received(envelope.mail_from, tuple(envelope.rcpt_tos),
                                          envelope.original_content))
        return "250 OK"

    def let_through(self) -> None:
        self._controller.loop.call_soon_threadsafe(self._through.set)

    def __enter__(self) -> HoldingRelay:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


MAILS = 60
KILLS = 2


def test_kill_9_while_mail_waits_to_go_out_loses_nothing_and_resends_only_what_was_in_flight(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    requests = {n: request(f"Load {n}", "Please.", sender=f"load{n}@customer.test")
                for n in range(MAILS)}
    acknowledged: set[int] = set()
    in_flight = 0
    engine = make_engine(database_url)

    def outbox(*conditions: Any) -> int:
        with Session(engine) as session:
            return int(session.exec(select(func.count()).select_from(Outbox).where(
                *conditions)).one())

    def feed(numbers: list[int]) -> None:
        for n in numbers:
            try:
                send(port, requests[n], f"load{n}@customer.test")
            except (OSError, smtplib.SMTPException):
                return  # the server is gone: the customer's MTA tries again later
            acknowledged.add(n)

    with HoldingRelay() as relay:
        config = write_config(tmp_path, database_url, smtp=f"port = {port}",
                              outbound=f'relay = "127.0.0.1:{relay.port}"\n'
                                       "retry_base = 0.2\nlease = 2")
        assert run(config, "init").returncode == 0
        try:
            for kill in range(KILLS):
                with serving_process(config) as process:
                    waiting = [n for n in range(MAILS) if n not in acknowledged]
                    feeder = threading.Thread(target=feed, args=(waiting,))
                    feeder.start()
                    # Kill while mail waits to go out and one is being handed over.
                    assert _until(lambda: outbox(Outbox.status == "pending") >= 3 and outbox(
                        Outbox.status == "pending", col(Outbox.claimed_until).is_not(None)) >= 1)
                    process.send_signal(signal.SIGKILL)
                    process.wait(10)
                    feeder.join(60)
                # Claimed and not recorded at the kill: those may go out twice.
                in_flight += outbox(Outbox.status == "pending",
                                    col(Outbox.claimed_until).is_not(None))
            # No more kills: the relay takes the mail now.
            relay.let_through()
            with serving_process(config) as process:
                # The customers' servers try again what was not acknowledged.
                feed([n for n in range(MAILS) if n not in acknowledged])
                assert len(acknowledged) == MAILS
                # Every mail sent and no lease held any more: a mail held at a kill went
                # out again only once its lease ran out, and nothing is left to go out.
                assert _until(lambda: outbox(Outbox.status != "sent") == 0
                              and outbox() >= MAILS
                              and outbox(col(Outbox.claimed_until).is_not(None)) == 0)
                process.send_signal(signal.SIGTERM)
                assert process.wait(20) == 0
            with Session(engine) as session:
                subjects = Counter(session.exec(select(Ticket.subject)).all())
        finally:
            engine.dispose()
        with relay.lock:
            received = list(relay.received)
    by_reader = Counter((r.rcpt_tos, r.message["Subject"]) for r in received)
    by_message_id = Counter(r.message["Message-ID"] for r in received)
    readers = {r.rcpt_tos for r in received}
    lost = sum(1 for n in range(MAILS) if (f"load{n}@customer.test",) not in readers)
    duplicated = sum(count - 1 for count in by_reader.values())
    resent = sum(count - 1 for count in by_message_id.values())
    stored_twice = sum(count - 1 for count in subjects.values())
    print(f"\nkill -9 x{KILLS}: {MAILS} mails, in flight at the kills {in_flight}, "
          f"lost {lost}, duplicated {duplicated}, resent with the same Message-ID {resent}, "
          f"stored twice {stored_twice}")
    assert lost == 0 and stored_twice == 0
    assert len(subjects) == MAILS
    assert duplicated <= in_flight
    assert resent == duplicated  # every second copy carries the first one's Message-ID
