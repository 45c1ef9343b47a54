"""The operators' Accounts page: who may sign in to the Help Desk, adding, disabling
(its sessions end at once) and clearing an address marked bouncing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mailgate.web.helpdesk import EXPIRED
from mailgate.web.operations import UNAVAILABLE, actor_of, operators_only
from mailgate.web.pages import Posted, in_thread, read_form, render, web_of
from ticketing.accounts import add_account, clear_bounces, disable_account, list_accounts
from ticketing.audit import Actor
from ticketing.db import StorageError, transaction
from ticketing.desk import Desk

SHOWN = 200  # accounts on the page at most: the search box finds the others


def _accounts(desk: Desk, text: str) -> list[dict[str, Any]]:
    with transaction(desk.engine) as session:
        return list_accounts(session, text, limit=SHOWN + 1)


async def _page(request: Request, status: int = 200, error: str = "", done: str = "",
                text: str = "") -> Response:
    # A NUL is in no address or name, and no database text takes one.
    text = (text or request.query_params.get("q", "")[:320]).replace("\x00", "")
    accounts = await in_thread(_accounts, web_of(request).desk, text)
    return render(request, "ops/accounts.html", status, accounts=accounts[:SHOWN],
                  more=len(accounts) > SHOWN, text=text, error=error, done=done)


@operators_only
async def accounts_page(request: Request) -> Response:
    return await _page(request)


def _add(desk: Desk, form: Posted, by: Actor) -> str:
    with transaction(desk.engine) as session:
        account = add_account(session, form.text("address", 320), form.text("name", 200),
                              desk.clock.now(), by=by)
        return f"Account {account.address} added: it signs in with a link mailed to it."


def _disable(desk: Desk, form: Posted, by: Actor) -> str:
    address = form.text("address", 320)
    with transaction(desk.engine) as session:
        if not disable_account(session, address, desk.clock.now(), by=by):
            raise LookupError(f"There is no account {address}.")
    return f"Account {address} disabled; its sessions ended."


def _clear(desk: Desk, form: Posted, by: Actor) -> str:
    address = form.text("address", 320)
    with transaction(desk.engine) as session:
        cleared = clear_bounces(session, address, by=by) if address else []
    if not cleared:
        raise LookupError(f"{address or 'That address'} was not marked bouncing.")
    return f"{cleared[0]} is mailed again."


async def _act(request: Request, action: Callable[[Desk, Posted, Actor], str]) -> Response:
    form, ours = await read_form(request)
    if not ours:
        return await _page(request, 403, EXPIRED)
    try:
        done = await in_thread(action, web_of(request).desk, form, actor_of(request))
    except ValueError as exc:
        return await _page(request, 400, str(exc))
    except LookupError as exc:
        return await _page(request, 404, str(exc))
    except StorageError:
        return await _page(request, 503, UNAVAILABLE)
    return await _page(request, done=done)


@operators_only
async def add(request: Request) -> Response:
    return await _act(request, _add)


@operators_only
async def disable(request: Request) -> Response:
    return await _act(request, _disable)


@operators_only
async def clear_bounce(request: Request) -> Response:
    return await _act(request, _clear)
