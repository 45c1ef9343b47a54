"""The Help Desk running in `serve` for a test: its address, its mail, and signing in."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from typing import Any

from tests.harness import Received, Relay, serving
from ticketing.accounts import add_account, hash_password, set_password
from ticketing.db import transaction
from ticketing.desk import Desk

LINK = re.compile(r"(http://\S+/(?:sign-in/link|password/reset)/[A-Za-z0-9_-]+)")
CODE = re.compile(r"code on the sign-in page: (\d{6})")


@dataclass
class HelpDesk:
    desk: Desk
    relay: Relay
    smtp_port: int

    @property
    def url(self) -> str:
        return self.desk.settings.web.url

    def add_account(self, address: str, name: str = "", password: str = "") -> None:
        """An operator's account, with a password already set when one is given."""
        with transaction(self.desk.engine) as session:
            account = add_account(session, address, name, self.desk.clock.now())
            if password:
                set_password(session, account, hash_password(password))

    def mails_to(self, address: str, subject: str = "", count: int = 1) -> list[Received]:
        """The mails to the address whose subject holds `subject`, once `count` have come."""
        found = self.relay.wait_for(count, where=lambda r: address in r.rcpt_tos
                                    and subject in str(r.message["Subject"]))
        assert len(found) >= count, f"{count} mail(s) to {address} about {subject!r}: {found}"
        return found

    def link_for(self, address: str, subject: str = "Sign in", count: int = 1) -> str:
        text = self.mails_to(address, subject, count)[count - 1].text()
        found = LINK.search(text)
        assert found, text
        return found.group(1)

    def sign_in_by_link(self, page: Any, address: str, next_path: str = "") -> None:
        """Ask for a link on the sign-in page, open it from the mail, press the button."""
        before = len(self.relay.wait_for(0, where=lambda r: address in r.rcpt_tos
                                         and "Sign in" in str(r.message["Subject"])))
        page.goto(self.url + (f"/sign-in?next={next_path}" if next_path else "/sign-in"))
        page.fill("#link-email", address)
        page.click("text=Email me a sign-in link")
        page.wait_for_selector("text=Check your mail")
        page.goto(self.link_for(address, count=before + 1))
        page.click("button:has-text('Sign in')")
        page.wait_for_selector("text=Sign out")


@contextmanager
def helpdesk(desk: Desk, relay: Relay) -> Iterator[HelpDesk]:
    with serving(desk) as port:
        yield HelpDesk(desk, relay, port)


class WebClient:
    """A plain HTTP client with its own cookies (urllib): for what a browser would not do."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  _NoRedirect())

    def get(self, path: str) -> tuple[int, Message, bytes]:
        return self._open(urllib.request.Request(self.base + path))

    def post(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None,
             ) -> tuple[int, Message, bytes]:
        data = urllib.parse.urlencode(fields).encode()
        return self._open(urllib.request.Request(self.base + path, data=data,
                                                 headers=headers or {}, method="POST"))

    def _open(self, request: urllib.request.Request) -> tuple[int, Message, bytes]:
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def token(self, path: str) -> str:
        """The form token a page of ours hands this client (its cookie is kept)."""
        status, _, body = self.get(path)
        found = re.search(rb'name="csrf" value="([0-9a-f]+)"', body)
        assert status == 200 and found, (status, body[:300])
        return found.group(1).decode()

    def sign_in(self, address: str, password: str) -> None:
        status, _, body = self.post("/sign-in", {
            "csrf": self.token("/sign-in"), "email": address, "password": password,
            "next": "/requests"}, {"Origin": self.base})
        assert status == 303, (status, body[:500])

    def cookie(self, name: str) -> str:
        return next((c.value or "" for c in self.jar if c.name == name), "")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
