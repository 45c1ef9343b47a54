"""Deliver due outbox rows through the relay or into a folder; retry with backoff."""

from __future__ import annotations

import json
import logging
import os
import re
import smtplib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from select import select as ready_now
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Table, and_, bindparam, or_, update
from sqlalchemy.exc import DBAPIError, OperationalError
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
        return client

    def send(self, row: Outbox) -> Sent:
        try:
            raw = row.raw if row.files in ("", "[]") else b"".join(message(row, self.blobs))
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
            refused = client.sendmail(row.mail_from, recipients, raw, mail_options=options)
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


def _readable(client: smtplib.SMTP) -> bool:
    """Anything to read on a connection that waits for our next command: the relay has
    closed it, spoken unasked, or it is broken. A look that does not wait."""
    sock = client.sock
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        readable, _, broken = ready_now([sock], [], [sock], 0)
    except (OSError, ValueError):
        return True
    return bool(readable or broken)


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


# Built once, on the table (not through the ORM): the worker runs them for every batch.
# The next due rows, skipping rows another PostgreSQL transaction has locked (SQLite has
# one writer and no FOR UPDATE); the UPDATE checks each is still due, so a row is won
# once whatever the isolation.
_OUTBOX: Table = Outbox.__table__  # type: ignore[attr-defined]
_NEXT_DUE = (
    select(_OUTBOX.c.id).where(*_due(bindparam("now"))).order_by(_OUTBOX.c.id)
    .limit(bindparam("count")).with_for_update(skip_locked=True)
)
_CLAIM = (
    update(_OUTBOX).where(_OUTBOX.c.id.in_(_NEXT_DUE), *_due(bindparam("now")))
    .values(OUTBOX.take(bindparam("worker"), bindparam("until")))
    .returning(*_OUTBOX.c)
)
_ANY_DUE = select(_OUTBOX.c.id).where(*_due(bindparam("now"))).limit(1)
_HELD = select(_OUTBOX.c.id).where(_OUTBOX.c.id == bindparam("row"),
                                   _OUTBOX.c.status == "pending",
                                   OUTBOX.held_by(bindparam("worker")))
# One claimed mail's lease, renewed just before it is sent: still this worker's, or
# free and due again (its lease ran out and nobody took it).
_RENEW = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("row"), _OUTBOX.c.status == "pending",
           or_(and_(OUTBOX.held_by(bindparam("worker")),
                    _OUTBOX.c.claimed_until > bindparam("now")),
               and_(*_due(bindparam("now")))))
    .values(OUTBOX.take(bindparam("worker"), bindparam("until")))
)
_SENT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("rows", expanding=True)),
           OUTBOX.held_by(bindparam("worker")))
    .values(status="sent", attempts=_OUTBOX.c.attempts + 1, sent_at=bindparam("now"),
            last_error="", **OUTBOX.let_go())
    .returning(_OUTBOX.c.id)
)

_SENT_LATE = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("row"), _OUTBOX.c.status == "pending")
    .values(status="sent", attempts=_OUTBOX.c.attempts + 1, sent_at=bindparam("now"),
            last_error="", **OUTBOX.let_go())
)
_LET_GO = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("rows", expanding=True)),
           _OUTBOX.c.status == "pending", OUTBOX.held_by(bindparam("worker")))
    .values(**OUTBOX.let_go())
)
# Mails a pass claimed and did not send, as the database went away: the next pass of the
# same worker lets go of them first (a worker makes one pass at a time).
_UNSENT: dict[str, set[int]] = {}
_UNSENT_LOCK = threading.Lock()

# Mails claimed in one statement: a worker that dies leaves at most these to wait for
# their lease to run out, and none of them is sent twice.
BATCH = 10


@dataclass(frozen=True)
class Attempt:
    """What one send gave: sent (perhaps with some recipients refused), or an error."""

    row: Outbox
    sent: Sent | None = None
    error: str = ""
    permanent: bool = False
    refused: tuple[str, ...] = ()
    relay: bool = False  # the relay refused it as a whole: its problem, said loudly


def _claim(session: Session, desk: Desk, worker: str, count: int) -> list[Outbox]:
    """Take up to `count` due mails for this worker alone, oldest first, just before
    sending them one after another.

    A conditional UPDATE wins each row once across threads, processes and machines on
    one database; the lease runs out only if the worker dies, so no batch can outlive it.
    """
    lease = timedelta(seconds=desk.settings.outbound.lease)
    # The statements below go to the connection, past the session: a result recorded
    # on loaded rows in this transaction is written first, or the claim would not see it.
    session.flush()
    connection = session.connection()
    for _ in range(5):  # another worker may win the rows we picked: pick again
        now = desk.clock.now()
        params = {"now": now, "worker": worker, "until": now + lease, "count": count}
        claimed = connection.execute(_CLAIM, params).mappings().all()
        if claimed:
            # Not in the session: each row as it stands once claimed, to send and record.
            return sorted((Outbox.model_construct(**row) for row in claimed),
                          key=lambda row: row.id or 0)
        if connection.execute(_ANY_DUE, {"now": now}).first() is None:
            return []
    return []


def claim_next(desk: Desk, worker: str) -> Outbox | None:
    with transaction(desk.engine) as session:
        claimed = _claim(session, desk, holder_name(worker), 1)
    return claimed[0] if claimed else None


def _renew(session: Session, desk: Desk, row: Outbox, worker: str) -> bool:
    """The lease of a claimed mail from now, or False when it is no longer this worker's
    to send (its lease ran out and another worker took it)."""
    now = desk.clock.now()
    lease = timedelta(seconds=desk.settings.outbound.lease)
    renewed = session.connection().execute(
        _RENEW, {"row": row.id, "worker": worker, "now": now, "until": now + lease})
    return bool(renewed.rowcount == 1)


