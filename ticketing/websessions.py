"""Web sessions and mailed one-time tokens: random values handed out, only their hashes kept."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from ticketing.models import Account, SignInToken, WebSession

TOKEN_LIFETIME = timedelta(minutes=15)
MAX_CODE_FAILURES = 5
# A session's last use is written at most this often, not on every page.
_TOUCH_EVERY = timedelta(minutes=1)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, account: Account, now: datetime) -> str:
    """A new session for the account; returns the cookie value (kept only as its hash)."""
    assert account.id is not None
    token = secrets.token_urlsafe(32)
    session.add(WebSession(token_hash=digest(token), account_id=account.id, created_at=now,
                           last_seen_at=now))
    return token


def session_account(
    session: Session, token: str, now: datetime, idle: timedelta
) -> tuple[Account, WebSession] | None:
    """The signed-in account for a cookie, if its session exists and was used recently."""
    if not token or len(token) > 100:
        return None
    row = session.exec(select(WebSession).where(WebSession.token_hash == digest(token))).first()
    if row is None:
        return None
    if now - row.last_seen_at > idle:
        session.delete(row)
        return None
    account = session.get(Account, row.account_id)
    if account is None or account.disabled_at is not None:
        return None
    if now - row.last_seen_at > _TOUCH_EVERY:
        row.last_seen_at = now
        session.add(row)
    return account, row


def end_session(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(col(WebSession.token_hash) == digest(token)))


def end_sessions(session: Session, account_id: int, keep: str = "") -> None:
    """Sign the account out everywhere (but for the session `keep`, when given)."""
    query = delete(WebSession).where(col(WebSession.account_id) == account_id)
    if keep:
        query = query.where(col(WebSession.token_hash) != digest(keep))
    session.execute(query)


def _code_hash(secret: str, token_hash: str, code: str) -> str:
    return hmac.new(secret.encode(), f"code:{token_hash}:{code}".encode(), hashlib.sha256).hexdigest()


def issue_token(
    session: Session, account: Account, purpose: str, now: datetime, secret: str, next_path: str = ""
) -> tuple[str, str]:
    """A one-time (link token, six-digit code) pair, good for fifteen minutes."""
    assert account.id is not None
    token = secrets.token_urlsafe(32)
    code = f"{secrets.randbelow(1_000_000):06d}"
    hashed = digest(token)
    session.add(SignInToken(
        token_hash=hashed, code_hash=_code_hash(secret, hashed, code), account_id=account.id,
        purpose=purpose, next_path=next_path[:500], created_at=now,
        expires_at=now + TOKEN_LIFETIME,
    ))
    return token, code


def peek_token(session: Session, token: str, purpose: str, now: datetime) -> SignInToken | None:
    """The token if it can still be used, without using it (for the page with the button)."""
    if not token or len(token) > 100:
        return None
    row = session.exec(select(SignInToken).where(SignInToken.token_hash == digest(token))).first()
    if row is None or row.purpose != purpose or row.used_at is not None or row.expires_at <= now:
        return None
    return row


def use_token(session: Session, token: str, purpose: str, now: datetime) -> SignInToken | None:
    """Use the token up: of two requests with it, exactly one gets it."""
    row = peek_token(session, token, purpose, now)
    if row is None:
        return None
    taken = session.execute(
        update(SignInToken)
        .where(col(SignInToken.id) == row.id, col(SignInToken.used_at).is_(None))
        .values(used_at=now)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        return None
    row.used_at = now
    return row


def use_code(
    session: Session, account: Account, code: str, now: datetime, secret: str
) -> SignInToken | None:
    """Use up the account's newest live sign-in token whose code this is; each wrong code
    counts against the token, which dies after a few."""
    row = session.exec(
        select(SignInToken)
        .where(SignInToken.account_id == account.id, SignInToken.purpose == "sign_in",
               col(SignInToken.used_at).is_(None), col(SignInToken.expires_at) > now,
               col(SignInToken.failures) < MAX_CODE_FAILURES)
        .order_by(col(SignInToken.id).desc()).limit(1)
    ).first()
    if row is None:
        return None
    code = "".join(code.split())
    if not hmac.compare_digest(row.code_hash, _code_hash(secret, row.token_hash, code)):
        session.execute(update(SignInToken).where(col(SignInToken.id) == row.id)
                        .values(failures=SignInToken.failures + 1))
        return None
    taken = session.execute(
        update(SignInToken)
        .where(col(SignInToken.id) == row.id, col(SignInToken.used_at).is_(None))
        .values(used_at=now)
    )
    return row if taken.rowcount == 1 else None  # type: ignore[attr-defined]


def prune(session: Session, now: datetime, idle: timedelta) -> None:
    """Expired tokens and idle sessions are of no further use."""
    session.execute(delete(SignInToken).where(col(SignInToken.expires_at) < now - timedelta(days=1)))
    session.execute(delete(WebSession).where(col(WebSession.last_seen_at) < now - idle))
