"""The customers' pages: Submit a request, My requests, a ticket with its thread and Reply."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailgate.web.pages import (
    Posted,
    agent_signed_in,
    current_account,
    download_stored,
    file_id_of,
    in_thread,
    read_form,
    redirect,
    render,
    signed_in,
    web_of,
)
from mailgate.web.submission import reply_inbound, request_inbound
from ticketing.addresses import normalize
from ticketing.conversation import reply_address, subject_tag
from ticketing.db import StorageError, transaction
from ticketing.desk import Desk
from ticketing.inbound import Inbound, Outcome
from ticketing.incidents import open_incidents
from ticketing.ingest import ingest
from ticketing.models import Account
from ticketing.portal import TicketView, attachment_for, my_tickets, ticket_for, ticket_view
from ticketing.severity import MEANINGS, Severity

EXPIRED = "This page had expired, so nothing was sent. Please check the form and send it again."
_NONCE = re.compile(r"[0-9a-f]{32}")


def form_nonce(form: Posted | None = None) -> str:
    sent = form.get("nonce") if form is not None else None
    return sent if isinstance(sent, str) and _NONCE.fullmatch(sent) else secrets.token_hex(16)


def _open_incidents(desk: Desk) -> list[dict[str, Any]]:
    """Incidents open right now, with the address of each one's status page."""
    with transaction(desk.engine) as session:
        return [{"number": i.id, "title": i.title, "state": i.state,
                 "url": f"{desk.settings.web.url}/status/incidents/{i.id}"}
                for i in open_incidents(session)]


def _levels() -> list[tuple[Severity, str]]:
    return [(level, MEANINGS[level]) for level in sorted(Severity, reverse=True)]


async def _ingest(request: Request, inbound: Inbound) -> Outcome:
    """The one ingest path, in the same worker threads the mail edges use."""
    web = web_of(request)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(web.ingest_executor, ingest, web.desk, inbound)


async def home(request: Request) -> Response:
    """Customers to their requests, agents to the Queue, anyone else to sign in."""
    account = await current_account(request)
    if account is None:
        return redirect("/sign-in")
    if await in_thread(agent_signed_in, web_of(request).desk, account.address):
        return redirect("/desk")
    return redirect("/requests")


# --- My requests and a ticket ----------------------------------------------------------


def _mine(desk: Desk, address: str, page: int) -> list[Any]:
    with transaction(desk.engine) as session:
        return my_tickets(session, address, limit=100, offset=100 * page)


@signed_in
async def my_requests(request: Request) -> Response:
    account: Account = request.state.account
    if await in_thread(agent_signed_in, web_of(request).desk, account.address):
        return redirect("/desk")  # an agent's home is the Queue
    page = request.query_params.get("page", "0")
    number = int(page) if page.isdigit() and len(page) < 6 else 0
    tickets = await in_thread(_mine, web_of(request).desk, account.address, number)
    return render(request, "requests.html", tickets=tickets, page=number)


def _view(desk: Desk, address: str, number: int) -> TicketView | None:
    with transaction(desk.engine) as session:
        ticket = ticket_for(session, address, number)
        return ticket_view(session, desk.settings, ticket) if ticket is not None else None


def _ticket_number(request: Request) -> int:
    number: int = request.path_params["number"]
    if number > 2**62:
        raise HTTPException(404)
    return number


@signed_in
async def ticket_page(request: Request) -> Response:
    return await _show_ticket(request, "", "", 200)


async def _show_ticket(request: Request, text: str, error: str, status: int,
                       nonce: str = "") -> Response:
    account: Account = request.state.account
    view = await in_thread(_view, web_of(request).desk, account.address, _ticket_number(request))
    if view is None:
        raise HTTPException(404)
    return render(request, "ticket.html", status, view=view, tag=subject_tag(view.ticket.id or 0),
                  text=text, error=error, nonce=nonce or form_nonce())


