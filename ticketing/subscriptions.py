"""Subscriptions to the status page's updates: asked for, confirmed by a mailed link, ended.

Double opt-in: an address gets updates only once someone who reads its mail has
followed the link and pressed the button. Whoever asks is answered alike, whether the
address is new, waiting, subscribed or not mailed at all, so the form tells nobody who
is subscribed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from ticketing.accounts import count_attempts, record_attempt
from ticketing.addresses import Address, normalize
from ticketing.compose import compose
from ticketing.conversation import is_ours
from ticketing.db import one_at_a_time
from ticketing.mailkind import MailKind
from ticketing.models import StatusSubscriber
from ticketing.notifications import enqueue
from ticketing.ratelimit import may_auto_reply, record_auto_reply
from ticketing.settings import Settings
from ticketing.websessions import digest

if TYPE_CHECKING:
    from ticketing.desk import Desk

log = logging.getLogger(__name__)

CONFIRM_LIFETIME = timedelta(hours=24)
WINDOW = timedelta(hours=1)
_TOKEN = re.compile(r"^(\d{1,18})-([0-9a-f]{32})$")
_UNSUBSCRIBE = "unsubscribe-"
_LARGEST_ID = 2**31 - 1  # what the id column holds: a bigger number in a token names nobody


def _signature(subscriber_id: int, key: str, secret: str) -> str:
    text = f"status-subscriber:{subscriber_id}:{key}".encode()
    return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()[:32]


def subscriber_token(subscriber_id: int, key: str, secret: str) -> str:
    """The token of the manage and unsubscribe links: the row's id signed with the server
    secret over the row's own random key (128 bits shown)."""
    return f"{subscriber_id}-{_signature(subscriber_id, key, secret)}"


def find_by_token(session: Session, token: str, secret: str) -> StatusSubscriber | None:
    """The subscriber a manage or unsubscribe token names, or None (wrong, guessed, ended)."""
    match = _TOKEN.match(token or "")
    if match is None or int(match.group(1)) > _LARGEST_ID:
        return None
    row = session.get(StatusSubscriber, int(match.group(1)))
    if row is None or row.id is None:
        return None
    expected = _signature(row.id, row.key, secret)
    return row if hmac.compare_digest(expected, match.group(2)) else None


def token_of_address(address: str, settings: Settings) -> str | None:
    """The token in an unsubscribe address of ours, unchecked; None for any other address."""
    local, _, domain = address.strip().strip("<>").lower().rpartition("@")
    base, plus, detail = local.partition("+")
    support = settings.support
    if (not plus or domain != support.domain.lower() or base != support.local_part.lower()
            or not detail.startswith(_UNSUBSCRIBE)):
        return None
    return detail[len(_UNSUBSCRIBE):]


def token_among(addresses: Iterable[str], settings: Settings) -> str | None:
    """The token of the first unsubscribe address of ours among these (the envelope
    recipients, Delivered-To, To, Cc), unchecked; None when there is none."""
    return next((t for t in (token_of_address(a, settings) for a in addresses)
                 if t is not None), None)


# Asks wait for each other until they commit, so two sent at once can neither both pass
# a limit counted before either is recorded, nor both add a row for one new address (the
# loser's error would tell the address was new). Any number: this one spells "mgsu".
_ASKS = 0x6D677375


