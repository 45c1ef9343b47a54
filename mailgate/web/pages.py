"""What every area shares: rendering a page, reading a form, knowing who is signed in."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    select_autoescape,
)
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from mailgate.web.security import CSRF_COOKIE, SESSION_COOKIE, csrf_token, form_is_ours
from mailgate.web.submission import Upload
from ticketing.blobs import MissingBlob
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Account, Attachment
from ticketing.queueview import is_agent
from ticketing.roles import role_of
from ticketing.websessions import session_account

T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass
class Web:
    """The app's collaborators, kept in app.state.web."""

    desk: Desk
    ingest_executor: Executor | None
    templates: Environment

    @classmethod
    def create(cls, desk: Desk, ingest_executor: Executor | None) -> Web:
        """Pages from the operator's override folder first, then ours (templates/web)."""
        settings = desk.settings
        loaders: list[BaseLoader] = []
        if settings.templates_override:
            loaders.append(FileSystemLoader(str(Path(settings.templates_override) / "web")))
        if settings.templates_path:
            loaders.append(FileSystemLoader(str(Path(settings.templates_path) / "web")))
        else:
            loaders.append(PackageLoader("ticketing", "templates/web"))
        environment = Environment(
            loader=ChoiceLoader(loaders), autoescape=select_autoescape(default=True),
            undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        )
        return cls(desk, ingest_executor, environment)


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Database work off the event loop, so SMTP keeps answering meanwhile."""
    return await run_in_threadpool(fn, *args)


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    web = web_of(request)
    settings = web.desk.settings
    html = web.templates.get_template(name).render(
        request=request,
        account=getattr(request.state, "account", None),
        role=getattr(request.state, "role", ""),
        csrf=csrf_token(request, settings.support.secret),
        support_name=settings.support.name,
        status_page=settings.support.status_page,
        **context,
    )
    response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
    made = getattr(request.state, "new_csrf", "")
    if made:
        response.set_cookie(CSRF_COOKIE, made, httponly=True, samesite="lax",
                            secure=settings.web.secure)
    return response


def redirect(path: str) -> RedirectResponse:
    """After a POST, the next page is fetched with GET (post, redirect, get)."""
    return RedirectResponse(path, status_code=303)


def file_download(filename: str, size: int, pieces: Iterator[bytes]) -> StreamingResponse:
    """A stored file handed over to save, never shown: it is the sender's, not ours to
    render, so it comes as bytes of no type, in a sandbox, never cached."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[:100] or "attachment"
    return StreamingResponse(pieces, media_type="application/octet-stream", headers={
        "Content-Length": str(size),
        "Content-Disposition": f"attachment; filename=\"{fallback}\"; "
                               f"filename*=UTF-8''{quote(filename, safe='')}",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    })


def _stored_file(
    desk: Desk, find: Callable[[Session], Attachment | None]
) -> tuple[str, int, Iterator[bytes]] | None:
    with transaction(desk.engine) as session:
        row = find(session)
    if row is None:
        return None
    try:
        return row.filename, row.size, desk.blobs.chunks(row.sha256)
    except MissingBlob:
        return None


async def download_stored(
    request: Request, find: Callable[[Session], Attachment | None]
) -> Response:
    """The file `find` names for this visitor, as file_download hands it over; 404 when
    there is none for them, or its bytes are gone."""
    found = await in_thread(_stored_file, web_of(request).desk, find)
    if found is None:
        raise HTTPException(404)
    return file_download(*found)


def file_id_of(request: Request) -> int:
    """The file number in the path; a number too large for the database names no file."""
    file_id: int = request.path_params["file_id"]
    return file_id if file_id < 2**62 else 0


def safe_next(value: object, default: str = "/requests") -> str:
    """Only a path of our own, so a crafted sign-in link cannot send anyone elsewhere."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 500:
        return default
    if value.startswith(("//", "/\\")) or any(c in value for c in "\r\n\\"):
        return default
    return value


class Posted:
    """A posted form, read whole (the body is capped): text fields and uploaded files."""

    def __init__(self, items: list[tuple[str, str | Upload]]) -> None:
        self.items = items

    def get(self, name: str) -> str | Upload | None:
        return next((value for key, value in self.items if key == name), None)

    def text(self, name: str, limit: int = 10_000) -> str:
        value = self.get(name)
        return value[:limit] if isinstance(value, str) else ""

    def files(self, name: str) -> list[Upload]:
        return [v for k, v in self.items if k == name and isinstance(v, Upload) and v.filename]


async def read_form(request: Request) -> tuple[Posted, bool]:
    """The posted form, and whether it passed the anti-forgery checks."""
    settings = web_of(request).desk.settings
    items: list[tuple[str, str | Upload]] = []
    async with request.form(max_files=settings.web.max_files, max_fields=50) as form:
        for key, value in form.multi_items():
            if isinstance(value, str):
                items.append((key, value))
            else:
                items.append((key, Upload(value.filename or "", value.content_type
                                          or "application/octet-stream", await value.read())))
        ours = form_is_ours(request, form, settings.support.secret, settings.web.url)
    return Posted(items), ours


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax",
                        secure=web_of(request).desk.settings.web.secure)


def _lookup(desk: Desk, token: str) -> tuple[Account | None, str]:
    """The signed-in account and its role (operator, agent, customer)."""
    from datetime import timedelta

    idle = timedelta(seconds=desk.settings.web.idle_timeout)
    with transaction(desk.engine) as session:
        found = session_account(session, token, desk.clock.now(), idle)
        if found is None:
            return None, ""
        return found[0], role_of(session, desk.settings, found[0].address)


async def current_account(request: Request) -> Account | None:
    """Who is signed in; their role is kept in request.state.role ("" for nobody)."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None
    account, role = await in_thread(_lookup, web_of(request).desk, token)
    request.state.account = account
    request.state.role = role
    return account


def signed_in(endpoint: Endpoint) -> Endpoint:
    """The page needs an account: anyone else is asked to sign in, then brought back."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        if await current_account(request) is None:
            back = request.url.path if request.method == "GET" else "/requests"
            return redirect(f"/sign-in?next={quote(back, safe='/')}")
        return await endpoint(request)

    return wrapper


def agent_signed_in(desk: Desk, address: str) -> bool:
    """Whether the signed-in address is an agent's (agents see the desk, not My requests)."""
    with transaction(desk.engine) as session:
        return is_agent(session, desk.settings, address)
