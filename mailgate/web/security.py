"""What every response and every POST goes through: headers, a body cap, CSRF checks."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "mg_csrf"
SESSION_COOKIE = "mg_session"

# No script at all, styles from our own file only, and nobody may frame us.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class TooLarge(Exception):
    """The request body went over the cap while it streamed in."""


class Guard:
    """Security headers on every response; request bodies capped as they stream (413).

    A declared Content-Length over the cap is refused before a byte is read; a body
    that grows past it (chunked, or lying) is cut off there. What was sent past the
    cap is read and thrown away, so the client sees the 413 rather than a reset.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in _HEADERS if h[0] not in names)]
            await send(message)

        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            await _drain(receive, 4 * self.max_body)
            await _too_large(send_with_headers)
            return
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise TooLarge
            return message

        try:
            await self.app(scope, capped_receive, send_with_headers)
        except TooLarge:
            if started:
                raise
            await _drain(receive, 4 * self.max_body)
            await _too_large(send_with_headers)


async def _drain(receive: Receive, limit: int) -> None:
    read = 0
    while read <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _too_large(send: Send) -> None:
    body = b"Too large: the request is over the size limit, so nothing was stored.\n"
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def csrf_cookie(request: Request) -> str:
    """This browser's anti-forgery value: the cookie it has, or a new one to set."""
    value = request.cookies.get(CSRF_COOKIE, "")
    if 20 <= len(value) <= 100:
        return value
    made: str = getattr(request.state, "new_csrf", "") or secrets.token_urlsafe(24)
    request.state.new_csrf = made
    return made


def csrf_token(request: Request, secret: str) -> str:
    """The hidden form field: the cookie's value signed with the server secret."""
    return hmac.new(secret.encode(), f"csrf:{csrf_cookie(request)}".encode(),
                    hashlib.sha256).hexdigest()


def same_origin(request: Request, base_url: str) -> bool:
    """A browser says where a POST comes from (Origin, Sec-Fetch-Site): it must be us."""
    origin = request.headers.get("origin")
    if origin is not None:
        ours = urlsplit(base_url)
        theirs = urlsplit(origin)
        if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):
            return False
    site = request.headers.get("sec-fetch-site")
    return site is None or site == "same-origin"


def form_is_ours(request: Request, form: FormData, secret: str, base_url: str) -> bool:
    """A POST passes when it comes from our own page in this browser: the right origin and
    the form token made for this browser's cookie (a plain HTTP client has neither)."""
    sent = form.get("csrf")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not isinstance(sent, str) or not cookie:
        return False
    expected = hmac.new(secret.encode(), f"csrf:{cookie}".encode(), hashlib.sha256).hexdigest()
    return same_origin(request, base_url) and hmac.compare_digest(sent, expected)


def sent_from_our_page(request: Request, base_url: str) -> bool:
    """A POST that a browser says came from a page of ours (Origin, or Sec-Fetch-Site
    when it sends no Origin). For a form on a page every reader shares from a cache,
    which can carry no token made for one browser: a page on another site cannot make a
    browser claim our origin, and a request without either header is not taken."""
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site")
    if origin is None and site is None:
        return False
    return same_origin(request, base_url) and (origin is not None or site == "same-origin")
