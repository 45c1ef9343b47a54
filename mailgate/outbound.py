"""Deliver due outbox rows through the relay or into a folder; retry with backoff."""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from select import POLLIN, POLLPRI, poll
from typing import Any, Protocol

from sqlalchemy import Table, bindparam, update
from sqlmodel import Session, col, select

from mailgate.backoff import backoff
from ticketing import mime
from ticketing.audit import SYSTEM, Actor, record
from ticketing.blobs import BlobStore
from ticketing.clock import Clock
from ticketing.db import StorageError, transaction
from ticketing.desk import Desk
from ticketing.leases import OUTBOX, holder_name
from ticketing.models import Outbox
from ticketing.ratelimit import mark_bouncing
from ticketing.settings import OutboundSettings

log = logging.getLogger(__name__)

_BASE_DELAY = 30.0
_MAX_DELAY = 3600.0


class TemporaryFailure(Exception):
    """Try again later: the relay is down, busy, or answered 4xx."""


class RelayRefused(TemporaryFailure):
    """The relay refused the mail as a whole (its policy, its login): not the readers' fault."""


class _Dropped(Exception):
    """The relay closed the connection before it took the mail."""


class PermanentFailure(Exception):
    """Give up: the relay answered 5xx for every recipient."""

    def __init__(self, message: str, refused: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class Sent:
    refused: tuple[str, ...] = ()  # recipients the relay refused for good (5xx)


class Transport(Protocol):
    def send(self, row: Outbox) -> Sent: ...

    def close(self) -> None:
        """Let go of any connection kept between sends."""


def message(row: Outbox, blobs: BlobStore | None) -> Iterator[bytes]:
    """The mail as it goes out, in pieces: its stored text with the files it names
    attached, each read from the blob store as it is sent."""
    files = json.loads(row.files or "[]")
    if files and blobs is None:
        raise TemporaryFailure("no blob store to read the attached files from")
    yield from mime.with_files(row.raw, [
        (f["filename"], f["content_type"], _chunks(blobs, f["sha256"])) for f in files])


def _chunks(blobs: BlobStore | None, sha256: str) -> Iterator[bytes]:
    assert blobs is not None
    yield from blobs.chunks(sha256)


class FolderTransport:
    """One .eml file per mail: the default when no relay is set; rewriting is harmless."""

    def __init__(self, directory: Path, blobs: BlobStore | None = None) -> None:
        self.directory = directory
        self.blobs = blobs

    def send(self, row: Outbox) -> Sent:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{row.id:08d}.eml"
        temporary = self.directory / f".{name}.tmp"
        envelope = (
            f"X-Mailgate-Envelope-From: {row.mail_from}\r\n"
            f"X-Mailgate-Envelope-To: {', '.join(json.loads(row.recipients))}\r\n"
        ).encode()
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                       "wb") as handle:
            handle.write(envelope)
            for piece in message(row, self.blobs):
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.directory / name)
        return Sent()

    def close(self) -> None:
        pass


