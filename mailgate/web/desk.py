"""The agents' pages under /desk: the Queue. Anyone not an agent gets a 404 there."""

from __future__ import annotations

import functools
from datetime import timedelta

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailgate.web.pages import Endpoint, current_account, in_thread, redirect, render, web_of
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Account
from ticketing.queueview import QueueFilter, QueueLine, is_agent, queue
from ticketing.severity import Severity


def agent_signed_in(desk: Desk, address: str) -> bool:
    with transaction(desk.engine) as session:
        return is_agent(session, desk.settings, address)


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
