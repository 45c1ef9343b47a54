"""The agents' incident pages under /desk/incidents: open one, post updates, resolve it.

Each form calls the same functions as `mailgate incidents open|update|resolve`, so the
web and the command line change an incident, and mail its subscribers, the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailgate.web.desk import agents_only
from mailgate.web.helpdesk import EXPIRED, form_nonce
from mailgate.web.pages import in_thread, read_form, redirect, render, web_of
from mailgate.web.submission import message_id
from ticketing.db import StorageError, transaction
from ticketing.desk import Desk
from ticketing.incident_mail import open_and_tell, update_and_tell
from ticketing.incidents import STATES, IncidentError, NoIncident, describe, list_incidents
from ticketing.models import Account, Incident

UNSTORED = "The change could not be stored just now; nothing was done. Please send it again."

T = TypeVar("T")


def _form_key(request: Request, nonce: str, action: str) -> str:
    """The form's nonce, signed for this agent and this action: the same form sent twice
    (a double click, a resent POST) posts once, and the second answers as the first."""
    account: Account = request.state.account
    return message_id(web_of(request).desk.settings, account, f"{action}:{nonce}")


async def _once(call: Callable[[], T]) -> T:
    """Run it; if the same form was being posted at the same moment and won, run it again
    to be answered with what that one did."""
    try:
        return await in_thread(call)
    except IntegrityError:
        return await in_thread(call)


def _listing(desk: Desk) -> list[dict[str, Any]]:
    with transaction(desk.engine) as session:
        return list_incidents(session)


def _one(desk: Desk, number: int) -> dict[str, Any] | None:
    with transaction(desk.engine) as session:
        incident = session.get(Incident, number) if 0 < number < 2**62 else None
        return describe(session, incident) if incident is not None else None


async def _show_list(request: Request, status: int = 200, error: str = "",
                     form: dict[str, Any] | None = None, nonce: str = "") -> Response:
    desk = web_of(request).desk
    incidents = await in_thread(_listing, desk)
    return render(request, "desk/incidents.html", status, incidents=incidents, error=error,
                  nonce=nonce or form_nonce(),
                  form=form or {"title": "", "components": [], "state": "investigating",
                                "message": ""},
                  components=desk.settings.status.components,
                  states=[s for s in STATES if s != "resolved"])


async def _show_one(request: Request, status: int = 200, error: str = "",
                    message: str = "", nonce: str = "") -> Response:
    incident = await in_thread(_one, web_of(request).desk, request.path_params["number"])
    if incident is None:
        raise HTTPException(404)
    return render(request, "desk/incident.html", status, i=incident, error=error,
                  message=message, states=STATES, nonce=nonce or form_nonce())


@agents_only
async def incidents_page(request: Request) -> Response:
    return await _show_list(request)


@agents_only
async def open_one(request: Request) -> Response:
    account: Account = request.state.account
    form, ours = await read_form(request)
    title, state = form.text("title", 200), form.text("state", 20)
    message = form.text("message", 20_000)
    components = [v for k, v in form.items if k == "components" and isinstance(v, str)]
    kept = {"title": title, "message": message, "state": state, "components": components}
    nonce = form_nonce(form)
    if not ours:
        return await _show_list(request, 403, EXPIRED, kept, nonce)
    key = _form_key(request, nonce, "incident:open")
    try:
        shown, _ = await _once(lambda: open_and_tell(
            web_of(request).desk, title, components=components, state=state, message=message,
            author=account.address, form_key=key))
    except IncidentError as exc:
        return await _show_list(request, 400, f"The incident was not opened: {exc}.", kept,
                                nonce)
    except StorageError:
        return await _show_list(request, 503, UNSTORED, kept, nonce)
    return redirect(f"/desk/incidents/{shown['number']}")


@agents_only
async def incident_page(request: Request) -> Response:
    return await _show_one(request)


async def _post(request: Request, resolving: bool) -> Response:
    account: Account = request.state.account
    number: int = request.path_params["number"]
    form, ours = await read_form(request)
    message = form.text("message", 20_000)
    nonce = form_nonce(form)
    if not ours:
        return await _show_one(request, 403, EXPIRED, message, nonce)
    state = "resolved" if resolving else form.text("state", 20)
    key = _form_key(request, nonce, f"incident:{number}:{'resolve' if resolving else 'update'}")
    try:
        await _once(lambda: update_and_tell(
            web_of(request).desk, number, state=state or None, message=message,
            author=account.address, tell_tickets=resolving and bool(form.text("tell_tickets")),
            form_key=key))
    except NoIncident:
        raise HTTPException(404) from None
    except IncidentError as exc:
        return await _show_one(request, 400, f"Nothing was posted: {exc}.", message, nonce)
    except StorageError:
        return await _show_one(request, 503, UNSTORED, message, nonce)
    return redirect(f"/desk/incidents/{number}")


@agents_only
async def post_update(request: Request) -> Response:
    return await _post(request, resolving=False)


@agents_only
async def resolve(request: Request) -> Response:
    return await _post(request, resolving=True)
