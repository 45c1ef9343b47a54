"""The SMTP listener: RCPT check, DATA -> ingest -> 250 after the commit, 451 on a fault.

Mails that arrive together are committed together (mailgate/commitqueue.py)."""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from mailgate.commitqueue import CommitQueue
from mailgate.handoff import HELO_NAME
from ticketing.conversation import is_ours, is_postmaster
from ticketing.db import StorageError
from ticketing.desk import Desk
from ticketing.inbound import Inbound

log = logging.getLogger(__name__)

ALL_CLIENTS = "*"  # the key counting every connection (no client address is "*")


class SupportHandler:
    """aiosmtpd handler: only our support addresses, and 250 only once the mail is stored."""

    def __init__(self, desk: Desk, executor: Executor, storing: Executor) -> None:
        self.desk = desk
        self.executor = executor
        self.commits = CommitQueue(desk, executor, storing)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        settings = self.desk.settings
        if not is_ours(address, settings) and not is_postmaster(address, settings):
            # We are no open relay: only the support addresses (and their +tokens) take mail.
            return f"550 5.1.1 <{address}>: no such mailbox here"
        if len(envelope.rcpt_tos) >= settings.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        inbound = Inbound(
            raw=raw,
            route=_route(session),
            envelope_sender=envelope.mail_from or "<>",  # MAIL FROM:<> (a bounce)
            envelope_recipients=tuple(envelope.rcpt_tos),
            authenticated=bool(getattr(session, "authenticated", False)),
            peer=session.peer[0] if isinstance(session.peer, tuple) else "",
        )
        storing = server if isinstance(server, GuardedSMTP) else None
        if storing is not None:
            storing.storing = True
        try:
            outcome = await self.commits.ingest(inbound)
        except StorageError as exc:
            log.error("storage fault, answered 451: %s", exc)
            return "451 4.3.0 Temporary storage failure; please try again later"
        except Exception:
            log.exception("ingest failed, answered 451")
            return "451 4.3.0 Temporary failure; please try again later"
        finally:
            if storing is not None:
                storing.storing = False
        ticket = f" ticket #{outcome.ticket}" if outcome.ticket else ""
        return f"250 2.0.0 OK {outcome.status}{ticket}"


def _route(session: Session) -> str:
    """"pipe" for `mailgate deliver` handing over on loopback, else "smtp"."""
    peer = session.peer[0] if isinstance(session.peer, tuple) else ""
    if session.host_name == HELO_NAME and peer in ("127.0.0.1", "::1"):
        return "pipe"
    return "smtp"


