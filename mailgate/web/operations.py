"""The operators' pages under /ops: the outbox and the pages to retry, held mail to
release, quarantined mail to replay or download. Only operators (agents.operators, or
`agents add --operator`) see them; anyone else signed in gets a 404, as for a page that
does not exist."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailgate.outbound import retry_now
from mailgate.paging import PageBusy, list_pages, retry_page
from mailgate.web.helpdesk import EXPIRED
from mailgate.web.pages import (
    Endpoint,
    current_account,
    in_thread,
    read_form,
    redirect,
    render,
    web_of,
)
from ticketing.audit import Actor
from ticketing.blobs import MissingBlob
from ticketing.db import StorageError, transaction
from ticketing.desk import Desk
from ticketing.ingest import release, replay
from ticketing.models import Account, Quarantine
from ticketing.reports import list_inbound, list_outbox
from ticketing.roles import OPERATOR

UNAVAILABLE = "The database is unavailable; nothing was done."


def operators_only(endpoint: Endpoint) -> Endpoint:
    """An operator's page: a visitor is asked to sign in; a customer or an agent who is
    not an operator gets a 404."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        account = await current_account(request)
        if account is None:
            back = request.url.path if request.method == "GET" else "/desk"
            return redirect(f"/sign-in?next={quote(back, safe='/')}")
        if request.state.role != OPERATOR:
            raise HTTPException(404)
        return await endpoint(request)

    return wrapper


def actor_of(request: Request) -> Actor:
    """The signed-in operator, for the audit trail: a change made on the web."""
    account: Account = request.state.account
    return Actor(account.address, account.name, route="web")


def _mail(desk: Desk) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with transaction(desk.engine) as session:
        records = list_inbound(session)
    held = [r for r in records if r["status"] == "held"]
    quarantined = [r for r in records if r["kind"] == "quarantined"]
    return held, quarantined


async def _page(request: Request, status: int = 200, error: str = "",
                done: str = "") -> Response:
    held, quarantined = await in_thread(_mail, web_of(request).desk)
    return render(request, "desk/mail.html", status, held=held, quarantined=quarantined,
                  error=error, done=done)


@operators_only
async def mail_page(request: Request) -> Response:
    return await _page(request)


async def _act(request: Request, action: Any, what: str) -> Response:
    _, ours = await read_form(request)
    if not ours:
        return await _page(request, 403, EXPIRED)
    number: int = request.path_params["number"]
    try:
        outcome = await in_thread(action, web_of(request).desk, number)
    except LookupError as exc:
        return await _page(request, 404, str(exc))
    except StorageError:
        return await _page(request, 503, UNAVAILABLE)
    ticket = f" as #{outcome.ticket}" if outcome.ticket else ""
    return await _page(request, 200, done=f"{what}: {outcome.status}{ticket}")


@operators_only
async def release_held(request: Request) -> Response:
    return await _act(request, release, "Released")


@operators_only
async def replay_quarantined(request: Request) -> Response:
    return await _act(request, replay, "Replayed")


def _raw(desk: Desk, number: int) -> bytes | None:
    with transaction(desk.engine) as session:
        row = session.get(Quarantine, number)
        sha = row.raw_sha256 if row is not None else None
    if sha is None:
        return None
    try:
        return desk.blobs.get(sha)
    except MissingBlob:
        return None


@operators_only
async def download_quarantined(request: Request) -> Response:
    """The mail as a file to save, never shown: it is what broke ingest, and hostile."""
    number: int = request.path_params["number"]
    raw = await in_thread(_raw, web_of(request).desk, number)
    if raw is None:
        raise HTTPException(404)
    return Response(raw, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="quarantine-{number}.eml"',
        "X-Content-Type-Options": "nosniff"})




# --- The outbox ---------------------------------------------------------------------

def _outbox(desk: Desk) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with transaction(desk.engine) as session:
        return list_outbox(session, "failed"), list_outbox(session, "pending")


async def _outbox_page(request: Request, status: int = 200, error: str = "",
                       done: str = "") -> Response:
    failed, waiting = await in_thread(_outbox, web_of(request).desk)
    return render(request, "ops/outbox.html", status, failed=failed, waiting=waiting,
                  error=error, done=done)


@operators_only
async def outbox_page(request: Request) -> Response:
    return await _outbox_page(request)


async def _retry_mail(request: Request, outbox_id: int | None) -> Response:
    _, ours = await read_form(request)
    if not ours:
        return await _outbox_page(request, 403, EXPIRED)
    try:
        count = await in_thread(retry_now, web_of(request).desk, outbox_id, None,
                                actor_of(request))
    except StorageError:
        return await _outbox_page(request, 503, UNAVAILABLE)
    if outbox_id is not None and not count:
        return await _outbox_page(request, 404, f"Mail {outbox_id} is not waiting or failed "
                                  "(sent already, or being sent right now).")
    return await _outbox_page(request, done=f"{count} mail(s) due now: they go out within "
                              "seconds.")


@operators_only
async def retry_mail(request: Request) -> Response:
    number: int = request.path_params["number"]
    return await _retry_mail(request, number)


@operators_only
async def retry_all_mail(request: Request) -> Response:
    """Every failed and waiting mail due now, as `mailgate outbox retry --all` does."""
    return await _retry_mail(request, None)


# --- On-call pages ------------------------------------------------------------------

def _pages(desk: Desk) -> list[dict[str, Any]]:
    with transaction(desk.engine) as session:
        return list(reversed(list_pages(session)))


async def _pages_page(request: Request, status: int = 200, error: str = "",
                      done: str = "") -> Response:
    pages = await in_thread(_pages, web_of(request).desk)
    return render(request, "ops/pages.html", status, pages=pages, error=error, done=done)


@operators_only
async def pages_page(request: Request) -> Response:
    return await _pages_page(request)


@operators_only
async def retry_one_page(request: Request) -> Response:
    _, ours = await read_form(request)
    if not ours:
        return await _pages_page(request, 403, EXPIRED)
    number: int = request.path_params["number"]
    desk = web_of(request).desk
    try:
        count = await in_thread(retry_page, desk.engine, number, desk.clock.now(), None,
                                actor_of(request))
    except StorageError:
        return await _pages_page(request, 503, UNAVAILABLE)
    except PageBusy as exc:
        return await _pages_page(request, 409, str(exc).capitalize() + ".")
    if not count:
        return await _pages_page(request, 404, f"Page {number} is not waiting or given up "
                                 "(delivered already, or not there).")
    desk.committed(True)
    return await _pages_page(request, done=f"Page {number} is due now.")
