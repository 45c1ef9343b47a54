"""Subscribe to updates: the form on /status, the mailed confirmation link, the manage
page, and the one-click unsubscribe a mail client posts (RFC 8058)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mailgate.web.auth import client_address
from mailgate.web.pages import in_thread, read_form, redirect, render, web_of
from mailgate.web.security import sent_from_our_page
from ticketing.addresses import normalize
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.subscriptions import (
    ask,
    confirm,
    end,
    find_by_token,
    prune,
    subscriber_token,
    waiting,
)

NOT_SENT = ("This page had expired, so nothing was mailed. Check the address and press "
            "the button again.")
DEAD = ("This link no longer works: it was used already, it is more than a day old, or the "
        "subscription it was for has ended.")


def _ask(desk: Desk, address: str, client: str) -> None:
    now = desk.clock.now()
    with transaction(desk.engine) as session:
        ask(session, desk, address, client, now)
        prune(session, now)
    desk.committed(pages=False)


async def subscribe_page(request: Request) -> Response:
    return render(request, "status_subscribe.html", email="", error="")


async def subscribe(request: Request) -> Response:
    """The same page, with the same words and status, whatever the address: new, waiting,
    subscribed, over a limit or not one we mail. Only a malformed one is told."""
    desk = web_of(request).desk
    form, ours = await read_form(request)
    email = form.text("email", 320).strip()
    if not (ours or sent_from_our_page(request, desk.settings.web.url)):
        return render(request, "status_subscribe.html", 403, email=email, error=NOT_SENT)
    if not normalize(email):
        return render(request, "status_subscribe.html", 400, email=email,
                      error="That is not a mail address. Check it and try again.")
    await in_thread(_ask, desk, email, client_address(request))
    return render(request, "status_subscribe_sent.html", email=email)


def _waiting(desk: Desk, token: str) -> bool:
    with transaction(desk.engine) as session:
        return waiting(session, token, desk.clock.now()) is not None


async def confirm_page(request: Request) -> Response:
    """A link scanner opens links in mail: the GET only shows a button, the POST confirms."""
    if not await in_thread(_waiting, web_of(request).desk, request.path_params["token"]):
        return render(request, "status_message.html", 410, title="Link used or expired", text=DEAD)
    return render(request, "status_confirm.html", error="")


def _confirm(desk: Desk, token: str) -> str | None:
    """The manage token of the subscription now confirmed, or None."""
    with transaction(desk.engine) as session:
        row = confirm(session, token, desk.clock.now())
        if row is None or row.id is None:
            return None
        return subscriber_token(row.id, row.key, desk.settings.support.secret)


async def confirm_subscription(request: Request) -> Response:
    _, ours = await read_form(request)
    if not ours:
        return render(request, "status_confirm.html", 403,
                      error="This page had expired, so nothing was done. Press the button again.")
    manage = await in_thread(_confirm, web_of(request).desk, request.path_params["token"])
    if manage is None:
        return render(request, "status_message.html", 410, title="Link used or expired", text=DEAD)
    return redirect(f"/status/subscription/{manage}?confirmed=1")


def _subscription(desk: Desk, token: str) -> dict[str, Any] | None:
    with transaction(desk.engine) as session:
        row = find_by_token(session, token, desk.settings.support.secret)
        if row is None:
            return None
        since: datetime | None = row.confirmed_at
        return {"address": row.address,
                "since": since.strftime("%Y-%m-%d %H:%M UTC") if since else ""}


async def subscription_page(request: Request) -> Response:
    """Where a subscriber sees what they are subscribed with, and can end it. Reached by
    the link in every update; opening it (or the unsubscribe link) changes nothing."""
    token = request.path_params["token"]
    shown = await in_thread(_subscription, web_of(request).desk, token)
    if shown is None:
        return render(request, "status_message.html", 404, title="No such subscription", text=DEAD)
    return render(request, "status_subscription.html", token=token,
                  confirmed=request.query_params.get("confirmed") == "1", **shown)


def _end(desk: Desk, token: str) -> bool:
    with transaction(desk.engine) as session:
        row = find_by_token(session, token, desk.settings.support.secret)
        if row is None:
            return False
        end(session, row, "unsubscribe link")
        return True


async def unsubscribe(request: Request) -> Response:
    """One-click unsubscribe (RFC 8058): a mail provider posts `List-Unsubscribe=One-Click`
    with no cookie and no form token. The unguessable token in the address is what
    proves the right to end this subscription, so this one form is without the
    anti-forgery check: a forged POST could only do what the link's holder can."""
    form, _ = await read_form(request)
    if form.text("List-Unsubscribe", 20) != "One-Click":
        return render(request, "status_message.html", 400, title="Not unsubscribed",
                      text="Nothing was changed: use the button on the subscription's page.")
    if not await in_thread(_end, web_of(request).desk, request.path_params["token"]):
        return render(request, "status_message.html", 404, title="No such subscription", text=DEAD)
    return render(request, "status_message.html", title="Unsubscribed",
                  text="You will get no more status updates by mail. You can subscribe again "
                       "on the status page at any time.")