class RelayTransport:
    """SMTP to the configured relay, with STARTTLS or TLS and a login when set."""

    def __init__(self, settings: OutboundSettings, timeout: float = 60.0,
                 blobs: BlobStore | None = None) -> None:
        host, _, port = settings.relay.rpartition(":")
        self.host, self.port = host, int(port)
        self.name = f"the relay {host}:{port}"  # every error names it
        self.settings = settings
        self.timeout = timeout
        self.blobs = blobs
        self._client: smtplib.SMTP | None = None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()

    def _session(self) -> smtplib.SMTP:
        """The open connection, or a new one: one connection serves a batch.

        A finished mail leaves the relay ready for the next (RFC 5321 4.1.4), so a kept
        connection needs no RSET; one the relay has closed or spoken on unasked (a 421
        before it hangs up) is readable before we say anything: a new one replaces it."""
        client = self._client
        if client is not None:
            if not _readable(client):
                return client
            client.close()
            self._client = None
        self._client = self._connect()
        return self._client

    def _connect(self) -> smtplib.SMTP:
        if self.settings.tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.settings.starttls:
            client.starttls(context=ssl.create_default_context())
        if self.settings.username:
            client.login(self.settings.username, self.settings.password)
        # What the relay offers (SMTPUTF8, PIPELINING) is known before the first mail.
        client.ehlo_or_helo_if_needed()
        return client

    def send(self, row: Outbox) -> Sent:
        try:
            raw = b"".join(message(row, self.blobs))
        except OSError as exc:  # a file it names cannot be read here now
            raise TemporaryFailure(f"attached file: {exc}") from exc
        if self._client is not None:
            try:
                return self._send(row, raw)
            except _Dropped:
                # A relay may end a connection it has kept open (after so many mails on
                # it): the mail was not taken, and goes again on a new connection.
                log.info("%s closed the connection; sending <%s> on a new one", self.name,
                         row.message_id)
        try:
            return self._send(row, raw)
        except _Dropped as exc:
            raise self._refused(str(exc)) from exc.__cause__

    def _send(self, row: Outbox, raw: bytes) -> Sent:
        recipients = json.loads(row.recipients)
        options: list[str] = []
        try:
            client = self._session()
            if not all(a.isascii() for a in (row.mail_from, *recipients)):
                # RFC 6531: an internationalised address needs a relay that takes SMTPUTF8.
                if not client.has_extn("smtputf8"):
                    raise PermanentFailure(
                        f"{self.name} does not offer SMTPUTF8 for a non-ASCII address")
                options.append("SMTPUTF8")
            refused = _sendmail(client, row.mail_from, recipients, raw, options)
        except smtplib.SMTPRecipientsRefused as exc:
            answers = {r: (code, _text(message)) for r, (code, message) in exc.recipients.items()}
            code, text = next(iter(answers.values()))
            if (len(answers) > 1 and len({_without(r, t) for r, (_, t) in answers.items()}) == 1
                    and not _ENHANCED_READER.match(text)):
                # The same refusal for every recipient is about us, not about them
                # (unless its code says "no such mailbox" for each).
                raise self._refused(f"every recipient refused: {code} {text}") from exc
            readers = tuple(r for r, (code, text) in answers.items() if _about_recipient(code, text))
            if readers and len(readers) == len(answers):
                raise PermanentFailure(f"{self.name}: all recipients refused: {answers}",
                                       readers) from exc
            if any(code >= 500 for code, _ in answers.values()):
                raise self._refused(f"recipients refused: {answers}") from exc
            raise TemporaryFailure(f"{self.name}: recipients refused for now: {answers}") from exc
        except smtplib.SMTPSenderRefused as exc:
            if exc.smtp_code == 421:
                # The relay closes the connection at MAIL FROM: nothing of this mail
                # was taken.
                self.close()
                raise _Dropped(f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
            raise self._refused(f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
        except (smtplib.SMTPDataError, smtplib.SMTPAuthenticationError) as exc:
            # A refusal at MAIL FROM, DATA or the login says nothing about the readers.
            raise self._refused(f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600:
                raise self._refused(f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
            raise TemporaryFailure(f"{self.name} answered {exc.smtp_code} {_text(exc.smtp_error)}"
                                   ) from exc
        except (TimeoutError, OSError, smtplib.SMTPException) as exc:
            self.close()
            raise TemporaryFailure(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        permanent = tuple(r for r, (code, message) in refused.items()
                          if _about_recipient(code, _text(message)))
        others = {r: answer for r, answer in refused.items() if r not in permanent}
        if others:
            log.error("<%s> the relay %s:%s refused some recipients, not for a fault of "
                      "theirs; they do not get this mail: %s", row.message_id, self.host,
                      self.port, others)
        return Sent(permanent)

    def _refused(self, answer: str) -> RelayRefused:
        return RelayRefused(f"{self.name} refused the mail: {answer}")


def _sendmail(client: smtplib.SMTP, mail_from: str, recipients: list[str], raw: bytes,
              options: list[str]) -> dict[str, tuple[int, bytes]]:
    """smtplib's sendmail, with the same answers raising the same exceptions; where the
    relay offers PIPELINING (RFC 2920), MAIL, every RCPT and DATA go in one write and
    their answers are read after: one round trip for the envelope, not one a command."""
    if not client.has_extn("pipelining"):
        return client.sendmail(mail_from, recipients, raw, mail_options=options)
    options = [*([f"size={len(raw)}"] if client.has_extn("size") else []), *options]
    if any(option.upper() == "SMTPUTF8" for option in options):
        client.command_encoding = "utf-8"
    envelope = [f"mail FROM:{smtplib.quoteaddr(mail_from)}{''.join(' ' + o for o in options)}",
                *(f"rcpt TO:{smtplib.quoteaddr(r)}" for r in recipients), "data"]
    if any("\r" in line or "\n" in line for line in envelope):
        raise ValueError("a command to the relay may not hold CR or LF")  # as smtplib's
    client.send("".join(line + "\r\n" for line in envelope))
    code, answer = client.getreply()
    if code != 250:
        # The rest of the group was refused for want of a sender (or the relay hung up
        # on it, or took DATA anyway: then only hanging up ends the mail unsent).
        _end_mail(client, code == 421 or not _rest_refused(client, len(recipients) + 1))
        raise smtplib.SMTPSenderRefused(code, answer, mail_from)
    refused: dict[str, tuple[int, bytes]] = {}
    for recipient in recipients:
        code, answer = client.getreply()
        if code not in (250, 251):
            refused[recipient] = (code, answer)
        if code == 421:
            client.close()
            raise smtplib.SMTPRecipientsRefused(refused)
    nobody = len(refused) == len(recipients)
    try:
        code, answer = client.getreply()  # to DATA
    except smtplib.SMTPServerDisconnected:
        if nobody:  # every reader refused, and the relay hung up after saying so
            raise smtplib.SMTPRecipientsRefused(refused) from None
        raise
    if nobody or code != 354:
        # DATA taken with no one to deliver to: only hanging up ends it unsent.
        _end_mail(client, code in (354, 421))
        if nobody:
            raise smtplib.SMTPRecipientsRefused(refused)
        raise smtplib.SMTPDataError(code, answer)
    body = _DOT_LINE.sub(b"..", raw)
    client.send(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
    code, answer = client.getreply()
    if code != 250:
        _end_mail(client, code == 421)
        raise smtplib.SMTPDataError(code, answer)
    return refused


def _rest_refused(client: smtplib.SMTP, count: int) -> bool:
    """Read the answers to the rest of a pipelined group whose MAIL was refused: True
    when each is a refusal and the connection stays usable."""
    try:
        return all(client.getreply()[0] not in (354, 421) for _ in range(count))
    except smtplib.SMTPServerDisconnected:
        return False


_DOT_LINE = re.compile(rb"(?m)^\.")


def _end_mail(client: smtplib.SMTP, hang_up: bool) -> None:
    """After a refused mail: close the connection (the relay is closing it, or it cannot
    be left ready for the next mail), or RSET it; a relay gone meanwhile is found by the
    next mail."""
    if hang_up:
        client.close()
        return
    try:
        client.rset()
    except smtplib.SMTPServerDisconnected:
        pass


def _readable(client: smtplib.SMTP) -> bool:
    """Anything to read on a connection that waits for our next command: the relay has
    closed it, spoken unasked, or it is broken. A look that does not wait."""
    sock = client.sock
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    # poll, not select: select cannot watch a descriptor numbered 1024 or more, which a
    # serve holding many SMTP connections gives its relay connection.
    watch = poll()
    try:
        watch.register(sock, POLLIN | POLLPRI)
        return bool(watch.poll(0))  # POLLHUP and POLLERR are reported unasked
    except (OSError, ValueError):
        return True


# RFC 3463: X.1.x is about the address, X.2.x about the mailbox: the reader's own
# failure. X.7.x (policy, "relay access denied", authentication), X.3.x, X.4.x and
# X.5.x are about the relay, the network or our mail.
_ENHANCED = re.compile(r"^\s*5\.(\d{1,3})\.\d{1,3}\b")
_ENHANCED_READER = re.compile(r"^\s*5\.[12]\.\d{1,3}\b")
_RELAY_WORDS = re.compile(r"relay|auth|access denied|not permitted|policy", re.IGNORECASE)


def _text(message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return " ".join(text.split())[:500]


def _without(address: str, text: str) -> str:
    return text.replace(address, "").replace(address.lower(), "")


def _about_recipient(code: int, text: str) -> bool:
    """A permanent refusal that names the recipient as the fault (unknown, disabled)."""
    if not 500 <= code < 600:
        return False
    enhanced = _ENHANCED.match(text)
    if enhanced:
        return enhanced.group(1) in ("1", "2")
    # No enhanced code (RFC 5321 alone): 550/551/553 are about the mailbox, unless
    # the words say it is the relay's policy.
    return code in (550, 551, 553) and not _RELAY_WORDS.search(text)


def transport_for(desk: Desk) -> Transport:
    if desk.settings.outbound.relay:
        return RelayTransport(desk.settings.outbound, blobs=desk.blobs)
    return FolderTransport(desk.settings.outbound_directory, desk.blobs)


def mail_backoff(attempts: int, base: float = _BASE_DELAY) -> timedelta:
    """30 s, 1 min, 2 min ... capped at an hour, give or take a fifth."""
    return timedelta(seconds=backoff(attempts, base, _MAX_DELAY, (0.8, 1.2)))


def _due(now: Any) -> Any:
    return (col(Outbox.status) == "pending", col(Outbox.next_attempt_at) <= now, OUTBOX.free(now))


# Built once, on the table (not through the ORM): the worker runs them for every mail.
# The next due row, skipping rows another PostgreSQL transaction has locked (SQLite has
# one writer and no FOR UPDATE); the UPDATE checks it is still due, so a row is won once
# whatever the isolation.
_OUTBOX: Table = Outbox.__table__  # type: ignore[attr-defined]
_NEXT_DUE = (
    select(_OUTBOX.c.id).where(*_due(bindparam("now"))).order_by(_OUTBOX.c.id).limit(1)
    .with_for_update(skip_locked=True).scalar_subquery()
)
_CLAIM = (
    update(_OUTBOX).where(_OUTBOX.c.id == _NEXT_DUE, *_due(bindparam("now")))
    .values(OUTBOX.take(bindparam("worker"), bindparam("until")))
    .returning(*_OUTBOX.c)
)
_ANY_DUE = select(_OUTBOX.c.id).where(*_due(bindparam("now"))).limit(1)
_SENT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("row"), OUTBOX.held_by(bindparam("worker")))
    .values(status="sent", attempts=_OUTBOX.c.attempts + 1, sent_at=bindparam("now"),
            last_error="", **OUTBOX.let_go())
)

_SENT_LATE = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("row"), _OUTBOX.c.status == "pending")
    .values(status="sent", attempts=_OUTBOX.c.attempts + 1, sent_at=bindparam("now"),
            last_error="", **OUTBOX.let_go())
)


@dataclass(frozen=True)
class Attempt:
    """What one send gave: sent (perhaps with some recipients refused), or an error."""

    row: Outbox
    sent: Sent | None = None
    error: str = ""
    permanent: bool = False
    refused: tuple[str, ...] = ()
    relay: bool = False  # the relay refused it as a whole: its problem, said loudly


def _claim(session: Session, desk: Desk, worker: str) -> Outbox | None:
    """Take the next due mail for this worker alone, just before sending it.

    A conditional UPDATE wins each row once across threads, processes and machines on
    one database; the lease runs out only if the worker dies, so no batch can outlive it.
    """
    lease = timedelta(seconds=desk.settings.outbound.lease)
    # The statements below go to the connection, past the session: a result recorded
    # on loaded rows in this transaction is written first, or the claim would not see it.
    session.flush()
    connection = session.connection()
    for _ in range(5):  # another worker may win the row we picked: pick again
        now = desk.clock.now()
        params = {"now": now, "worker": worker, "until": now + lease}
        claimed = connection.execute(_CLAIM, params).mappings().first()
        if claimed is not None:
            # Not in the session: the row as it stands once claimed, to send and record.
            return Outbox.model_construct(**claimed)
        if connection.execute(_ANY_DUE, {"now": now}).first() is None:
            return None
    return None


def claim_next(desk: Desk, worker: str) -> Outbox | None:
    with transaction(desk.engine) as session:
        return _claim(session, desk, holder_name(worker))


def send_due(desk: Desk, transport: Transport, worker: str, limit: int = 20,
             unrecorded: list[Attempt] | None = None, keep_open: bool = False) -> int:
    """Send up to `limit` due mails over one relay connection; returns how many were sent.
    `keep_open`: the connection stays open for the next pass (the caller closes it);
    else it is closed when the pass ends.

    Each send's result is recorded in the same short transaction that claims the next
    mail: one commit a mail, and a mail is held only while it is being sent. Those
    commits do not wait for the disk: a power cut that loses one (never a mail taken
    in, whose commits do wait) has the mail sent again once its lease runs out, as
    when the relay took it and the answer never came.

    A send the database could not record (it went away) is kept in `unrecorded`, which
    the caller passes again: those are recorded first once the database is back, so the
    mail is not sent a second time when its lease runs out.
    """
    worker = holder_name(worker)
    kept = unrecorded if unrecorded is not None else []
    sent = 0
    previous: Attempt | None = None
    try:
        if kept:
            with transaction(desk.engine, durable=False) as session:
                for attempt in kept:
                    _record_attempt(session, desk, attempt, worker, late=True)
            log.warning("recorded %d send(s) made while the database was away", len(kept))
            kept.clear()
        for _ in range(limit):
            try:
                with transaction(desk.engine, durable=False) as session:
                    if previous is not None:
                        _record_attempt(session, desk, previous, worker)
                    row = _claim(session, desk, worker)
            except StorageError:
                _keep(kept, previous)
                raise
            previous = None
            if row is None:
                break
            previous = _attempt(transport, row)
            sent += previous.sent is not None
        if previous is not None:
            try:
                with transaction(desk.engine, durable=False) as session:
                    _record_attempt(session, desk, previous, worker)
            except StorageError:
                _keep(kept, previous)
                raise
    except BaseException:
        transport.close()
        raise
    if not keep_open:
        transport.close()
    return sent


def _keep(kept: list[Attempt], attempt: Attempt | None) -> None:
    if attempt is not None:
        kept.append(attempt)
        log.error("<%s> %s, but the database could not record it; kept to record "
                  "once it is back", attempt.row.message_id,
                  "sent" if attempt.sent is not None else "tried")


def _attempt(transport: Transport, row: Outbox) -> Attempt:
    try:
        return Attempt(row, sent=transport.send(row))
    except RelayRefused as exc:
        return Attempt(row, error=str(exc), relay=True)
    except TemporaryFailure as exc:
        return Attempt(row, error=str(exc))
    except PermanentFailure as exc:
        return Attempt(row, error=str(exc), permanent=True, refused=exc.refused)
    except Exception as exc:  # a transport bug: retry rather than lose the mail
        log.exception("outbox %s: unexpected failure", row.id)
        # The relay connection may be left in the middle of this mail: the next one
        # starts on a new connection.
        transport.close()
        return Attempt(row, error=f"{type(exc).__name__}: {exc}")


def _record_attempt(session: Session, desk: Desk, attempt: Attempt, worker: str,
            late: bool = False) -> None:
    row = attempt.row
    if attempt.sent is not None and not attempt.sent.refused:
        # The common case in one statement; the lease check is in its WHERE. A send
        # recorded late counts whoever holds the mail now: it went out.
        done = session.connection().execute(
            _SENT_LATE if late else _SENT,
            {"row": row.id, "worker": worker, "now": desk.clock.now()})
        if done.rowcount != 1:
            log.warning("outbox %s: no longer held by %s; leaving it", row.id, worker)
        else:
            log.info("[#%s] <%s> sent to %s", row.ticket_id or "-", row.message_id, row.recipients)
        return
    stored = session.get(Outbox, row.id)
    if stored is None or stored.claimed_by != worker:
        # An operator or an expired lease moved it: the other holder records it.
        log.warning("outbox %s: no longer held by %s; leaving it", row.id, worker)
        return
    now = desk.clock.now()
    settings = desk.settings.outbound
    label = f"[#{row.ticket_id or '-'}] <{row.message_id}>"
    stored.attempts += 1
    OUTBOX.let_go_of(stored)
    refused = attempt.sent.refused if attempt.sent else attempt.refused
    for address in refused:
        mark_bouncing(session, address, attempt.error or "refused by the relay", now)
    if attempt.sent is not None:
        stored.status, stored.sent_at = "sent", now
        stored.last_error = f"refused: {', '.join(refused)}" if refused else ""
        log.info("%s sent to %s", label, row.recipients)
        return
    stored.last_error = attempt.error[:2000]
    too_old = now - stored.created_at > timedelta(seconds=settings.give_up_after)
    if attempt.permanent or stored.attempts >= settings.max_attempts or too_old:
        stored.status = "failed"
        log.error("%s failed for good after %d attempts: %s", label, stored.attempts,
                  attempt.error)
    else:
        stored.next_attempt_at = now + mail_backoff(stored.attempts, settings.retry_base)
        if attempt.relay:
            log.error("%s attempt %d: %s; the mail is kept and tried again at %s (check "
                      "the relay's settings: outbound.relay, username, password)", label,
                      stored.attempts, attempt.error, stored.next_attempt_at)
            return
        log.warning("%s attempt %d failed, retry at %s: %s", label, stored.attempts,
                    stored.next_attempt_at, attempt.error)


def retry_now(desk: Desk, outbox_id: int | None, clock: Clock | None = None,
              by: Actor | None = None) -> int:
    """Operator: make failed or waiting rows due now (one, or all when None). Each mail
    of a ticket made due again is on that ticket's audit trail, by `by`."""
    now = (clock or desk.clock).now()
    with transaction(desk.engine) as session:
        # A mail a worker holds right now is left to it: retrying it would send it twice.
        query = update(Outbox).where(col(Outbox.status).in_(("pending", "failed")),
                                     OUTBOX.free(now))
        if outbox_id is not None:
            query = query.where(col(Outbox.id) == outbox_id)
        retried = session.execute(
            query.values(status="pending", next_attempt_at=now, **OUTBOX.let_go())
            .returning(col(Outbox.id), col(Outbox.ticket_id), col(Outbox.kind),
                       col(Outbox.attempts))
        ).all()
        by = by or Actor(SYSTEM, route="system")
        for row_id, ticket_id, kind, attempts in retried:
            if ticket_id is not None:
                record(session, ticket_id, "outbox", new="retry", actor=by.address,
                       actor_name=by.name, route=by.route, now=now,
                       detail=f"mail {row_id} ({kind}) due again after {attempts} attempt(s)")
        if retried:
            log.info("%d outgoing mail(s) due again, by %s via %s", len(retried), by.address,
                     by.route)
    if retried:
        desk.committed(False)
    return len(retried)
