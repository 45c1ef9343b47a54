"""Pages leave at once, and people are told only what is true about them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.harness import Received, Relay, request, send, serving
from tests.servers import HttpServer, QuietHandler, free_port
from tests.test_cli import run, write_config
from tests.test_oncall_e2e import Pager
from ticketing.clock import FixedClock
from ticketing.desk import Desk
from ticketing.settings import ConfigError, settings_from_mapping

ALICE = "alice@example.com"
CAROL = "carol@customer.test"
SUNDAY_NIGHT = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)  # Sunday 21:00 in Los Angeles
# The paging worker looks for due pages every 5 seconds; a page that waited for that
# look would come far later than this.
SOON = 2.0


def _desk(desks: Callable[..., Desk], relay: Relay, url: str, **oncall: object) -> Desk:
    return desks(clock=FixedClock(SUNDAY_NIGHT), smtp={"port": free_port()},
                 outbound={"relay": relay.address}, agents={"addresses": [ALICE]},
                 oncall={"webhook": {"url": url, "secret": "s"}, **oncall})


def test_a_new_s0_ticket_pages_without_waiting_for_the_poll(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with Pager() as pager:
        desk = _desk(desks, relay, pager.url)
        with serving(desk) as port:
            # A first mail, answered, so the worker's pass at start is long done.
            send(port, request("Question about exports", "How?", sender=CAROL))
            relay.wait_for(2)
            send(port, request("[S0] Dashboard down for all users", "Nothing loads.",
                               sender=CAROL))
            pages = pager.wait_for(1, timeout=SOON)
            assert len(pages) == 1
            assert pages[0]["summary"] == "[#2] Dashboard down for all users"


@contextmanager
def refusing_hook(code: int) -> Iterator[str]:
    """A webhook that answers every page with `code`; yields its URL."""

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b"no such hook"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with HttpServer(Handler) as server:
        yield f"{server.url}/page"


def _s0_story(desk: Desk, relay: Relay) -> tuple[Received, Received, Received]:
    """An S0 request over SMTP: the confirmation, the agents' notice, the NOT-paged mail."""
    with serving(desk) as port:
        send(port, request("[S0] Dashboard down for all users", "Nothing loads.",
                           sender=f"Carol Customer <{CAROL}>"))
        mails = relay.wait_for(3)
    confirmation = next(m for m in mails if CAROL in m.rcpt_tos)
    notices = [m for m in mails if m.rcpt_tos == (ALICE,)]
    notice = next(m for m in notices if "NOT paged" not in m.message["Subject"])
    alarm = next(m for m in notices if "NOT paged" in m.message["Subject"])
    return confirmation, notice, alarm


def test_a_refused_page_is_not_called_paged_and_the_agents_hear_it_failed(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with refusing_hook(410) as url:
        confirmation, notice, alarm = _s0_story(_desk(desks, relay, url), relay)
    assert "on-call engineer is being paged now" in confirmation.text()
    assert "has been paged" not in confirmation.text()
    assert "is being paged" in notice.text()
    assert "was paged" not in notice.text()
    assert alarm.message["Subject"] == "[#1] URGENT: on-call was NOT paged for #1"
    assert alarm.message["Importance"] == "high"
    assert "HTTP 410: no such hook" in alarm.text()
    assert "Dashboard down for all users" in alarm.text()
    assert "Carol Customer" in alarm.text()


def test_a_page_given_up_tells_the_team_address(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/page"  # nothing listens there
    desk = desks(clock=FixedClock(SUNDAY_NIGHT), smtp={"port": free_port()},
                 outbound={"relay": relay.address},
                 agents={"addresses": [ALICE], "team_address": "team@example.com"},
                 oncall={"webhook": {"url": nobody}, "give_up_after": 0})
    with serving(desk) as port:
        send(port, request("[S0] Checkout fails", "Every order.", sender=CAROL))
        alarms = relay.wait_for(1, where=lambda r: "NOT paged" in r.message["Subject"])
    assert alarms[0].rcpt_tos == ("team@example.com",)
    assert "connection error" in alarms[0].text()


@pytest.mark.parametrize("url", ["hooks.example.com/mailgate", "ftp://hooks.example.com/x",
                                 "https://"])
def test_a_webhook_url_without_a_scheme_is_refused_at_start(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"oncall\.webhook\.url"):
        settings_from_mapping({"oncall": {"webhook": {"url": url}}})
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}",
                          oncall=f'[oncall.webhook]\nurl = "{url}"')
    result = run(config, "serve")
    assert result.returncode == 78
    assert b"oncall.webhook.url" in result.stderr
