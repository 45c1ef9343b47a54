"""The agents' pages under /desk: the Queue. Anyone not an agent gets a 404 there."""

from __future__ import annotations

import asyncio
import functools
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailgate.web.helpdesk import EXPIRED
from mailgate.web.pages import (
    Endpoint,
    Posted,
    agent_signed_in,
    current_account,
    download_stored,
    file_id_of,
    in_thread,
    read_form,
    redirect,
    render,
    web_of,
)
from mailgate.web.submission import reply_inbound
from ticketing.commands import STATUSES
from ticketing.conversation import reply_address, subject_tag
from ticketing.db import StorageError, transaction
from ticketing.desk import Desk
from ticketing.incidents import incidents_of, open_incidents
from ticketing.ingest import ingest
from ticketing.models import Account, Ticket
from ticketing.portal import Person, ticket_view
from ticketing.queueview import QueueFilter, QueueLine, queue
from ticketing.reports import file_on_ticket, page_history, show_ticket
from ticketing.severity import Severity


def agents_only(endpoint: Endpoint) -> Endpoint:
    """An agent's page: a visitor is asked to sign in; a signed-in customer gets a 404, as
    for a page that does not exist."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        account = await current_account(request)
        if account is None:
            return redirect("/sign-in?next=/desk" if request.method == "GET" else "/sign-in")
        if not await in_thread(agent_signed_in, web_of(request).desk, account.address):
            raise HTTPException(404)
        return await endpoint(request)

    return wrapper


def ago(value: timedelta | None) -> str:
    """A duration as a person reads it: 3d 4h, 5h 10m, 12m."""
    if value is None:
        return "—"
    minutes = max(0, int(value.total_seconds() // 60))
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def _filter(request: Request, me: str) -> QueueFilter:
    params = request.query_params
    status = params.get("status", "")
    if status not in ("", "all", "open", "pending", "solved", "closed"):
        status = ""
    severity = params.get("severity", "")
    return QueueFilter(
        status=status,
        severity=int(severity) if severity in ("0", "1", "2", "3") else None,
        mine=me if params.get("mine") else "",
        unassigned=bool(params.get("unassigned")),
        text=params.get("q", "")[:200],
    )


def _queue(desk: Desk, wanted: QueueFilter) -> list[QueueLine]:
    with transaction(desk.engine) as session:
        return queue(session, desk.settings, wanted, desk.clock.now())


@agents_only
async def queue_page(request: Request) -> Response:
    account: Account = request.state.account
    wanted = _filter(request, account.address)
    lines = await in_thread(_queue, web_of(request).desk, wanted)
    return render(request, "desk/queue.html", lines=lines, wanted=wanted, ago=ago,
                  levels=sorted(Severity, reverse=True))


# --- A ticket, and what an agent does on it --------------------------------------------

STALE = ("This ticket changed since you opened it (by someone else, or in another tab), so "
         "nothing was done. Look at it again below, then send your change once more.")


@dataclass(frozen=True)
class Found:
    shown: dict[str, Any]  # the ticket as the CLI shows it
    root: str  # its thread's first Message-ID
    version: str
    people: list[Person]
    pages: list[dict[str, Any]]
    attached: list[tuple[int, str]]  # the incidents it is attached to
    attachable: list[tuple[int, str]]  # open incidents it may be attached to


def _ticket(desk: Desk, number: int) -> Found | None:
    with transaction(desk.engine) as session:
        ticket = session.get(Ticket, number)
        if ticket is None:
            return None
        shown = show_ticket(session, number)
        assert shown is not None
        view = ticket_view(session, desk.settings, ticket)
        attached = [(i.id or 0, i.title) for i in incidents_of(session, number)]
        attachable = [(i.id or 0, i.title) for i in open_incidents(session)
                      if (i.id, i.title) not in attached]
        return Found(shown, view.root_message_id, version_of(ticket), view.people,
                     page_history(session, number), attached, attachable)


def version_of(ticket: Ticket) -> str:
    """What a form carries to say which state of the ticket it was made from."""
    return ticket.updated_at.isoformat()


def _number(request: Request) -> int:
    number: int = request.path_params["number"]
    if number > 2**62:
        raise HTTPException(404)
    return number


async def _show(request: Request, status: int = 200, error: str = "", text: str = "",
                nonce: str = "") -> Response:
    found = await in_thread(_ticket, web_of(request).desk, _number(request))
    if found is None:
        raise HTTPException(404)
    return render(request, "desk/ticket.html", status, t=found.shown, version=found.version,
                  people=found.people, pages=found.pages, attached=found.attached,
                  attachable=found.attachable, error=error, text=text,
                  nonce=nonce or secrets.token_hex(16), statuses=STATUSES,
                  levels=sorted(Severity), quote=quote)


@agents_only
async def ticket_page(request: Request) -> Response:
    return await _show(request)


def _commands(form: Posted) -> str:
    """The form's choices as the command lines an agent's mail would start with."""
    lines = []
    if form.text("kind") == "note":
        lines.append("#note")
    status = form.text("status")
    if status in STATUSES:
        lines.append(f"#status {status}")
    severity = form.text("severity")
    if severity in ("S0", "S1", "S2", "S3"):
        lines.append(f"#severity {severity}")
    assign = " ".join(form.text("assign", 320).split())
    if assign:
        lines.append(f"#assign {assign}")
    for name in ("follow", "unfollow"):
        address = "".join(form.text(name, 320).split())
        if address:
            lines.append(f"#{name} {address}")
    incident = form.text("incident", 20).strip()
    if incident.isdigit():
        lines.append(f"#incident {int(incident)}")
    return "\n".join(lines)


@agents_only
async def act(request: Request) -> Response:
    """Reply, note, status, severity, assign, follow, unfollow and attaching to an incident:
    sent as the agent's mail with its command lines would be, through the one ingest, so
    mail and web change a ticket the same way."""
    account: Account = request.state.account
    desk = web_of(request).desk
    form, ours = await read_form(request)
    text = form.text("text", 1_000_000)
    nonce = form.text("nonce", 32)
    if not ours:
        return await _show(request, 403, EXPIRED, text, nonce)
    found = await in_thread(_ticket, desk, _number(request))
    if found is None:
        raise HTTPException(404)
    shown = found.shown
    if form.text("version") != found.version:
        return await _show(request, 409, STALE, text, nonce)
    # Only what was changed from what the form showed is asked for.
    status = form.text("status")
    severity = form.text("severity")
    changes = Posted([
        ("kind", form.text("kind")),
        ("status", status if status != shown["status"] else ""),
        ("severity", severity if severity != shown["severity"] else ""),
        ("assign", form.text("assign") if form.text("assign") != (shown["assignee"] or "") else ""),
        ("follow", form.text("follow")),
        ("unfollow", form.text("unfollow")),
        ("incident", form.text("incident")),
    ])
    commands = _commands(changes)
    if not commands and not text.strip():
        return await _show(request, 400, "Write a reply or a note, or change something.", text,
                           nonce)
    if not text.strip() and "#note" not in commands:
        commands = "#note\n" + commands  # a change alone tells no customer anything
    number = _number(request)
    inbound = reply_inbound(
        desk.settings, account, nonce if len(nonce) == 32 else secrets.token_hex(16),
        desk.clock.now(), reply_to=reply_address(number, desk.settings),
        subject=f"Re: {subject_tag(number)} {shown['subject']}", root=found.root,
        text=(commands + "\n\n" + text).strip("\n"), uploads=form.files("attachments"))
    loop = asyncio.get_running_loop()
    web = web_of(request)
    try:
        outcome = await loop.run_in_executor(web.ingest_executor, ingest, desk, inbound)
    except StorageError:
        return await _show(request, 503, "The change could not be stored just now; nothing "
                           "was done. Please send it again in a minute.", text, nonce)
    if outcome.ticket != number or outcome.detail.startswith("command error"):
        return await _show(request, 422, "The change could not be made: " + outcome.detail,
                           text, nonce)
    return redirect(f"/desk/tickets/{number}")


@agents_only
async def download(request: Request) -> Response:
    """Any file on the ticket, notes' too, handed over to save as the customers' are."""
    number, file_id = _number(request), file_id_of(request)
    return await download_stored(request, lambda session: file_on_ticket(session, number, file_id))
