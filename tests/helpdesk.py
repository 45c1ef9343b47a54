"""The Help Desk running in `serve` for a test: its address, its mail, and signing in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.harness import Received, Relay, serving
from ticketing.accounts import add_account
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

    def add_account(self, address: str, name: str = "") -> None:
        with transaction(self.desk.engine) as session:
            add_account(session, address, name, self.desk.clock.now())

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
