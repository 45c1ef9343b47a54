"""The Help Desk's routes, top to bottom, and the app that serves them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mailgate.monitoring import Timing
from mailgate.web import (
    account,
    auth,
    desk,
    desk_incidents,
    helpdesk,
    operations,
    ops_accounts,
    status,
    subscriptions,
)
from mailgate.web.pages import Web, render
from mailgate.web.security import Guard
from ticketing.desk import Desk

STATIC = Path(__file__).resolve().parent / "static"

# The largest number a row's id column holds (PostgreSQL's integer).
LARGEST_ROW = 2**31 - 1


class RowNumber(Convertor[int]):
    """A row's number in a path. One past what the column holds names no row: it reads
    as 0, which no row has, so the page is a 404 and never a database error."""

    regex = "[0-9]+"

    def convert(self, value: str) -> int:
        return int(value) if len(value) <= 10 and int(value) <= LARGEST_ROW else 0

    def to_string(self, value: int) -> str:
        return str(int(value))


register_url_convertor("row", RowNumber())

ROUTES = [
    Route("/", helpdesk.home),
    # Signing in and out
    Route("/sign-in", auth.sign_in_page),
    Route("/sign-in", auth.sign_in, methods=["POST"]),
    Route("/sign-in/link", auth.ask_for_link, methods=["POST"]),
    Route("/sign-in/code", auth.sign_in_with_code, methods=["POST"]),
    Route("/sign-in/link/{token}", auth.link_page),
    Route("/sign-in/link/{token}", auth.sign_in_with_link, methods=["POST"]),
    Route("/sign-out", auth.sign_out, methods=["POST"]),
    Route("/password/forgot", account.forgot_page),
    Route("/password/forgot", account.forgot, methods=["POST"]),
    Route("/password/reset/{token}", account.reset_page),
    Route("/password/reset/{token}", account.reset, methods=["POST"]),
    Route("/account", account.account_page),
    Route("/account/password", account.change_password, methods=["POST"]),
    # The customers' Help Desk
    Route("/requests", helpdesk.my_requests),
    Route("/requests/new", helpdesk.new_request_page),
    Route("/requests/new", helpdesk.submit_request, methods=["POST"]),
    Route("/requests/{number:row}", helpdesk.ticket_page),
    Route("/requests/{number:row}/reply", helpdesk.reply, methods=["POST"]),
    Route("/requests/{number:row}/files/{file_id:row}/{name}", helpdesk.download),
    # The agents' desk
    Route("/desk", desk.queue_page),
    Route("/desk/tickets/{number:row}", desk.ticket_page),
    Route("/desk/tickets/{number:row}", desk.act, methods=["POST"]),
    Route("/desk/tickets/{number:row}/files/{file_id:row}/{name}", desk.download),
    Route("/desk/incidents", desk_incidents.incidents_page),
    Route("/desk/incidents", desk_incidents.open_one, methods=["POST"]),
    Route("/desk/incidents/{number:row}", desk_incidents.incident_page),
    Route("/desk/incidents/{number:row}/update", desk_incidents.post_update, methods=["POST"]),
    Route("/desk/incidents/{number:row}/resolve", desk_incidents.resolve, methods=["POST"]),
    # The operators' pages
    Route("/ops/outbox", operations.outbox_page),
    Route("/ops/outbox/retry", operations.retry_all_mail, methods=["POST"]),
    Route("/ops/outbox/{number:row}/retry", operations.retry_mail, methods=["POST"]),
    Route("/ops/pages", operations.pages_page),
    Route("/ops/pages/{number:row}/retry", operations.retry_one_page, methods=["POST"]),
    Route("/ops/accounts", ops_accounts.accounts_page),
    Route("/ops/accounts/add", ops_accounts.add, methods=["POST"]),
    Route("/ops/accounts/disable", ops_accounts.disable, methods=["POST"]),
    Route("/ops/accounts/clear-bounce", ops_accounts.clear_bounce, methods=["POST"]),
    Route("/ops/mail", operations.mail_page),
    Route("/ops/held/{number:row}/release", operations.release_held, methods=["POST"]),
    Route("/ops/quarantine/{number:row}/replay", operations.replay_quarantined,
          methods=["POST"]),
    Route("/ops/quarantine/{number:row}/raw", operations.download_quarantined),
    # The public status page
    Route("/status", status.status_page),
    Route("/status/incidents/{number:row}", status.incident_page),
    Route("/status/feed.atom", status.feed),
    Route("/status/subscribe", subscriptions.subscribe_page),
    Route("/status/subscribe", subscriptions.subscribe, methods=["POST"]),
    Route("/status/confirm/{token}", subscriptions.confirm_page),
    Route("/status/confirm/{token}", subscriptions.confirm_subscription, methods=["POST"]),
    Route("/status/subscription/{token}", subscriptions.subscription_page),
    Route("/status/unsubscribe/{token}", subscriptions.subscription_page),
    # One-click unsubscribe (RFC 8058): the token is the proof, no form token is asked.
    Route("/status/unsubscribe/{token}", subscriptions.unsubscribe, methods=["POST"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]

_TITLES = {400: "That did not work", 404: "Not found", 405: "Not allowed", 413: "Too large"}


async def _error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    text = {404: "There is nothing here, or it is not yours to see.",
            413: "The request is over the size limit, so nothing was stored."}.get(
        status, exc.detail if isinstance(exc, HTTPException) else "Something went wrong.")
    return render(request, "message.html", status, title=_TITLES.get(status, "Error"), text=text)


def create_app(desk: Desk, ingest_executor: Executor | None = None,
               observe: Callable[[str, float], None] | None = None) -> Starlette:
    """The app for one desk; `ingest_executor` is the pool the mail edges ingest in;
    `observe` is told each request's route template and seconds."""
    timing = [Middleware(Timing, observe=observe)] if observe is not None else []
    app = Starlette(
        routes=ROUTES,
        middleware=[*timing, Middleware(Guard, max_body=desk.settings.smtp.max_message_size)],
        exception_handlers={HTTPException: _error},
    )
    app.state.web = Web.create(desk, ingest_executor)
    return app