def ask(session: Session, desk: Desk, address: str, client: str, now: datetime) -> bool:
    """Someone asked for updates to `address` from `client`: mail the confirmation link
    (or, when the address is subscribed already, its manage link) unless a limit or the
    address forbids it. The caller answers alike whatever this returns."""
    one_at_a_time(session, _ASKS)
    settings = desk.settings
    address = normalize(address)
    since = now - WINDOW
    limits = settings.status
    too_many = (
        count_attempts(session, "subscribe", address, since) >= limits.subscribe_per_address_per_hour
        or count_attempts(session, "subscribe-client", client, since)
        >= limits.subscribe_per_client_per_hour
    )
    record_attempt(session, "subscribe", address, now)
    record_attempt(session, "subscribe-client", client, now)
    if too_many or not address:
        log.info("status subscription for %s from %s: not mailed (rate limit)",
                 address or "-", client)
        return False
    # Never our own addresses, machine addresses, bouncing ones; within the limits on
    # automatic mail to one address.
    if is_ours(address, settings) or not may_auto_reply(
            session, settings.limits, address, None, now):
        log.info("status subscription for %s from %s: not mailed (address or mail limits)",
                 address, client)
        return False
    row = session.exec(select(StatusSubscriber).where(StatusSubscriber.address == address)).first()
    if row is None:
        row = StatusSubscriber(address=address, key=secrets.token_hex(16), created_at=now)
    if row.confirmed_at is not None:
        assert row.id is not None
        _mail(session, desk, row, now, confirmed=True)
        return True
    token = secrets.token_urlsafe(32)
    row.confirm_hash = digest(token)
    row.confirm_expires_at = now + CONFIRM_LIFETIME
    session.add(row)
    session.flush()
    _mail(session, desk, row, now, confirmed=False, link=f"{settings.web.url}/status/confirm/{token}")
    return True


def _mail(session: Session, desk: Desk, row: StatusSubscriber, now: datetime, *,
          confirmed: bool, link: str = "") -> None:
    settings = desk.settings
    assert row.id is not None
    support = settings.support
    text, html = desk.templates.render(
        "status_subscribe", support_name=support.name, address=row.address, confirmed=confirmed,
        link=link, hours=int(CONFIRM_LIFETIME.total_seconds() // 3600),
        manage_url=manage_url(row.id, row.key, settings), status_url=f"{settings.web.url}/status",
    )
    subject = (f"Your subscription to {support.name} status updates" if confirmed
               else f"Confirm your subscription to {support.name} status updates")
    mail = compose(settings, to=[Address(row.address)], subject=subject, text=text, html=html,
                   now=now, auto_submitted="auto-generated")  # RFC 3834: answer nothing
    record_auto_reply(session, row.address, None, MailKind.STATUS_SUBSCRIBE, now)
    enqueue(session, None, MailKind.STATUS_SUBSCRIBE, mail, now, settings)


def manage_url(subscriber_id: int, key: str, settings: Settings) -> str:
    return subscriber_links(subscriber_id, key, settings)[0]


def subscriber_links(subscriber_id: int, key: str, settings: Settings) -> tuple[str, str, str]:
    """A subscriber's (manage page, one-click unsubscribe, mailto unsubscribe) addresses,
    all carrying the one signed token."""
    support = settings.support
    token = subscriber_token(subscriber_id, key, support.secret)
    return (f"{settings.web.url}/status/subscription/{token}",
            f"{settings.web.url}/status/unsubscribe/{token}",
            f"{support.local_part}+{_UNSUBSCRIBE}{token}@{support.domain}")


def waiting(session: Session, token: str, now: datetime) -> StatusSubscriber | None:
    """The subscription a confirmation link is for, while it can still be confirmed."""
    if not token or len(token) > 100:
        return None
    row = session.exec(
        select(StatusSubscriber).where(StatusSubscriber.confirm_hash == digest(token))).first()
    if row is None or row.confirmed_at is not None or row.confirm_expires_at is None \
            or row.confirm_expires_at <= now:
        return None
    return row


def confirm(session: Session, token: str, now: datetime) -> StatusSubscriber | None:
    """Confirm by the link's token: of two requests with it, exactly one does."""
    row = waiting(session, token, now)
    if row is None:
        return None
    taken = session.execute(
        update(StatusSubscriber)
        .where(col(StatusSubscriber.id) == row.id, col(StatusSubscriber.confirmed_at).is_(None))
        .values(confirmed_at=now, confirm_hash="", confirm_expires_at=None)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.refresh(row)
    log.info("status subscription of %s confirmed", row.address)
    return row


def end(session: Session, row: StatusSubscriber, how: str) -> None:
    """No more updates to this address; its links die with the row."""
    log.info("status subscription of %s ended (%s)", row.address, how)
    session.delete(row)
    session.flush()


def prune(session: Session, now: datetime) -> None:
    """Subscriptions never confirmed whose link has expired are of no further use."""
    session.execute(delete(StatusSubscriber).where(
        col(StatusSubscriber.confirmed_at).is_(None),
        col(StatusSubscriber.confirm_expires_at) < now))
