"""The operators' pages under /ops: held mail to release, quarantined mail to replay or
download. Every agent is an operator here; anyone else gets a 404."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailgate.web.desk import agents_only
from mailgate.web.helpdesk import EXPIRED
from mailgate.web.pages import in_thread, read_form, render, web_of
from ticketing.blobs import MissingBlob
from ticketing.db import StorageError, transaction
from ticketing.desk import Desk
from ticketing.ingest import release, replay
from ticketing.models import Quarantine
from ticketing.reports import list_inbound


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


@agents_only
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
        return await _page(request, 503, "The database is unavailable; nothing was done.")
    ticket = f" as #{outcome.ticket}" if outcome.ticket else ""
    return await _page(request, 200, done=f"{what}: {outcome.status}{ticket}")


@agents_only
async def release_held(request: Request) -> Response:
    return await _act(request, release, "Released")


@agents_only
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


@agents_only
async def download_quarantined(request: Request) -> Response:
    """The mail as a file to save, never shown: it is what broke ingest, and hostile."""
    number: int = request.path_params["number"]
    raw = await in_thread(_raw, web_of(request).desk, number)
    if raw is None:
        raise HTTPException(404)
    return Response(raw, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="quarantine-{number}.eml"',
        "X-Content-Type-Options": "nosniff"})


