"""An S0 mail over SMTP pages the on-call engineer at once; replies do not page again."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from tests.harness import Relay, request, send, serving, wait_until_sent
from tests.servers import HttpServer, QuietHandler, free_port
from tests.test_cli import run, serving_process, write_config
from tests.test_threads import envelope_to, reply_to
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Ticket

ALICE = "alice@example.com"
CAROL = "carol@customer.test"
SECRET = "webhook-secret"


class Pager:
    """A real HTTP server on loopback standing in for the team's paging webhook."""

    def __init__(self, failures: int = 0, port: int = 0) -> None:
        self.bodies: list[tuple[bytes, dict[str, str]]] = []
        self.failures = failures
        self.calls = 0
        pager = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                pager.calls += 1
                if pager.calls <= pager.failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                pager.bodies.append((body, dict(self.headers)))
                self.send_response(202)
                self.end_headers()

        self.http = HttpServer(Handler, port)

    @property
    def url(self) -> str:
        return f"{self.http.url}/page"

    def __enter__(self) -> Pager:
        self.http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.stop()

    def wait_for(self, count: int, timeout: float = 15) -> list[dict[str, object]]:
        """The pages received, once there are at least `count`; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.bodies)} of {count} pages within {timeout} s")
            time.sleep(0.02)
        return [json.loads(body) for body, _ in self.bodies]


@pytest.fixture
def pager() -> Iterator[Pager]:
    with Pager() as pager:
        yield pager


def _desk(desks: Callable[..., Desk], relay: Relay, pager: Pager, at: datetime,
          **oncall: object) -> Desk:
    return desks(clock=FixedClock(at), smtp={"port": free_port()},
                 outbound={"relay": relay.address}, agents={"addresses": [ALICE]},
                 oncall={"webhook": {"url": pager.url, "secret": SECRET}, **oncall})


SUNDAY_2AM = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # 02:00 in Los Angeles


def test_s0_at_night_pages_once_and_says_so(desks: Callable[..., Desk], relay: Relay,
                                            pager: Pager) -> None:
    desk = _desk(desks, relay, pager, SUNDAY_2AM)
    with serving(desk) as port:
        send(port, request("[S0] Dashboard down for all users", "Nothing loads.", sender=CAROL))
        pages = pager.wait_for(1)
        mails = relay.wait_for(2)
        relay.settle()
        confirmation = next(m for m in mails if CAROL in m.rcpt_tos)
        notice = next(m for m in mails if m.rcpt_tos == (ALICE,))
        send(port, reply_to(confirmation, CAROL, "Still down. [S0]"), sender=CAROL,
             recipients=envelope_to(confirmation))
        relay.settle()  # and the pages it would make
    assert len(pages) == 1
    with transaction(desk.engine) as session:
        ticket = session.exec(select(Ticket)).one()
    page = pages[0]
    assert page["event_action"] == "trigger"
    assert page["ticket"]["ticket"] == ticket.id  # type: ignore[index]
    assert page["summary"] == f"[#{ticket.id}] Dashboard down for all users"
    assert page["ticket"]["subject"] == "Dashboard down for all users"  # type: ignore[index]
    assert page["ticket"]["requester"] == CAROL  # type: ignore[index]
    assert page["ticket"]["severity"] == "S0"  # type: ignore[index]
    body, headers = pager.bodies[0]
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Mailgate-Signature"] == f"sha256={expected}"
    assert "on-call engineer is being paged" in confirmation.text()
    assert notice.message["Importance"] == "high"
    assert notice.message["X-Priority"] == "1"
    assert "paged" in notice.text()
    assert len(pager.bodies) == 1  # the customer's reply did not page again


def test_s1_pages_outside_hours_only_with_the_policy_on(desks: Callable[..., Desk],
                                                        relay: Relay, pager: Pager) -> None:
    friday_7pm = datetime(2026, 3, 7, 3, 0, tzinfo=UTC)  # Friday 19:00 in Los Angeles
    desk = _desk(desks, relay, pager, friday_7pm, s1_outside_hours=True)
    with serving(desk) as port:
        send(port, request("[S1] Slow API", "p99 is 4 s.", sender=CAROL))
        pages = pager.wait_for(1)
        desk.clock.at = datetime(2026, 3, 10, 17, 0, tzinfo=UTC)  # type: ignore[attr-defined]
        send(port, request("[S1] Slow search", "Tuesday 10:00.", sender="dan@customer.test"))
        relay.wait_for(1, where=lambda r: "dan@customer.test" in r.rcpt_tos)
        confirmations = [r for r in relay.settle() if "dan@customer.test" in r.rcpt_tos]
    assert len(confirmations) == 1
    assert len(pages) == 1 and len(pager.bodies) == 1
    assert "Slow API" in str(pages[0])
    assert "paged" not in confirmations[0].text()


def test_raised_to_s0_later_pages_then(desks: Callable[..., Desk], relay: Relay,
                                       pager: Pager) -> None:
    desk = _desk(desks, relay, pager, SUNDAY_2AM)
    with serving(desk) as port:
        send(port, request("[S2] Reports slow", "A bit slow.", sender=CAROL))
        notice = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,))[0]
        relay.settle()
        assert pager.bodies == []
        send(port, reply_to(notice, ALICE, "#severity S0\nThis is bigger than it looks."),
             sender=ALICE, recipients=envelope_to(notice))
        pages = pager.wait_for(1)
        send(port, reply_to(notice, ALICE, "Still on it."), sender=ALICE,
             recipients=envelope_to(notice))
        relay.settle()
    assert len(pages) == 1 and len(pager.bodies) == 1
    with transaction(desk.engine) as session:
        assert session.exec(select(Ticket)).one().severity == 0


class SilentHook:
    """A hook that takes the connection and the request and never answers, so a serve
    killed meanwhile dies while its page worker holds the page."""

    def __init__(self, port: int) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        hook = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                hook.asked.set()
                hook.release.wait(60)  # and closes the connection without an answer

        self.http = HttpServer(Handler, port)

    def __enter__(self) -> SilentHook:
        self.http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.http.stop()

    def wait_for_request(self, timeout: float = 20) -> None:
        if not self.asked.wait(timeout):
            raise AssertionError(f"no page asked for within {timeout} s")


def test_killed_before_the_page_is_delivered_it_goes_out_once_after_restart(
    tmp_path: Path, database_url: str, engine: Engine, relay: Relay
) -> None:
    port = free_port()
    pager_port = free_port()
    config = write_config(
        tmp_path, database_url, smtp=f"port = {port}",
        # The killed serve holds the page and may hold the confirmation: the second takes
        # each over once its claim has run out, a lease after the last renewal.
        outbound=f'relay = "{relay.address}"\nlease = 2',
        oncall=f"retry_base = 0.5\nlease = 2\n"
               f"[oncall.webhook]\nurl = \"http://127.0.0.1:{pager_port}/p\"",
    )
    assert run(config, "init").returncode == 0
    # Killed while the hook call is under way: the page is claimed and no attempt recorded.
    with SilentHook(pager_port) as hook, serving_process(config) as first:
        send(port, request("[S0] Everything is down", "Help."))
        hook.wait_for_request()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    listed = json.loads(run(config, "pages", "list", "--json").stdout)
    assert [(p["status"], p["attempts"]) for p in listed] == [("pending", 0)]
    with Pager(port=pager_port) as pager, serving_process(config) as second:
        pager.wait_for(1, timeout=20)
        wait_until_sent(engine)  # the page is recorded as delivered: none is due again
        second.send_signal(signal.SIGTERM)
        second.wait(20)
    assert len(pager.bodies) == 1
    listed = json.loads(run(config, "pages", "list", "--json").stdout)
    assert [p["status"] for p in listed] == ["delivered"]
    assert listed[0]["attempts"] >= 1
