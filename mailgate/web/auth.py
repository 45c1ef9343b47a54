"""Signing in and out: with a password, or with a one-time link or code mailed to the address."""

from __future__ import annotations

from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response

from mailgate.web.pages import (
    Posted,
    current_account,
    in_thread,
    read_form,
    redirect,
    render,
    safe_next,
    set_session_cookie,
    web_of,
)
from mailgate.web.security import SESSION_COOKIE
from ticketing.account_mail import mail_link
from ticketing.accounts import (
    count_attempts,
    find_account,
    forget_attempts,
    may_sign_in,
    password_matches,
    prune_attempts,
    record_attempt,
)
from ticketing.addresses import normalize
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Account
from ticketing.websessions import (
    end_session,
    end_sessions,
    peek_token,
    prune,
    start_session,
    use_code,
    use_token,
)

# Wrong passwords for one address (or from one client) before it must wait.
PASSWORD_TRIES = 5
CLIENT_PASSWORD_TRIES = 50
PASSWORD_WAIT = timedelta(minutes=15)
EXPIRED = "This page had expired, so nothing was done. Please check the form and send it again."


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def signed_in_response(request: Request, token: str, next_path: str) -> Response:
    response = redirect(safe_next(next_path))
    set_session_cookie(request, response, token)
    return response


# --- password -------------------------------------------------------------------


async def sign_in_page(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    if await current_account(request) is not None:
        return redirect(next_path)
    return render(request, "sign_in.html", next=next_path, email="", error="")


def _password_sign_in(desk: Desk, address: str, password: str, client: str) -> str | None:
    """A new session's token, "" when the address must wait, None when it is not right."""
    now = desk.clock.now()
    address = normalize(address)
    with transaction(desk.engine) as session:
        since = now - PASSWORD_WAIT
        if (count_attempts(session, "password", address, since) >= PASSWORD_TRIES
                or count_attempts(session, "password-client", client, since) >= CLIENT_PASSWORD_TRIES):
            return ""
        account = find_account(session, address)
        if not may_sign_in(session, desk.settings, account):
            account = None
    matched = password_matches(account, password)  # the same work whether or not it exists
    with transaction(desk.engine) as session:
        if not matched or account is None:
            record_attempt(session, "password", address, now)
            record_attempt(session, "password-client", client, now)
            return None
        forget_attempts(session, "password", address)
        return start_session(session, account, now)


async def _sign_in_form(request: Request, page: str) -> tuple[Posted, str, str] | Response:
    """A posted sign-in form, its address and the page to go on to; when the form is not
    ours (expired, or posted from elsewhere), its page again with nothing done."""
    form, ours = await read_form(request)
    email = form.text("email", 320).strip()
    next_path = safe_next(form.get("next"))
    if not ours:
        return render(request, page, 403, next=next_path, email=email, error=EXPIRED)
    return form, email, next_path


async def sign_in(request: Request) -> Response:
    posted = await _sign_in_form(request, "sign_in.html")
    if isinstance(posted, Response):
        return posted
    form, email, next_path = posted
    token = await in_thread(_password_sign_in, web_of(request).desk, email,
                            form.text("password", 2000), client_address(request))
    if token:
        return signed_in_response(request, token, next_path)
    error = ("Too many wrong passwords for this address: wait 15 minutes, or sign in with a "
             "link mailed to you." if token == "" else "That email and password do not match "
             "an account. Try again, or sign in with a link mailed to you.")
    return render(request, "sign_in.html", 401 if token is None else 429, next=next_path,
                  email=email, error=error)


# --- a mailed link or code --------------------------------------------------------


def mail_link_for(desk: Desk, address: str, client: str, purpose: str, next_path: str) -> None:
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        prune_attempts(session, now - timedelta(days=1))
        prune(session, now, timedelta(seconds=desk.settings.web.idle_timeout))
        mail_link(session, desk, address, client, purpose, now, next_path)
    desk.committed(pages=False)


async def ask_for_link(request: Request) -> Response:
    posted = await _sign_in_form(request, "sign_in.html")
    if isinstance(posted, Response):
        return posted
    _, email, next_path = posted
    await in_thread(mail_link_for, web_of(request).desk, email, client_address(request), "sign_in", next_path)
    return render(request, "check_mail.html", email=email, next=next_path, error="")


def _code_sign_in(desk: Desk, address: str, code: str) -> tuple[str, str] | None:
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        account = find_account(session, address)
        if not may_sign_in(session, desk.settings, account):
            return None
        assert account is not None
        used = use_code(session, account, code, now, desk.settings.support.secret)
        if used is None:
            return None
        return start_session(session, account, now), used.next_path


async def sign_in_with_code(request: Request) -> Response:
    posted = await _sign_in_form(request, "check_mail.html")
    if isinstance(posted, Response):
        return posted
    form, email, next_path = posted
    found = await in_thread(_code_sign_in, web_of(request).desk, email, form.text("code", 20))
    if found is None:
        return render(request, "check_mail.html", 401, email=email, next=next_path,
                      error="That code is not right, or it was used or has expired. "
                            "Ask for a new one below.")
    return signed_in_response(request, found[0], next_path)


def peek(desk: Desk, token: str, purpose: str) -> bool:
    with transaction(desk.engine) as session:
        return peek_token(session, token, purpose, desk.clock.now()) is not None


async def link_page(request: Request) -> Response:
    """A link scanner opens links in mail: the GET only shows a button, the POST signs in."""
    token = request.path_params["token"]
    if not await in_thread(peek, web_of(request).desk, token, "sign_in"):
        return render(request, "link_dead.html", 410)
    return render(request, "link.html", error="")


def _link_sign_in(desk: Desk, token: str) -> tuple[str, str] | None:
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        used = use_token(session, token, "sign_in", now)
        if used is None:
            return None
        account = session.get(Account, used.account_id)
        if not may_sign_in(session, desk.settings, account):
            return None
        assert account is not None
        return start_session(session, account, now), used.next_path


async def sign_in_with_link(request: Request) -> Response:
    _, ours = await read_form(request)
    if not ours:
        return render(request, "link.html", 403, error=EXPIRED)
    found = await in_thread(_link_sign_in, web_of(request).desk, request.path_params["token"])
    if found is None:
        return render(request, "link_dead.html", 410)
    return signed_in_response(request, found[0], found[1])


# --- signing out ---------------------------------------------------------------------


async def sign_out(request: Request) -> Response:
    form, ours = await read_form(request)
    if not ours:
        return render(request, "message.html", 403, title="Not signed out", text=EXPIRED)
    token = request.cookies.get(SESSION_COOKIE, "")
    everywhere = form.get("everywhere") == "1"
    account = await current_account(request) if everywhere else None
    await in_thread(_end, web_of(request).desk, token, account)
    response = redirect("/sign-in")
    response.delete_cookie(SESSION_COOKIE)
    return response


def _end(desk: Desk, token: str, account: Account | None) -> None:
    with transaction(desk.engine) as session:
        end_session(session, token)
        if account is not None and account.id is not None:
            end_sessions(session, account.id)