@signed_in
async def reply(request: Request) -> Response:
    account: Account = request.state.account
    desk = web_of(request).desk
    form, ours = await read_form(request)
    text = form.text("text", 1_000_000)
    nonce = form_nonce(form)
    if not ours:
        return await _show_ticket(request, text, EXPIRED, 403, nonce)
    number = _ticket_number(request)
    view = await in_thread(_view, desk, account.address, number)
    if view is None:
        raise HTTPException(404)
    uploads = form.files("attachments")
    if not text.strip() and not uploads:
        return await _show_ticket(request, text, "Write a reply, or attach a file.", 400, nonce)
    inbound = reply_inbound(
        desk.settings, account, nonce, desk.clock.now(),
        reply_to=reply_address(number, desk.settings),
        subject=f"Re: {subject_tag(number)} {view.ticket.subject}", root=view.root_message_id,
        text=text, uploads=uploads)
    try:
        outcome = await _ingest(request, inbound)
    except StorageError:
        return await _show_ticket(request, text, "Your reply could not be stored just now, so it "
                                  "was not sent. Please press Reply again in a minute.", 503, nonce)
    if outcome.ticket is None:
        return await _show_ticket(request, text, "Your reply could not be added to the ticket: "
                                  + outcome.detail, 422, nonce)
    return redirect(f"/requests/{outcome.ticket}#m{outcome.message or ''}")


@signed_in
async def download(request: Request) -> Response:
    """Files are handed over to save, never shown: a file is the sender's, not ours to render."""
    account: Account = request.state.account
    number, file_id = _ticket_number(request), file_id_of(request)
    return await download_stored(
        request, lambda session: attachment_for(session, account.address, number, file_id))


# --- Submit a request --------------------------------------------------------------------


async def _form_page(request: Request, status: int = 200, **values: Any) -> Response:
    fields = {"cc": "", "subject": "", "description": "", "severity": "S3", "confirm": False,
              "error": "", "ask_confirm": False, "nonce": form_nonce()} | values
    incidents = await in_thread(_open_incidents, web_of(request).desk)
    return render(request, "new_request.html", status, levels=_levels(), incidents=incidents,
                  **fields)


@signed_in
async def new_request_page(request: Request) -> Response:
    return await _form_page(request)


def _cc_list(text: str) -> tuple[list[str], list[str]]:
    good: list[str] = []
    bad: list[str] = []
    for part in re.split(r"[,;\s]+", text):
        if part:
            address = normalize(part)
            (good if address else bad).append(address or part)
    return list(dict.fromkeys(good)), bad


@signed_in
async def submit_request(request: Request) -> Response:
    account: Account = request.state.account
    desk = web_of(request).desk
    form, ours = await read_form(request)
    values: dict[str, Any] = {
        "cc": form.text("cc", 5000),
        "subject": form.text("subject", 1000),
        "description": form.text("description", 1_000_000),
        "severity": form.text("severity", 4) or "S3",
        "confirm": form.get("confirm") == "yes",
        "nonce": form_nonce(form),
    }
    if not ours:
        return await _form_page(request, 403, error=EXPIRED, **values)
    try:
        severity = Severity.parse(values["severity"])
    except ValueError:
        return await _form_page(request, 400, error="Choose a severity.", **values)
    cc, bad = _cc_list(values["cc"])
    problem = ""
    if bad:
        problem = "These CC addresses do not look right: " + ", ".join(bad[:5])
    elif not values["subject"].strip():
        problem = "Write a subject."
    elif not values["description"].strip():
        problem = "Describe the problem."
    if problem:
        return await _form_page(request, 400, error=problem, **values)
    if severity is Severity.S0 and not values["confirm"]:
        return await _form_page(request, 200, ask_confirm=True, **values)
    inbound = request_inbound(
        desk.settings, account, values["nonce"], desk.clock.now(), cc=cc,
        subject=values["subject"], description=values["description"], severity=severity,
        uploads=form.files("attachments"))
    try:
        outcome = await _ingest(request, inbound)
    except StorageError:
        return await _form_page(request, 503, error="Your request could not be stored just now, so "
                          "nothing was sent. Please press Submit again in a minute.", **values)
    if outcome.ticket is None:
        return await _form_page(request, 422, error="Your request could not be opened as a ticket ("
                          + outcome.detail + "). Please write to us by mail.", **values)
    return redirect(f"/requests/{outcome.ticket}")
