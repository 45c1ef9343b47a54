"""Real servers for end-to-end tests: a relay that keeps what it receives, and mailgate serving."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from functools import cached_property
from typing import Any, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, syntax
from sqlalchemy import Engine, or_
from sqlmodel import col, select

from tests.servers import free_port
from ticketing.clock import Clock, SystemClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Outbox, Page

T = TypeVar("T")

# The desks whose `serve` runs now in this process (see serving()).
_serving: list[Desk] = []


def busy(engine: Engine, clock: Clock) -> bool:
    """Whether mail or a page is still to be sent now: due, or being sent."""
    now = clock.now()
    with transaction(engine) as session:
        for table in (Outbox, Page):
            waiting = session.exec(select(table.id).where(
                col(table.status) == "pending",
                or_(col(table.next_attempt_at) <= now, col(table.claimed_until).is_not(None)),
            ).limit(1)).first()
            if waiting is not None:
                return True
    return False


def wait_until_sent(engine: Engine, clock: Clock | None = None, timeout: float = 30.0) -> None:
    """Return once the workers serving this database have sent every mail and page that
    is due: each has reached its relay or hook, or waits for a later attempt (on `clock`,
    the serving desk's). Fails after `timeout` seconds."""
    clock = clock or SystemClock()
    deadline = time.monotonic() + timeout
    while busy(engine, clock):
        if time.monotonic() > deadline:
            raise AssertionError(f"mail or pages still unsent after {timeout} s")
        time.sleep(0.02)


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    connection: int = 0  # which connection to the relay carried it, counted from 1

    @cached_property
    def message(self) -> EmailMessage:
        # Parsed once: tests read a mail's text, then its parts (a large mail takes the
        # stdlib a tenth of a second and more). Tests only read it.
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def text(self) -> str:
        return self._text

    @cached_property
    def _text(self) -> str:
        # Read once: wait_for asks again on each look at the mails received so far.
        body = self.message.get_body(("plain",))
        return body.get_content() if body is not None else ""  # type: ignore[no-any-return]


class OffersPipelining:
    """An aiosmtpd handler whose EHLO offers PIPELINING (RFC 2920), as most relays do,
    when its `pipelining` is set."""

    pipelining = False

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses


class _Sink(OffersPipelining):
    def __init__(self, mails_per_connection: int = 0, pipelining: bool = False) -> None:
        self.received: list[Received] = []
        self.changed = threading.Condition()
        self.mails_per_connection = mails_per_connection
        self.pipelining = pipelining
        self._connections: list[Any] = []  # aiosmtpd's session object of each connection
        self._taken: dict[int, int] = {}  # mails taken on each connection

    def _connection(self, session: Any) -> int:
        for number, known in enumerate(self._connections, 1):
            if known is session:
                return number
        self._connections.append(session)
        return len(self._connections)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        number = self._connection(session)
        if self.mails_per_connection and self._taken.get(number, 0) >= self.mails_per_connection:
            # As relays that limit the mails on one connection do: say so, and hang up.
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.7.0 Too many messages on this connection"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.changed:
            number = self._connection(session)
            self._taken[number] = self._taken.get(number, 0) + 1
            self.received.append(
                Received(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content,
                         number)
            )
            self.changed.notify_all()
        return "250 OK"


class _PieceReadingSMTP(SMTP):
    """aiosmtpd's server, reading the mail after DATA in pieces that end at a dot before
    CRLF, or at the reader's limit without one, instead of line by line: aiosmtpd runs
    some twenty statements a line, about half a second of CPU for a mail of eight
    megabytes (a confirmation quoting a large request). It keeps and answers what
    aiosmtpd does: the lines up to the one holding a dot, each line's leading dot
    removed; once the whole mail is in, 500 for a line longer than line_length_limit
    (with its CRLF) or 552 past data_size_limit, whichever came first."""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = bytearray()
        while not (data == b".\r\n" or data.endswith(b"\r\n.\r\n")):
            try:
                piece = await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:
                piece = await self._reader.read(exc.consumed)
            except asyncio.CancelledError:
                self._writer.close()
                raise
            data += piece
        with memoryview(data) as view:
            body = bytes(view[:-3])  # every line with its CRLF, dots as sent
        del data
        refusal = self._refusal(body)
        if refusal:
            await self.push(refusal)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        content = body.replace(b"\r\n.", b"\r\n")
        if body.startswith(b"."):
            content = content[1:]
        envelope.original_content = content
        envelope.content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    def _refusal(self, body: bytes) -> str:
        limit = self.data_size_limit
        lines = body.split(b"\r\n")
        longest = max(map(len, lines)) + 2
        if longest <= self.line_length_limit and not (limit and len(body) > limit):
            return ""
        # In aiosmtpd's order: a line past the reader's limit is refused before its bytes
        # count; any other line counts, then its length is checked.
        too_long = "500 Line too long (see RFC5321 4.5.3.1.6)"
        size = 0
        for line in lines[:-1]:
            if len(line) > self.line_length_limit:
                return too_long
            size += len(line) + 2
            if limit and size > limit:
                return "552 Error: Too much mail data"
            if len(line) + 2 > self.line_length_limit:
                return too_long
        return ""


class _RelayController(Controller):
    def factory(self) -> SMTP:
        return _PieceReadingSMTP(self.handler, **self.SMTP_kwargs)


class Relay:
    """An aiosmtpd server on loopback standing in for the company's relay: it keeps every mail."""

    def __init__(self, mails_per_connection: int = 0, pipelining: bool = False) -> None:
        self.port = free_port()
        self._sink = _Sink(mails_per_connection, pipelining)
        self._controller = _RelayController(self._sink, hostname="127.0.0.1", port=self.port,
                                            decode_data=False)

    def __enter__(self) -> Relay:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        with self._sink.changed:
            return list(self._sink.received)

    def wait_for(self, count: int, timeout: float = 10.0,
                 where: Callable[[Received], bool] = lambda r: True) -> list[Received]:
        """The received mails that match, once there are at least `count` of them; fails
        the test when they have not all come within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._sink.changed:
            while True:
                found = [r for r in self._sink.received if where(r)]
                remaining = deadline - time.monotonic()
                if len(found) >= count:
                    return found
                if remaining <= 0:
                    raise AssertionError(
                        f"{len(found)} of {count} mails reached the relay within {timeout} s: "
                        f"{[(r.rcpt_tos, r.message['Subject']) for r in found]}")
                self._sink.changed.wait(remaining)

    def settle(self, quiet: float = 0.6) -> list[Received]:
        """Everything received, once the desks serving now through this relay have sent
        all their due mail (and pages); for mail from elsewhere, once none has arrived
        for `quiet` seconds."""
        senders = [d for d in _serving if d.settings.outbound.relay == self.address]
        if senders:
            for desk in senders:
                wait_until_sent(desk.engine, desk.clock)
            return self.received
        last = -1
        while True:
            with self._sink.changed:
                count = len(self._sink.received)
            if count == last:
                return self.received
            last = count
            time.sleep(quiet)


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run in a thread of its own: the browser tests' driver keeps an event loop
    marked as running in the main thread for the whole session, where asyncio.run refuses."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="scenario")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


@contextmanager
def serving(desk: Desk) -> Iterator[int]:
    """`mailgate serve` in a thread with its own event loop; yields the SMTP port."""
    from mailgate.serve import serve

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop_holder: dict[str, asyncio.Event] = {}
    errors: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        started = asyncio.Event()
        stop_holder["stop"] = stop
        task = asyncio.create_task(serve(desk, ready=started, stop=stop))
        # A serve that fails before it is ready says why, at once.
        await asyncio.wait({task, asyncio.ensure_future(started.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            ready.set()
        await task

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            errors.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="mailgate-serve", daemon=True)
    thread.start()
    if not ready.wait(20) or errors:
        raise RuntimeError(f"mailgate serve did not start: {errors}")
    _serving.append(desk)
    try:
        yield desk.settings.smtp.port
    finally:
        _serving.remove(desk)
        loop.call_soon_threadsafe(stop_holder["stop"].set)
        thread.join(30)
        if errors:
            raise errors[0]


def send(port: int, message: EmailMessage | bytes, sender: str = "",
         recipients: list[str] | None = None, source: str = "127.0.0.1",
         ) -> dict[str, tuple[int, bytes]]:
    """Hand a mail to mailgate as the customer's mail server does: the envelope names only
    our address (the other To/Cc people get their copies from that server directly).
    `source`: the client's own loopback address (127.0.0.2 is "not our border host")."""
    recipients = recipients or ["support@example.com"]
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        if isinstance(message, bytes):
            return client.sendmail(sender, recipients, message)
        return client.send_message(message, from_addr=sender or None, to_addrs=recipients)


def request(subject: str, body: str, sender: str = "Carol Customer <carol@customer.test>",
            to: str = "support@example.com", cc: str = "", **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    if cc:
        message["Cc"] = cc
    message["Subject"] = subject
    message["Message-ID"] = email.utils.make_msgid(domain="customer.test")
    message["Date"] = email.utils.formatdate()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message
