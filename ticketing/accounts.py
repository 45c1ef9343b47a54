"""Help Desk accounts: who may sign in, their passwords (argon2id), and counted attempts."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, or_
from sqlmodel import Session, col, select

from ticketing.addresses import is_machine_address, normalize
from ticketing.audit import Actor, operator_action
from ticketing.conversation import is_ours
from ticketing.models import Account, Participant, WebAttempt, WebSession
from ticketing.ratelimit import clear_bouncing
from ticketing.settings import Settings

# argon2id at OWASP's recommended floor (19 MiB, two passes, one lane): each sign-in
# costs a few tens of milliseconds and 19 MiB, so a burst of them cannot exhaust memory.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
# Verified when the address has no password, so both answers take as long.
_UNUSABLE = _HASHER.hash("no password is set for this account")
MIN_PASSWORD = 10
MAX_PASSWORD = 1000
CUSTOMER_ROLES = ("requester", "cc", "follower")


def find_account(session: Session, address: str) -> Account | None:
    address = normalize(address)
    if not address:
        return None
    return session.exec(select(Account).where(Account.address == address)).first()


def add_account(session: Session, address: str, name: str, now: datetime,
                by: Actor | None = None) -> Account:
    """An operator's account (made or taken over), enabled again if it was disabled."""
    found = normalize(address)
    if not found:
        raise ValueError(f"not a mail address: {address!r}")
    account = find_account(session, found) or Account(address=found, name=name, created_at=now)
    account.registered = True
    account.disabled_at = None
    if name:
        account.name = name
    session.add(account)
    session.flush()
    if by is not None:
        operator_action(by, f"account {found} added")
    return account


def disable_account(session: Session, address: str, now: datetime,
                    by: Actor | None = None) -> bool:
    """No more signing in; every session of the account ends now."""
    account = find_account(session, address)
    if account is None:
        return False
    account.disabled_at = now
    session.add(account)
    session.execute(delete(WebSession).where(col(WebSession.account_id) == account.id))
    if by is not None:
        operator_action(by, f"account {account.address} disabled; its sessions ended")
    return True


def clear_bounces(session: Session, address: str = "", by: Actor | None = None) -> list[str]:
    """Mail the address (or, given none, every bouncing address) again; returns those
    that were marked bouncing and are not now."""
    addresses = [normalize(address)] if address else list(session.exec(
        select(Account.address).where(col(Account.bouncing_since).is_not(None))
        .order_by(col(Account.address))).all())
    cleared = [a for a in addresses if a and clear_bouncing(session, a)]
    if by is not None and cleared:
        operator_action(by, f"bouncing cleared for {', '.join(cleared)}")
    return cleared


def list_accounts(session: Session, text: str = "", limit: int | None = None,
                  ) -> list[dict[str, Any]]:
    """Accounts by address, each as plain data without its password hash; `text`: only
    addresses or names holding it; bouncing ones first when limited."""
    query = select(Account)
    if text:
        needle = text.strip().lower()
        for special in ("\\", "%", "_"):
            needle = needle.replace(special, "\\" + special)
        pattern = f"%{needle}%"
        query = query.where(or_(func.lower(col(Account.address)).like(pattern, escape="\\"),
                                func.lower(col(Account.name)).like(pattern, escape="\\")))
    if limit is not None:
        query = query.order_by(col(Account.bouncing_since).is_(None), col(Account.address))
        query = query.limit(limit)
    else:
        query = query.order_by(col(Account.address))
    return [a.model_dump(mode="json", exclude={"password_hash"}) for a in session.exec(query)]


def may_sign_in(session: Session, settings: Settings, account: Account | None) -> bool:
    """An enabled account; under the "registered" policy only one an operator added
    (or released), under "open" also one made by a mail the address sent us."""
    if account is None or account.disabled_at is not None:
        return False
    if is_ours(account.address, settings) or is_machine_address(account.address):
        return False
    return settings.support.sender_policy == "open" or account.registered


def account_for_link(session: Session, settings: Settings, address: str, now: datetime) -> Account | None:
    """The account a sign-in link may be mailed to. Under the "open" policy a customer on
    a ticket (copied, or following) has one as soon as they ask, as a sender has."""
    account = find_account(session, address)
    if account is None and settings.support.sender_policy == "open":
        found = normalize(address)
        on_ticket = session.exec(
            select(Participant.name).where(Participant.address == found,
                                           col(Participant.role).in_(CUSTOMER_ROLES)).limit(1)
        ).first()
        if found and on_ticket is not None:
            account = Account(address=found, name=on_ticket, created_at=now)
            session.add(account)
            session.flush()
    if account is not None and account.bouncing_since is not None:
        return None  # its mail bounced, or its reader reported ours as spam
    return account if may_sign_in(session, settings, account) else None


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"Use at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"Use at most {MAX_PASSWORD} characters."
    return None


def password_matches(account: Account | None, password: str) -> bool:
    """Checked in full even for an unknown address, so timing tells nothing."""
    stored = account.password_hash if account is not None and account.password_hash else _UNUSABLE
    try:
        ok = _HASHER.verify(stored, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return False
    return ok and account is not None and bool(account.password_hash)


def set_password(session: Session, account: Account, password_hash: str) -> None:
    account.password_hash = password_hash
    session.add(account)


def count_attempts(session: Session, kind: str, key: str, since: datetime) -> int:
    return int(session.exec(
        select(func.count()).select_from(WebAttempt)
        .where(WebAttempt.kind == kind, WebAttempt.key == key[:320], col(WebAttempt.at) >= since)
    ).one())


def record_attempt(session: Session, kind: str, key: str, now: datetime) -> None:
    session.add(WebAttempt(kind=kind, key=key[:320], at=now))


def forget_attempts(session: Session, kind: str, key: str) -> None:
    session.execute(delete(WebAttempt).where(col(WebAttempt.kind) == kind,
                                             col(WebAttempt.key) == key[:320]))


def prune_attempts(session: Session, before: datetime) -> None:
    """Counts older than any window are of no use."""
    session.execute(delete(WebAttempt).where(col(WebAttempt.at) < before))


WINDOW = timedelta(hours=1)
