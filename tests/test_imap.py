"""The IMAP fetcher against a real Dovecot: each mail ingested once, then moved or flagged."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from imapclient import SEEN, IMAPClient
from imapclient.exceptions import LoginError
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from mailgate.imap import ImapFetcher, mailbox_password, message_id, oauth2_token
from tests.conftest import make_settings
from tests.dovecot import Dovecot, dovecot_server, running_dovecot  # noqa: F401 - fixture
from tests.harness import run_coroutine
from ticketing.clock import FixedClock
from ticketing.db import StorageError, transaction
from ticketing.inbound import Inbound, Outcome
from ticketing.ingest import ingest
from ticketing.models import MailboxState, Message, Ticket
from ticketing.settings import ConfigError, ImapMailbox


def mail(n: int, subject: str = "") -> bytes:
    return (
        f"From: Customer {n} <customer{n}@client.example>\r\n"
        "To: support@example.com\r\n"
        f"Subject: {subject or f'Request number {n}'}\r\n"
        f"Message-ID: <request-{n}@client.example>\r\n"
        "Date: Tue, 03 Mar 2026 10:00:00 -0800\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"Please help with request {n}.\r\n"
    ).encode()


def mid(n: int) -> str:
    return f"<request-{n}@client.example>"


class RecordingIngest:
    """Stands in for the desk: stores each Message-ID once, and remembers every call."""

    def __init__(self, engine: Engine, clock: FixedClock,
                 fail: Callable[[int, str], None] | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.fail = fail
        self.calls: list[str] = []
        self.routes: set[str] = set()

    def __call__(self, inbound: Inbound) -> Outcome:
        key = message_id(inbound.raw)
        self.calls.append(key)
        self.routes.add(inbound.route)
        if self.fail is not None:
            self.fail(len(self.calls), key)
        with transaction(self.engine) as session:
            existing = session.exec(select(Message).where(Message.dedupe_key == key)).first()
            if existing is not None:
                return Outcome("duplicate", message=existing.id)
            row = Message(dedupe_key=key, message_id=key, kind="request", route=inbound.route,
                          raw_sha256=hashlib.sha256(inbound.raw).hexdigest(),
                          raw_size=len(inbound.raw), created_at=self.clock.now())
            session.add(row)
            session.flush()
            return Outcome("new_ticket", message=row.id)


def stored(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return sorted(session.exec(select(Message.dedupe_key)).all())


def box_for(server: Dovecot, **changes: Any) -> ImapMailbox:
    values: dict[str, Any] = {
        "host": server.host, "port": server.port, "user": server.user,
        "password": server.password, "security": "none", "poll_interval": 30.0,
    }
    values.update(changes)
    return ImapMailbox(**values)


@contextmanager
def imap(server: Dovecot) -> Iterator[Any]:
    client = IMAPClient(server.host, server.port, ssl=False, timeout=10)
    try:
        client.login(server.user, server.password)
        yield client
    finally:
        client.logout()


def append(server: Dovecot, *numbers: int, folder: str = "INBOX",
           flags: tuple[bytes, ...] = ()) -> None:
    with imap(server) as client:
        for n in numbers:
            client.append(folder, mail(n), flags=flags)


def contents(server: Dovecot, folder: str) -> dict[str, tuple[bytes, ...]]:
    """Message-ID -> flags of every message in a folder, read without touching \\Seen."""
    with imap(server) as client:
        if not client.folder_exists(folder):
            return {}
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        data = client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        return {
            message_id(item[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"]): item[b"FLAGS"]
            for item in data.values()
        }


def test_each_message_is_ingested_once_then_moved(
    dovecot: Dovecot, engine: Engine, clock: FixedClock
) -> None:
    append(dovecot, 1, 2, 3, 4, 5)
    ingest = RecordingIngest(engine, clock)
    box = box_for(dovecot, move_to="Processed", batch_size=2)
    fetcher = ImapFetcher(box, engine, ingest, clock)
    try:
        assert fetcher.fetch_once() == 5
        assert fetcher.fetch_once() == 0
    finally:
        fetcher.close()
    assert ingest.calls == [mid(n) for n in range(1, 6)]
    assert ingest.routes == {f"imap:{box.key}"}
    assert stored(engine) == sorted(mid(n) for n in range(1, 6))
    assert contents(dovecot, "INBOX") == {}
    assert sorted(contents(dovecot, "Processed")) == sorted(mid(n) for n in range(1, 6))


def test_without_move_to_messages_are_flagged_seen_and_left(
    dovecot: Dovecot, engine: Engine, clock: FixedClock
) -> None:
    # A message someone already read in their mail client must be fetched all the same.
    append(dovecot, 1, flags=(SEEN,))
    append(dovecot, 2, 3)
    ingest = RecordingIngest(engine, clock)
    box = box_for(dovecot)
    first = ImapFetcher(box, engine, ingest, clock)
    try:
        assert first.fetch_once() == 3
    finally:
        first.close()
    inbox = contents(dovecot, "INBOX")
    assert sorted(inbox) == [mid(1), mid(2), mid(3)]
    assert all(SEEN in flags for flags in inbox.values())

    # A new fetcher (a restart) knows where it stood: nothing is fetched twice.
    append(dovecot, 4)
    second = ImapFetcher(box, engine, ingest, clock)
    try:
        assert second.fetch_once() == 1
    finally:
        second.close()
    assert ingest.calls == [mid(1), mid(2), mid(3), mid(4)]
    with Session(engine) as session:
        state = session.get(MailboxState, box.key)
        assert state is not None and state.last_uid == 4


def test_a_restart_mid_batch_ingests_every_message_exactly_once(
    dovecot: Dovecot, engine: Engine, clock: FixedClock
) -> None:
    append(dovecot, *range(1, 7))

    def storage_down_on_third(call: int, _key: str) -> None:
        if call == 3:
            raise StorageError("database is locked")

    box = box_for(dovecot, move_to="Processed", batch_size=4)
    failing = RecordingIngest(engine, clock, fail=storage_down_on_third)
    first = ImapFetcher(box, engine, failing, clock)
    try:
        assert first.fetch_once() == 2
        assert first.storage_fault
    finally:
        first.close()
    # The third message was not stored: it is still there, unread, with the rest.
    inbox = contents(dovecot, "INBOX")
    assert sorted(inbox) == sorted(mid(n) for n in range(3, 7))
    assert all(SEEN not in flags for flags in inbox.values())

    healthy = RecordingIngest(engine, clock)
    second = ImapFetcher(box, engine, healthy, clock)
    try:
        assert second.fetch_once() == 4
        assert not second.storage_fault
    finally:
        second.close()
    assert failing.calls == [mid(1), mid(2), mid(3)]
    assert healthy.calls == [mid(n) for n in range(3, 7)]
    assert stored(engine) == sorted(mid(n) for n in range(1, 7))
    assert contents(dovecot, "INBOX") == {}
    assert len(contents(dovecot, "Processed")) == 6


def test_a_message_whose_ingest_crashes_is_left_and_the_rest_go_on(
    dovecot: Dovecot, engine: Engine, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    append(dovecot, 1, 2, 3)

    def crash_on_second(_call: int, key: str) -> None:
        if key == mid(2):
            raise ValueError("a bug in ingest")

    ingest = RecordingIngest(engine, clock, fail=crash_on_second)
    fetcher = ImapFetcher(box_for(dovecot, move_to="Processed"), engine, ingest, clock)
    with caplog.at_level(logging.ERROR, logger="mailgate.imap"):
        try:
            assert fetcher.fetch_once() == 2
            assert fetcher.fetch_once() == 0
        finally:
            fetcher.close()
    assert ingest.calls == [mid(1), mid(2), mid(3)]
    assert sorted(contents(dovecot, "Processed")) == [mid(1), mid(3)]
    assert list(contents(dovecot, "INBOX")) == [mid(2)]
    assert any("uid 2" in r.getMessage() and mid(2) in r.getMessage() for r in caplog.records)


def test_a_new_uidvalidity_reads_the_folder_again_and_loses_nothing(
    dovecot: Dovecot, engine: Engine, clock: FixedClock
) -> None:
    with imap(dovecot) as client:
        client.create_folder("Support")
    append(dovecot, 1, 2, folder="Support")
    ingest = RecordingIngest(engine, clock)
    box = box_for(dovecot, folder="Support")
    fetcher = ImapFetcher(box, engine, ingest, clock)
    try:
        assert fetcher.fetch_once() == 2
    finally:
        fetcher.close()
    with imap(dovecot) as client:
        before = client.folder_status("Support", ["UIDVALIDITY"])[b"UIDVALIDITY"]
        client.delete_folder("Support")
        client.create_folder("Support")
        after = client.folder_status("Support", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    assert before != after
    # UIDs start at 1 again: 3 and 4 take the UIDs 1 and 2 that were done before;
    # 1 comes back as a copy and is stored once.
    append(dovecot, 3, 4, 1, folder="Support")

    fetcher = ImapFetcher(box, engine, ingest, clock)
    try:
        assert fetcher.fetch_once() == 3
    finally:
        fetcher.close()
    assert ingest.calls == [mid(1), mid(2), mid(3), mid(4), mid(1)]
    assert stored(engine) == sorted(mid(n) for n in range(1, 5))
    with Session(engine) as session:
        state = session.get(MailboxState, box.key)
        assert state is not None and (state.uidvalidity, state.last_uid) == (after, 3)


async def until(condition: Callable[[], bool], within: float) -> float:
    """Seconds until condition() holds; fails after `within` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"still not true after {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_idle_delivers_a_new_message_within_seconds(
    dovecot: Dovecot, engine: Engine, clock: FixedClock
) -> None:
    ingest = RecordingIngest(engine, clock)
    # A poll far away: only IDLE can bring the mail in quickly.
    fetcher = ImapFetcher(box_for(dovecot, move_to="Processed", poll_interval=600.0),
                          engine, ingest, clock)

    async def scenario() -> tuple[float, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(fetcher.run(stop))
        try:
            append(dovecot, 1)
            await until(lambda: ingest.calls == [mid(1)], within=10)
            await until(lambda: dovecot.idling() == 1, within=10)  # back in IDLE
            with imap(dovecot) as client:
                started = time.monotonic()
                await asyncio.to_thread(client.append, "INBOX", mail(2))
                appended = time.monotonic() - started
            await until(lambda: len(ingest.calls) == 2, within=10)
            return appended, time.monotonic() - started
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    appended, elapsed = run_coroutine(scenario())
    print(f"\nIDLE: APPEND took {appended:.3f} s; handed to ingest {elapsed:.3f} s after it began")
    assert ingest.calls == [mid(1), mid(2)]
    assert sorted(contents(dovecot, "Processed")) == [mid(1), mid(2)]


def test_run_reconnects_after_the_server_restarts(
    dovecot: Dovecot, engine: Engine, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = RecordingIngest(engine, clock)
    fetcher = ImapFetcher(box_for(dovecot, move_to="Processed"), engine, ingest, clock)
    fetcher.reconnect_base = 0.2  # seconds before the first reconnect, doubling after

    def reconnects() -> list[logging.LogRecord]:
        return [r for r in list(caplog.records) if "reconnecting in" in r.getMessage()]

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(fetcher.run(stop))
        try:
            append(dovecot, 1)
            await until(lambda: ingest.calls == [mid(1)], within=10)
            await until(lambda: dovecot.idling() == 1, within=10)  # idle
            await asyncio.to_thread(dovecot.stop)
            # The lost connection, then a reconnect refused while the server is down.
            await until(lambda: len(reconnects()) >= 2, within=10)
            await asyncio.to_thread(dovecot.start)
            started = time.monotonic()
            await asyncio.to_thread(append, dovecot, 2)
            await until(lambda: len(ingest.calls) == 2, within=30)
            return time.monotonic() - started
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    with caplog.at_level(logging.WARNING, logger="mailgate.imap"):
        elapsed = run_coroutine(scenario())
    print(f"after the restart: the new message ingested in {elapsed:.3f} s")
    assert ingest.calls == [mid(1), mid(2)]
    assert sorted(contents(dovecot, "Processed")) == [mid(1), mid(2)]
    assert reconnects()


def test_without_idle_it_polls_and_without_move_it_copies_and_expunges(
    engine: Engine, clock: FixedClock
) -> None:
    # A server that offers neither IDLE nor MOVE (RFC 6851), but UIDPLUS.
    capability = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE NAMESPACE UIDPLUS UNSELECT CHILDREN"
    with running_dovecot(f"imap_capability = {capability}\n") as server:
        ingest = RecordingIngest(engine, clock)
        fetcher = ImapFetcher(box_for(server, move_to="Done", poll_interval=0.3),
                              engine, ingest, clock)

        async def scenario() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(fetcher.run(stop))
            try:
                append(server, 1)
                await until(lambda: ingest.calls == [mid(1)], within=10)
                await asyncio.to_thread(append, server, 2)
                await until(lambda: len(ingest.calls) == 2, within=10)
                await until(lambda: len(contents(server, "Done")) == 2, within=10)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)

        with imap(server) as client:
            assert not client.has_capability("MOVE")
            assert not client.has_capability("IDLE")
        run_coroutine(scenario())
        assert contents(server, "INBOX") == {}
        assert sorted(contents(server, "Done")) == [mid(1), mid(2)]
        assert all(b"\\Deleted" not in f for f in contents(server, "Done").values())


def test_password_from_the_environment(
    dovecot: Dovecot, engine: Engine, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILGATE_TEST_IMAP_PASSWORD", dovecot.password)
    append(dovecot, 1)
    ingest = RecordingIngest(engine, clock)
    box = box_for(dovecot, password="", password_env="MAILGATE_TEST_IMAP_PASSWORD")
    fetcher = ImapFetcher(box, engine, ingest, clock)
    try:
        assert fetcher.fetch_once() == 1
    finally:
        fetcher.close()

    wrong = ImapFetcher(box_for(dovecot, password="wrong"), engine, ingest, clock)
    with pytest.raises(LoginError):
        wrong.fetch_once()
    with pytest.raises(ConfigError, match="MAILGATE_TEST_UNSET"):
        mailbox_password(box_for(dovecot, password_env="MAILGATE_TEST_UNSET"), env={})


def test_oauth2_token_from_a_command_or_a_file(tmp_path: Path) -> None:
    box = ImapMailbox(host="imap.example.com", user="support@example.com",
                      oauth2_token_command=("printf", "ya29.token-from-command\\n"))
    assert oauth2_token(box) == "ya29.token-from-command"
    token_file = tmp_path / "token"
    token_file.write_text("ya29.token-from-file\n")
    box = ImapMailbox(host="imap.example.com", user="support@example.com",
                      oauth2_token_file=str(token_file))
    assert oauth2_token(box) == "ya29.token-from-file"


def test_a_mailbox_message_becomes_a_ticket(
    dovecot: Dovecot, engine: Engine, clock: FixedClock, tmp_path: Path, database_url: str
) -> None:
    from ticketing.desk import Desk

    desk = Desk.create(make_settings(tmp_path, database_url), engine=engine, clock=clock)
    append(dovecot, 1, 2)
    fetcher = ImapFetcher(box_for(dovecot, move_to="Processed"), engine, partial(ingest, desk), clock)
    try:
        assert fetcher.fetch_once() == 2
    finally:
        fetcher.close()
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Ticket)).one() == 2
        routes = set(session.exec(select(Message.route).where(Message.direction == "in")).all())
    assert routes == {f"imap:{box_for(dovecot).key}"}
    assert contents(dovecot, "INBOX") == {}
    assert len(contents(dovecot, "Processed")) == 2


