"""Deliver due outbox rows through the relay or into a folder; retry with backoff."""

from __future__ import annotations

import json
import logging
import os
import random
import smtplib
import ssl
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import or_, update
from sqlmodel import col, select
from ticketing.ratelimit import mark_bouncing

from ticketing.clock import Clock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Outbox
from ticketing.settings import OutboundSettings

log = logging.getLogger(__name__)

_BASE_DELAY = 30.0
_MAX_DELAY = 3600.0


class TemporaryFailure(Exception):
    """Try again later: the relay is down, busy, or answered 4xx."""


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


class FolderTransport:
    """One .eml file per mail: the default when no relay is set; rewriting is harmless."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, row: Outbox) -> Sent:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{row.id:08d}.eml"
        temporary = self.directory / f".{name}.tmp"
        envelope = (
            f"X-Mailgate-Envelope-From: {row.mail_from}\r\n"
            f"X-Mailgate-Envelope-To: {', '.join(json.loads(row.recipients))}\r\n"
        ).encode()
        with open(temporary, "wb") as handle:
            handle.write(envelope + row.raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.directory / name)
        return Sent()


class RelayTransport:
    """SMTP to the configured relay, with STARTTLS or TLS and a login when set."""

    def __init__(self, settings: OutboundSettings, timeout: float = 60.0) -> None:
        host, _, port = settings.relay.rpartition(":")
        self.host, self.port = host, int(port)
        self.settings = settings
        self.timeout = timeout

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
        recipients = json.loads(row.recipients)
        try:
            with self._connect() as client:
                refused = client.sendmail(row.mail_from, recipients, row.raw)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = {r: code for r, (code, _) in exc.recipients.items()}
            if all(code >= 500 for code in codes.values()):
                raise PermanentFailure(f"all recipients refused: {codes}", tuple(codes)) from exc
            raise TemporaryFailure(f"recipients refused: {codes}") from exc
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600:
                raise PermanentFailure(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
            raise TemporaryFailure(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
        except (TimeoutError, OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from exc
        permanent = tuple(r for r, (code, _) in refused.items() if code >= 500)
        return Sent(permanent)


def transport_for(desk: Desk) -> Transport:
    if desk.settings.outbound.relay:
        return RelayTransport(desk.settings.outbound)
    return FolderTransport(desk.settings.outbound_directory)


def backoff(attempts: int, base: float = _BASE_DELAY) -> timedelta:
    """Exponential with jitter: 30 s, 1 min, 2 min ... capped at an hour."""
    delay = min(_MAX_DELAY, base * 2 ** max(0, attempts - 1))
    return timedelta(seconds=delay * random.uniform(0.8, 1.2))


def claim(desk: Desk, worker: str, limit: int = 20) -> list[Outbox]:
    """Take due rows for this worker alone: a conditional UPDATE wins each row once,
    across threads, processes and machines on one database."""
    now = desk.clock.now()
    claimed: list[Outbox] = []
    with transaction(desk.engine) as session:
        due = session.exec(
            select(Outbox.id)
            .where(Outbox.status == "pending", col(Outbox.next_attempt_at) <= now,
                   or_(col(Outbox.claimed_until).is_(None), col(Outbox.claimed_until) < now))
            .order_by(col(Outbox.id))
            .limit(limit)
        ).all()
        for row_id in due:
            result = session.execute(
                update(Outbox)
                .where(col(Outbox.id) == row_id, col(Outbox.status) == "pending",
                       or_(col(Outbox.claimed_until).is_(None), col(Outbox.claimed_until) < now))
                .values(claimed_by=worker,
                        claimed_until=now + timedelta(seconds=desk.settings.outbound.lease))
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                row = session.get(Outbox, row_id)
                if row is not None:
                    claimed.append(row)
    return claimed


def deliver_due(desk: Desk, transport: Transport, worker: str, limit: int = 20) -> int:
    """Send what is due; returns how many were sent."""
    sent = 0
    for row in claim(desk, worker, limit):
        try:
            result = transport.send(row)
        except TemporaryFailure as exc:
            _retry(desk, row, str(exc))
            continue
        except PermanentFailure as exc:
            _fail(desk, row, str(exc), exc.refused)
            continue
        except Exception as exc:
            log.exception("outbox %s: unexpected failure", row.id)
            _retry(desk, row, f"{type(exc).__name__}: {exc}")
            continue
        _done(desk, row, result)
        sent += 1
    return sent


def _done(desk: Desk, row: Outbox, result: Sent) -> None:
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        stored = session.get(Outbox, row.id)
        if stored is None:
            return
        stored.status = "sent"
        stored.sent_at = now
        stored.attempts += 1
        stored.claimed_until = None
        stored.last_error = f"refused: {', '.join(result.refused)}" if result.refused else ""
        session.add(stored)
        for address in result.refused:
            mark_bouncing(session, address, "refused by the relay", now)
    log.info("[#%s] <%s> sent to %s", row.ticket_id or "-", row.message_id, row.recipients)


def _retry(desk: Desk, row: Outbox, error: str) -> None:
    now = desk.clock.now()
    settings = desk.settings.outbound
    with transaction(desk.engine) as session:
        stored = session.get(Outbox, row.id)
        if stored is None:
            return
        stored.attempts += 1
        stored.last_error = error[:2000]
        stored.claimed_until = None
        too_old = now - stored.created_at > timedelta(seconds=settings.give_up_after)
        if stored.attempts >= settings.max_attempts or too_old:
            stored.status = "failed"
            log.error("[#%s] <%s> given up after %d attempts: %s", row.ticket_id or "-",
                      row.message_id, stored.attempts, error)
        else:
            stored.next_attempt_at = now + backoff(stored.attempts, settings.retry_base)
            log.warning("[#%s] <%s> attempt %d failed, retry at %s: %s", row.ticket_id or "-",
                        row.message_id, stored.attempts, stored.next_attempt_at, error)
        session.add(stored)


def _fail(desk: Desk, row: Outbox, error: str, refused: tuple[str, ...]) -> None:
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        stored = session.get(Outbox, row.id)
        if stored is None:
            return
        stored.status = "failed"
        stored.attempts += 1
        stored.last_error = error[:2000]
        stored.claimed_until = None
        session.add(stored)
        for address in refused:
            mark_bouncing(session, address, error, now)
    log.error("[#%s] <%s> failed for good: %s", row.ticket_id or "-", row.message_id, error)


def retry_now(desk: Desk, outbox_id: int | None, clock: Clock | None = None) -> int:
    """Operator: make failed or waiting rows due now (one, or all when None)."""
    now = (clock or desk.clock).now()
    with transaction(desk.engine) as session:
        query = update(Outbox).where(col(Outbox.status).in_(("pending", "failed")))
        if outbox_id is not None:
            query = query.where(col(Outbox.id) == outbox_id)
        result = session.execute(
            query.values(status="pending", next_attempt_at=now, claimed_until=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
