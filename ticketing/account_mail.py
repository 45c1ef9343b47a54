"""The mails an account asks for: a sign-in link and code, a reset link, a password notice."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from sqlmodel import Session

from ticketing.accounts import WINDOW, account_for_link, count_attempts, record_attempt
from ticketing.addresses import Address, normalize
from ticketing.compose import compose
from ticketing.db import one_at_a_time
from ticketing.mailkind import MailKind
from ticketing.models import Account
from ticketing.notifications import enqueue
from ticketing.websessions import TOKEN_LIFETIME, issue_token

if TYPE_CHECKING:
    from ticketing.desk import Desk

log = logging.getLogger(__name__)

_SUBJECTS = {
    "sign_in": "Sign in to the {name} Help Desk",
    "reset": "Reset your {name} Help Desk password",
    "password_changed": "Your {name} Help Desk password was changed",
}


# Asks for a link wait for each other until they commit, so those sent at once cannot all
# pass the limits counted before any of them is recorded. Any number: this one spells "mgsl".
_ASKS = 0x6D67736C


def mail_link(
    session: Session, desk: Desk, address: str, client: str, purpose: str, now: datetime,
    next_path: str = "",
) -> bool:
    """Mail a one-time link (and code) when the address may sign in and neither it nor the
    client asked too often; whatever happens, the caller answers alike, so nobody can
    learn from us whether an address has an account."""
    one_at_a_time(session, _ASKS)
    web = desk.settings.web
    address = normalize(address)
    since = now - WINDOW
    too_many = (
        count_attempts(session, "mail", address, since) >= web.mails_per_address_per_hour
        or count_attempts(session, "mail-client", client, since) >= web.mails_per_client_per_hour
    )
    record_attempt(session, "mail", address, now)
    record_attempt(session, "mail-client", client, now)
    if too_many or not address:
        log.info("%s link for %s from %s: not sent (rate limit)", purpose, address or "-", client)
        return False
    account = account_for_link(session, desk.settings, address, now)
    if account is None:
        log.info("%s link for %s from %s: no account that may sign in; not sent",
                 purpose, address, client)
        return False
    token, code = issue_token(session, account, purpose, now, desk.settings.support.secret,
                              next_path)
    path = "sign-in/link" if purpose == "sign_in" else "password/reset"
    _send(session, desk, account, purpose, now, link=f"{web.url}/{path}/{token}", code=code,
          minutes=int(TOKEN_LIFETIME.total_seconds() // 60))
    return True


def mail_password_changed(session: Session, desk: Desk, account: Account, now: datetime) -> None:
    _send(session, desk, account, "password_changed", now, link=f"{desk.settings.web.url}/password/forgot")


def _send(session: Session, desk: Desk, account: Account, purpose: str, now: datetime,
          **context: object) -> None:
    support = desk.settings.support
    text, html = desk.templates.render(
        purpose, support_name=support.name, account_name=account.name, address=account.address,
        status_page=support.status_page, **context,
    )
    mail = compose(
        desk.settings, to=[Address(account.address, account.name)],
        subject=_SUBJECTS[purpose].format(name=support.name), text=text, html=html, now=now,
        auto_submitted="auto-generated",  # RFC 3834: written by the system, answer nothing
    )
    enqueue(session, None, MailKind(purpose), mail, now, desk.settings)