def _tls_dovecot_config(folder: Path) -> tuple[str, Path, int]:
    """Dovecot config lines for TLS on a certificate for 127.0.0.1 (made with openssl),
    with an IMAPS listener beside the STARTTLS one; the certificate; the IMAPS port."""
    from tests.servers import free_port, self_signed_certificate

    cert, key = self_signed_certificate(folder, "imap")
    port = free_port()
    config = (
        f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n"
        "service imap-login {\n  inet_listener imaps {\n"
        f"    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
    )
    return config, cert, port


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_and_starttls_logins_verify_the_server_certificate(
    security: str, engine: Engine, clock: FixedClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, cert, imaps_port = _tls_dovecot_config(tmp_path)
    with running_dovecot(config) as server:
        append(server, 1)
        port = imaps_port if security == "tls" else server.port
        box = box_for(server, port=port, security=security)
        ingest = RecordingIngest(engine, clock)

        # A certificate nobody vouches for: no login, nothing fetched.
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
        untrusted = ImapFetcher(box, engine, ingest, clock)
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                untrusted.fetch_once()
        finally:
            untrusted.close()
        assert ingest.calls == []

        # Trusted (as a private CA is, by SSL_CERT_FILE): the mail comes in over TLS.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        fetcher = ImapFetcher(box, engine, ingest, clock)
        try:
            assert fetcher.fetch_once() == 1
        finally:
            fetcher.close()
        assert ingest.calls == [mid(1)]
        logins = _logins(server, more_than=1)
    # Dovecot's own record of the sessions: the test's own login, to append (plain), and
    # the one good login of ours, over TLS. Its log process may write them late, and in
    # either order.
    assert len(logins) == 2, logins
    assert len([line for line in logins if ", TLS" in line]) == 1, logins


def _logins(server: Dovecot, more_than: int) -> list[str]:
    """Dovecot's log lines of successful logins, once there are more than `more_than`
    (its log process may write late: seconds late on a busy machine, and a count taken
    too early would call the test's own login the fetcher's)."""
    deadline = time.monotonic() + 60
    while True:
        text = server.log.read_text(errors="replace") if server.log.exists() else ""
        found = [line for line in text.splitlines() if "Login: user=<" in line]
        if len(found) > more_than or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_two_processes_on_one_database_take_turns_at_a_mailbox(
    dovecot: Dovecot, engine: Engine, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    append(dovecot, 1, 2)
    ingest = RecordingIngest(engine, clock)
    box = box_for(dovecot, move_to="Processed")
    first = ImapFetcher(box, engine, ingest, clock, holder="machine-a:1")
    second = ImapFetcher(box, engine, ingest, clock, holder="machine-b:1")
    try:
        assert first.fetch_once() == 2
        append(dovecot, 3)
        # While the first holds the mailbox the second stands by, without logging in.
        with caplog.at_level(logging.INFO, logger="mailgate.imap"):
            assert second.fetch_once() == 0
        assert "worked by machine-a:1" in caplog.text
        assert second._client is None
        assert first.fetch_once() == 1

        # The first stalls (its connection gone, its lease not renewed): once the lease
        # has run out the second takes over, and the first, back, stands by.
        first._drop()
        append(dovecot, 4)
        clock.advance(seconds=first.lease.total_seconds() - 1)
        assert second.fetch_once() == 0
        clock.advance(seconds=2)
        assert second.fetch_once() == 1
        assert first.fetch_once() == 0
        assert first.standing_by and first._client is None

        # A clean stop hands the mailbox over at once.
        second.close()
        append(dovecot, 5)
        assert first.fetch_once() == 1
    finally:
        first.close()
        second.close()
    assert ingest.calls == [mid(n) for n in range(1, 6)]  # each message fetched once
    assert sorted(contents(dovecot, "Processed")) == sorted(mid(n) for n in range(1, 6))
    assert contents(dovecot, "INBOX") == {}


def test_a_pass_longer_than_the_lease_keeps_the_mailbox(
    dovecot: Dovecot, engine: Engine, clock: FixedClock
) -> None:
    append(dovecot, 1, 2, 3, 4)
    box = box_for(dovecot, move_to="Processed")
    ingest = RecordingIngest(engine, clock)
    second = ImapFetcher(box, engine, ingest, clock, holder="machine-b:1")
    taken_by_second: list[int] = []

    def slow(calls: int, key: str) -> None:
        # Each mail takes 60% of the lease; meanwhile the other process looks in.
        clock.advance(seconds=first.lease.total_seconds() * 0.6)
        taken_by_second.append(second.fetch_once())

    ingest.fail = slow
    first = ImapFetcher(box, engine, ingest, clock, holder="machine-a:1")
    try:
        assert first.fetch_once() == 4
    finally:
        first.close()
        second.close()
    assert taken_by_second == [0, 0, 0, 0]
    assert ingest.calls == [mid(n) for n in range(1, 5)]  # each once, in order


def test_fetch_once_says_when_another_process_holds_the_mailbox(
    dovecot: Dovecot, tmp_path: Path, database_url: str
) -> None:
    from tests.test_cli import run, write_config
    from ticketing.clock import SystemClock
    from ticketing.db import make_engine

    clock = SystemClock()  # the command below reads the real time too

    append(dovecot, 1)
    config = write_config(tmp_path, database_url)
    config.write_text(config.read_text() + (
        f'[[imap]]\nhost = "{dovecot.host}"\nport = {dovecot.port}\nsecurity = "none"\n'
        f'user = "{dovecot.user}"\npassword = "{dovecot.password}"\n'))
    engine = make_engine(database_url)
    box = box_for(dovecot)
    serving = ImapFetcher(box, engine, RecordingIngest(engine, clock), clock, holder="serve:1")
    try:
        assert serving._hold()  # a running serve holds the mailbox
        held = run(config, "fetch", "--once")
    finally:
        serving.close()  # and lets go
    free = run(config, "fetch", "--once")
    engine.dispose()
    assert held.returncode == 75, held.stderr
    assert b"being fetched by another process" in held.stderr
    assert free.returncode == 0, free.stderr
    assert b"1 message(s) ingested" in free.stdout


def test_a_fetcher_that_lost_the_mailbox_mid_message_does_not_set_the_new_one_back(
    dovecot: Dovecot, engine: Engine, clock: FixedClock
) -> None:
    append(dovecot, 1, 2, 3)
    box = box_for(dovecot)  # no move_to: a position set back would fetch 2 and 3 again
    ingest = RecordingIngest(engine, clock)
    second = ImapFetcher(box, engine, ingest, clock, holder="machine-b:1")
    stalled: list[int] = []

    def stall_once(calls: int, key: str) -> None:
        # The first fetcher's first mail takes longer than its whole lease; meanwhile
        # the other process takes the mailbox and fetches everything there.
        if not stalled:
            stalled.append(calls)
            clock.advance(seconds=first.lease.total_seconds() + 1)
            assert second.fetch_once() == 3

    ingest.fail = stall_once
    first = ImapFetcher(box, engine, ingest, clock, holder="machine-a:1")
    try:
        assert first.fetch_once() == 1  # the mail in hand, then it stops
        assert first.standing_by
        append(dovecot, 4)
        assert second.fetch_once() == 1
    finally:
        first.close()
        second.close()
    # The stalled mail came twice (ingest stores it once); nothing else was fetched again.
    assert ingest.calls == [mid(1), mid(1), mid(2), mid(3), mid(4)]
    assert stored(engine) == sorted(mid(n) for n in range(1, 5))
