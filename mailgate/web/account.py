"""Passwords: forgot and reset by a mailed link, and the account page that sets one."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from mailgate.web.auth import EXPIRED, client_address, mail_link_for, peek, signed_in_response
from mailgate.web.pages import Posted, in_thread, read_form, redirect, render, signed_in, web_of
from mailgate.web.security import SESSION_COOKIE
from ticketing.account_mail import mail_password_changed
from ticketing.accounts import hash_password, may_sign_in, password_problem, set_password
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Account
from ticketing.websessions import end_sessions, start_session, use_token


async def forgot_page(request: Request) -> Response:
    return render(request, "forgot.html", email="", error="")


async def forgot(request: Request) -> Response:
    form, ours = await read_form(request)
    email = form.text("email", 320).strip()
    if not ours:
        return render(request, "forgot.html", 403, email=email, error=EXPIRED)
    await in_thread(mail_link_for, web_of(request).desk, email, client_address(request), "reset", "")
    return render(request, "forgot_sent.html", email=email)


async def reset_page(request: Request) -> Response:
    if not await in_thread(peek, web_of(request).desk, request.path_params["token"], "reset"):
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
    return signed_in_response(request, token, "/requests")


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