class GuardedSMTP(SMTP):
    """aiosmtpd's SMTP with a cap on concurrent connections per client address."""

    # RFC 5321 allows 1,000 octets a line, but real senders write longer (HTML on one
    # line, giant headers); refusing them would lose real requests. Memory stays bounded
    # by this and by the message size limit.
    line_length_limit = 4 * 1024 * 1024

    def __init__(self, *args: Any, per_client: Counter[str], limit: int, total_limit: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._per_client = per_client
        self._limit = limit
        self._total_limit = total_limit
        self._peer_host = ""
        self._counted = False
        # True while a mail this client sent is being stored: the client waits for our
        # answer then, and is not idle.
        self.storing = False
        # True while the mail itself comes, after our 354.
        self._receiving = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of a MAIL or RCPT command and the rest of its line, read by the
        stdlib's address parser as aiosmtpd reads it ("" for none, None for one that does
        not parse or whose local part is too long), but without the typing class that
        aiosmtpd 1.4 builds at each call: a quarter of the listener's own time a mail."""
        if not arg:
            return "", ""
        try:
            parsed, rest = (get_angle_addr(arg) if arg.lstrip().startswith("<")
                            else get_addr_spec(arg))
        except HeaderParseError:
            return None, None
        address = str(parsed.addr_spec)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, str(rest)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer_host = str(peer[0]) if peer else ""
        self._count(+1)
        refusal = ""
        if self._limit and self._per_client[self._peer_host] > self._limit:
            log.warning("refusing %s: more than %d connections", self._peer_host, self._limit)
            refusal = "421 4.7.0 Too many connections from your address"
        elif self._total_limit and self._per_client[ALL_CLIENTS] > self._total_limit:
            # Every connection holds a file descriptor: past the ceiling a client is
            # told to come back, before the process runs out of them.
            log.warning("refusing %s: %d connections in all (smtp.max_connections)",
                        self._peer_host, self._total_limit)
            refusal = "421 4.7.0 Too many connections; try again later"
        if refusal:
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(refusal.encode() + b"\r\n")
            transport.close()
            self._count(-1)
            return
        super().connection_made(transport)

    def _timeout_cb(self) -> None:
        # The timeout is for a client that stops talking. Closing on one that waits for
        # our reply to DATA would leave it unanswered for a mail we may have stored (a
        # large one takes a while), and it would send it again.
        if self.storing:
            self._reset_timeout()
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def data_received(self, data: bytes) -> None:
        # A client sending its mail is not idle either: the timeout counts from the last
        # bytes of it that came (RFC 5321 4.5.3.2.5 times each block of data, not the
        # whole mail), or a large mail on a slow line would never get in.
        if self._receiving:
            self._reset_timeout()
        super().data_received(data)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd keeps every line of a mail as an object of its own and joins them at
        # the end: three to four times a large mail's size at once. Here each line goes
        # into one growing buffer as it comes, and that buffer becomes the mail.
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
        mail = io.BytesIO()
        self._receiving = True
        try:
            refusal = await self._receive(mail)
        finally:
            self._receiving = False
        if refusal is None:
            return  # the connection is gone before the end of the mail
        if refusal:
            await self.push(refusal)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        raw = mail.getvalue()  # the buffer itself, no copy
        del mail
        envelope.original_content = raw
        envelope.content = raw.decode("utf-8", "surrogateescape") if self._decode_data else raw
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _receive(self, mail: io.BytesIO) -> str | None:
        """Read the mail up to the line holding one dot, dots doubled at a line's start
        undone (RFC 5321 4.5.2). Returns the refusal to answer once the whole mail is in
        (552 past the size limit, 500 for a line longer than line_length_limit), '' for
        none, None when the connection closed first.

        The mail is read in large pieces, not line by line (a 68 MB mail is a million
        lines): each piece ends at a dot before CRLF, or is as much as the reader holds
        without one. Such a dot ends the mail when it starts a line."""
        limit = self.data_size_limit
        refusal = ""
        size = 0
        last = b"\r\n"  # the last bytes read: the DATA command's own CRLF at first
        line = 0  # the length of the line read last, while it is unfinished
        held = b""  # a CR that ended the last piece: the next may start with its LF
        while self.transport is not None:
            try:
                piece = await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:
                # No dot before CRLF in all the reader holds: all of it but the last
                # bytes, which may begin one, is mail.
                piece = await self._reader.read(exc.consumed)
            except asyncio.CancelledError:
                self._writer.close()
                raise
            if not piece:
                return None
            ends = (last + piece[-5:]).endswith(b"\r\n.\r\n")
            line_start = last.endswith(b"\r\n")
            line = self._line_after(piece, line, last.endswith(b"\r"))
            last = piece[-2:]
            if ends:
                piece = piece[:-3]
            size += len(piece)
            if line < 0:
                refusal = refusal or "500 Line too long (see RFC5321 4.5.3.1.6)"
            if limit and size > limit:
                refusal = refusal or "552 Error: Too much mail data"
            if refusal:
                held = b""
                if mail.tell():
                    mail.seek(0)
                    mail.truncate()  # nothing of a refused mail is kept while the rest comes
            else:
                text = held + piece
                if line_start and text.startswith(b"."):
                    text = text[1:]
                text = text.replace(b"\r\n.", b"\r\n")
                held = b"\r" if text.endswith(b"\r") and not ends else b""
                mail.write(memoryview(text)[: len(text) - len(held)])
            if ends:
                return refusal
        return None

    def _line_after(self, piece: bytes, line: int, cr: bool) -> int:
        """The length of the line piece leaves unfinished, given that of the line before
        it (cr: that one ended in a CR); -1 once a line is longer than line_length_limit."""
        most = self.line_length_limit
        start = 0
        if cr and piece.startswith(b"\n"):
            line, start = 0, 1  # the CR and this LF end the line before
        first = piece.find(b"\r\n", start)
        if first < 0:
            line += len(piece) - start
        else:
            if line + first - start > most:
                return -1
            end = piece.rfind(b"\r\n")
            if end - first - 2 > most and max(
                    map(len, piece[first + 2 : end].split(b"\r\n"))) > most:
                return -1
            line = len(piece) - end - 2
        # A CR at the end may be the first half of the CRLF that ends the line.
        return line if line - piece.endswith(b"\r") <= most else -1

    def _count(self, step: int) -> None:
        if (step > 0) == self._counted:
            return
        self._counted = step > 0
        for key in (self._peer_host, ALL_CLIENTS):
            self._per_client[key] += step
            if self._per_client[key] <= 0:
                del self._per_client[key]

    def connection_lost(self, error: Exception | None) -> None:
        self._count(-1)
        super().connection_lost(error)


def smtp_factory(desk: Desk, executor: Executor, storing: Executor) -> Callable[[], SMTP]:
    settings = desk.settings.smtp
    handler = SupportHandler(desk, executor, storing)
    per_client: Counter[str] = Counter()
    tls_context = None
    if settings.tls_cert and settings.tls_key:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(settings.tls_cert, settings.tls_key)

    def factory() -> SMTP:
        return GuardedSMTP(
            handler,
            per_client=per_client,
            limit=settings.max_connections_per_client,
            total_limit=settings.max_connections,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=desk.settings.support.domain,
            ident="mailgate",
            timeout=float(settings.timeout),
            tls_context=tls_context,
            require_starttls=False,
        )

    return factory
