"""The on-call hook kinds: a signed JSON webhook, PagerDuty Events API v2, a command."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import IO, Protocol

from ticketing.settings import OncallSettings

HTTP_TIMEOUT = 10.0
DETAIL_LIMIT = 300


@dataclass(frozen=True)
class HookAnswer:
    """What one call to a hook gave: accepted, worth another try, or refused for good."""

    ok: bool
    detail: str
    retry: bool = False
    retry_after: str = ""  # the Retry-After header as sent: seconds or an HTTP date


class Hook(Protocol):
    """A hook kind: hands one page body to the on-call service."""

    def send(self, body: bytes) -> HookAnswer: ...


def signature(secret: str, body: bytes) -> str:
    """The X-Mailgate-Signature value: the body's HMAC-SHA256 under the hook secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A POST that is redirected is a wrong URL in the config: report it, do not follow it.
    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
        headers: Message, newurl: str,
    ) -> urllib.request.Request | None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _excerpt(data: bytes) -> str:
    return data[:DETAIL_LIMIT].decode("utf-8", "replace").strip()


def post_json(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> HookAnswer:
    """POST a JSON body; 2xx is accepted, 429 and 5xx are temporary, anything else is final."""
    if not url.lower().startswith(("http://", "https://")):
        return HookAnswer(False, f"not an http(s) URL: {url!r}")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "mailgate", **headers},
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status = int(response.status)
            response.read(DETAIL_LIMIT)
    except urllib.error.HTTPError as exc:
        try:
            text = _excerpt(exc.read())
        except (OSError, http.client.HTTPException):
            text = ""
        finally:
            exc.close()
        detail = f"HTTP {exc.code}" + (f": {text}" if text else "")
        if exc.code == 429 or exc.code >= 500:
            retry_after = exc.headers.get("Retry-After", "")
            return HookAnswer(False, detail, retry=True, retry_after=retry_after)
        return HookAnswer(False, detail)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return HookAnswer(False, f"connection error: {reason}", retry=True)
    if 200 <= status < 300:
        return HookAnswer(True, f"HTTP {status}")
    return HookAnswer(False, f"HTTP {status}")


@dataclass(frozen=True)
class WebhookSender:
    url: str
    secret: str
    timeout: float = HTTP_TIMEOUT

    def send(self, body: bytes) -> HookAnswer:
        headers = {"X-Mailgate-Signature": signature(self.secret, body)}
        return post_json(self.url, body, headers, self.timeout)


@dataclass(frozen=True)
class PagerDutySender:
    """The Events API v2: the routing key travels in the body, so no header is needed."""

    url: str
    timeout: float = HTTP_TIMEOUT

    def send(self, body: bytes) -> HookAnswer:
        return post_json(self.url, body, {}, self.timeout)


@dataclass(frozen=True)
class CommandSender:
    """A program given the JSON on stdin; exit status 0 means the page was taken."""

    argv: tuple[str, ...]
    timeout: float

    def send(self, body: bytes) -> HookAnswer:
        try:
            done = subprocess.run(
                self.argv, input=body, capture_output=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return HookAnswer(False, f"{self.argv[0]} ran past {self.timeout:g}s", retry=True)
        except OSError as exc:
            return HookAnswer(False, f"could not run {self.argv[0]}: {exc}", retry=True)
        if done.returncode == 0:
            return HookAnswer(True, "exit 0")
        text = _excerpt(done.stderr[-DETAIL_LIMIT:])
        return HookAnswer(False, f"exit {done.returncode}" + (f": {text}" if text else ""), retry=True)


def hooks_for(oncall: OncallSettings) -> dict[str, Hook]:
    """The configured hooks by the name their page rows carry."""
    hooks: dict[str, Hook] = {}
    if oncall.webhook is not None:
        hooks["webhook"] = WebhookSender(oncall.webhook.url, oncall.webhook.secret)
    if oncall.pagerduty is not None:
        hooks["pagerduty"] = PagerDutySender(oncall.pagerduty.url)
    if oncall.command is not None:
        hooks["command"] = CommandSender(oncall.command.argv, oncall.command.timeout)
    return hooks