class _Reader:
    """One connection a pass keeps for its reads, each in a transaction of its own and
    without a write lock (SQLite's one writer is not taken to find nothing to do).
    StorageError when the database does not answer: a mail is sent only while its
    result can be recorded."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: Connection | None = None

    def finds(self, statement: Any, params: dict[str, Any]) -> bool:
        try:
            if self.connection is None:
                self.connection = self.engine.connect()
            try:
                return self.connection.execute(statement, params).first() is not None
            finally:
                self.connection.rollback()
        except (OperationalError, DBAPIError) as exc:
            self.close()
            raise StorageError(str(exc).splitlines()[0]) from exc

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.close()
            except (OperationalError, DBAPIError):
                pass


def send_due(desk: Desk, transport: Transport, worker: str, limit: int = 20,
             unrecorded: list[Attempt] | None = None, keep_open: bool = False) -> int:
    """Send up to `limit` due mails over one relay connection; returns how many were sent.
    `keep_open`: the connection stays open for the next pass (the caller closes it);
    else it is closed when the pass ends.

    Up to BATCH due mails are claimed in one statement and sent one after another; their
    results are recorded together in the transaction that claims the next ones. Each
    mail's lease counts from its claim: when time has passed since, the lease is renewed
    (and what was sent recorded) before the mail goes, and a mail another worker took
    meanwhile is left to it. The database must answer before each mail goes.

    A send the database could not record (it went away) is kept in `unrecorded`, which
    the caller passes again: those are recorded first once the database is back, so the
    mail is not sent a second time when its lease runs out.
    """
    worker = holder_name(worker)
    kept = unrecorded if unrecorded is not None else []
    # A lease renewed this long after its claim still covers the send (its default is
    # five minutes, the relay's timeout one).
    fresh = min(timedelta(seconds=1), timedelta(seconds=desk.settings.outbound.lease) / 10)
    sent = 0
    wanted = limit
    done: list[Attempt] = []  # tried, not yet recorded
    batch: list[Outbox] = []  # claimed, not yet tried
    claimed_at = desk.clock.now()
    reader = _Reader(desk.engine)
    try:
        if kept:
            with transaction(desk.engine) as session:
                for attempt in kept:
                    _record_attempt(session, desk, attempt, worker, late=True)
            log.warning("recorded %d send(s) made while the database was away", len(kept))
            kept.clear()
        with _UNSENT_LOCK:
            unsent = _UNSENT.pop(worker, set())
        if unsent:
            try:
                with transaction(desk.engine) as session:
                    session.connection().execute(_LET_GO, {"rows": sorted(unsent),
                                                           "worker": worker})
            except BaseException:
                with _UNSENT_LOCK:
                    _UNSENT.setdefault(worker, set()).update(unsent)
                raise
        while True:
            try:
                if not batch:
                    count = min(BATCH, wanted)
                    if not done and (not count or not reader.finds(
                            _ANY_DUE, {"now": desk.clock.now()})):
                        break
                    with transaction(desk.engine) as session:
                        _record(session, desk, done, worker)
                        batch = _claim(session, desk, worker, count) if count else []
                    done = []
                    if not batch:
                        break
                    wanted -= len(batch)
                    claimed_at = desk.clock.now()
                    row = batch.pop(0)
                else:
                    row = batch[0]
                    if desk.clock.now() - claimed_at > fresh:
                        with transaction(desk.engine) as session:
                            _record(session, desk, done, worker)
                            mine = _renew(session, desk, row, worker)
                        done = []
                    else:
                        mine = reader.finds(_HELD, {"row": row.id, "worker": worker})
                    batch.pop(0)
                    if not mine:
                        log.warning("outbox %s: no longer held by %s; leaving it", row.id,
                                    worker)
                        continue
            except StorageError:
                for attempt in done:
                    _keep(kept, attempt)
                # Claimed and not sent: let go of once the database is back, not held
                # until the lease runs out.
                with _UNSENT_LOCK:
                    _UNSENT.setdefault(worker, set()).update(
                        claimed.id for claimed in batch if claimed.id is not None)
                raise
            attempt = _attempt(transport, row)
            done.append(attempt)
            sent += attempt.sent is not None
    except BaseException:
        transport.close()
        raise
    finally:
        reader.close()
    if not keep_open:
        transport.close()
    return sent


def _record(session: Session, desk: Desk, attempts: list[Attempt], worker: str) -> None:
    """Record several sends' results in one transaction: those sent to every reader in
    one statement, whose WHERE holds the lease check; the others one by one."""
    plain = {a.row.id: a.row for a in attempts if a.sent is not None and not a.sent.refused}
    if plain:
        done = set(session.connection().execute(
            _SENT, {"rows": list(plain), "worker": worker, "now": desk.clock.now()}).scalars())
        for row_id, row in plain.items():
            if row_id in done:
                log.info("[#%s] <%s> sent to %s", row.ticket_id or "-", row.message_id,
                         row.recipients)
            else:
                log.warning("outbox %s: no longer held by %s; leaving it", row_id, worker)
    for attempt in attempts:
        if attempt.row.id not in plain:
            _record_attempt(session, desk, attempt, worker)


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
        return Attempt(row, error=f"{type(exc).__name__}: {exc}")


def _record_attempt(session: Session, desk: Desk, attempt: Attempt, worker: str,
            late: bool = False) -> None:
    row = attempt.row
    if late and attempt.sent is not None and not attempt.sent.refused:
        # A send recorded late counts whoever holds the mail now: it went out.
        done = session.connection().execute(
            _SENT_LATE, {"row": row.id, "worker": worker, "now": desk.clock.now()})
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
