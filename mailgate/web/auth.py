"""Signing in and out: password, a mailed one-time link or code, forgot and reset, the account page."""

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
    signed_in,
    web_of,
)
from mailgate.web.security import SESSION_COOKIE
from ticketing.account_mail import mail_link, mail_password_changed
from ticketing.accounts import (
    count_attempts,
    find_account,
    forget_attempts,
    hash_password,
    may_sign_in,
    password_matches,
    password_problem,
    prune_attempts,
    record_attempt,
    set_password,
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


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _signed_in_response(request: Request, token: str, next_path: str) -> Response:
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


async def sign_in(request: Request) -> Response:
    form, ours = await read_form(request)
    email = form.text("email", 320).strip()
    next_path = safe_next(form.get("next"))
    if not ours:
        return render(request, "sign_in.html", 403, next=next_path, email=email, error=EXPIRED)
    token = await in_thread(_password_sign_in, web_of(request).desk, email,
                            form.text("password", 2000), _client(request))
    if token:
        return _signed_in_response(request, token, next_path)
    error = ("Too many wrong passwords for this address: wait 15 minutes, or sign in with a "
             "link mailed to you." if token == "" else "That email and password do not match "
             "an account. Try again, or sign in with a link mailed to you.")
    return render(request, "sign_in.html", 401 if token is None else 429, next=next_path,
                  email=email, error=error)


# --- a mailed link or code --------------------------------------------------------


def _mail(desk: Desk, address: str, client: str, purpose: str, next_path: str) -> None:
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        prune_attempts(session, now - timedelta(days=1))
        prune(session, now, timedelta(seconds=desk.settings.web.idle_timeout))
        mail_link(session, desk, address, client, purpose, now, next_path)
    desk.committed(pages=False)


async def ask_for_link(request: Request) -> Response:
    form, ours = await read_form(request)
    email = form.text("email", 320).strip()
    next_path = safe_next(form.get("next"))
    if not ours:
        return render(request, "sign_in.html", 403, next=next_path, email=email, error=EXPIRED)
    await in_thread(_mail, web_of(request).desk, email, _client(request), "sign_in", next_path)
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
    form, ours = await read_form(request)
    email = form.text("email", 320).strip()
    next_path = safe_next(form.get("next"))
    if not ours:
        return render(request, "check_mail.html", 403, email=email, next=next_path, error=EXPIRED)
    found = await in_thread(_code_sign_in, web_of(request).desk, email, form.text("code", 20))
    if found is None:
        return render(request, "check_mail.html", 401, email=email, next=next_path,
                      error="That code is not right, or it was used or has expired. "
                            "Ask for a new one below.")
    return _signed_in_response(request, found[0], next_path)


def _peek(desk: Desk, token: str, purpose: str) -> bool:
    with transaction(desk.engine) as session:
        return peek_token(session, token, purpose, desk.clock.now()) is not None


async def link_page(request: Request) -> Response:
    """A link scanner opens links in mail: the GET only shows a button, the POST signs in."""
    token = request.path_params["token"]
    if not await in_thread(_peek, web_of(request).desk, token, "sign_in"):
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
    return _signed_in_response(request, found[0], found[1])


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


# --- forgot password, reset, the account page ------------------------------------------


async def forgot_page(request: Request) -> Response:
    return render(request, "forgot.html", email="", error="")


async def forgot(request: Request) -> Response:
    form, ours = await read_form(request)
    email = form.text("email", 320).strip()
    if not ours:
        return render(request, "forgot.html", 403, email=email, error=EXPIRED)
    await in_thread(_mail, web_of(request).desk, email, _client(request), "reset", "")
    return render(request, "forgot_sent.html", email=email)


async def reset_page(request: Request) -> Response:
    if not await in_thread(_peek, web_of(request).desk, request.path_params["token"], "reset"):
        return render(request, "link_dead.html", 410)
    return render(request, "reset.html", error="")


def _new_password(desk: Desk, account_id: int, password_hash: str, keep: str) -> None:
    """Set it, end every other session, and tell the account by mail."""
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        account = session.get(Account, account_id)
        assert account is not None
        set_password(session, account, password_hash)
        end_sessions(session, account_id, keep=keep)
        mail_password_changed(session, desk, account, now)
    desk.committed(pages=False)


def _reset(desk: Desk, token: str, password_hash: str) -> str | None:
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        used = use_token(session, token, "reset", now)
        account = session.get(Account, used.account_id) if used else None
        if account is None or account.id is None or not may_sign_in(session, desk.settings, account):
            return None
        fresh = start_session(session, account, now)
    _new_password(desk, account.id, password_hash, keep=fresh)
    return fresh


def _two_passwords(form: Posted) -> tuple[str, str | None]:
    password = form.text("password", 2000)
    if password != form.text("password_again", 2000):
        return password, "The two passwords are not the same."
    return password, password_problem(password)


async def reset(request: Request) -> Response:
    form, ours = await read_form(request)
    if not ours:
        return render(request, "reset.html", 403, error=EXPIRED)
    password, problem = _two_passwords(form)
    if problem:
        return render(request, "reset.html", 400, error=problem)
    hashed = await in_thread(hash_password, password)
    token = await in_thread(_reset, web_of(request).desk, request.path_params["token"], hashed)
    if token is None:
        return render(request, "link_dead.html", 410)
    return _signed_in_response(request, token, "/requests")


@signed_in
async def account_page(request: Request) -> Response:
    return render(request, "account.html", error="", done=request.query_params.get("done", ""))


@signed_in
async def change_password(request: Request) -> Response:
    form, ours = await read_form(request)
    if not ours:
        return render(request, "account.html", 403, error=EXPIRED, done="")
    password, problem = _two_passwords(form)
    if problem:
        return render(request, "account.html", 400, error=problem, done="")
    account: Account = request.state.account
    assert account.id is not None
    hashed = await in_thread(hash_password, password)
    await in_thread(_new_password, web_of(request).desk, account.id, hashed,
                    request.cookies.get(SESSION_COOKIE, ""))
    return redirect("/account?done=password")
