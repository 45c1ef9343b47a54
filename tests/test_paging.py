"""Pages reach real hooks on loopback: exact bodies, signatures, retries, give-up, one delivery."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from mailgate.paging import (
    PageBusy,
    list_pages,
    retry_after_seconds,
    retry_page,
    run_paging,
    send_due_pages,
)
from tests.conftest import make_settings
from tests.harness import run_coroutine
from tests.servers import HttpServer, QuietHandler, free_port
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.models import Page, PageAttempt, Ticket
from ticketing.oncall import escalate, resolve
from ticketing.settings import ConfigError, Settings, settings_from_mapping

ROUTING_KEY = "0123456789abcdef0123456789abcdef"
SECRET = "webhook-secret"
SUBJECT = "Dashboard down for all users"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HookServer:
    """A loopback HTTP server standing in for the webhook receiver and PagerDuty."""

    replies: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Request] = field(default_factory=list)
    on_request: Callable[[], None] | None = None
    arrived: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        owner = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.received.append(Request(self.path, dict(self.headers.items()), body))
                if owner.on_request is not None:
                    callback, owner.on_request = owner.on_request, None
                    callback()
                status, headers = owner.replies.pop(0) if owner.replies else (202, {})
                answer = json.dumps({"status": "success", "message": "Event processed"})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer.encode())
                owner.arrived.set()

        self.http = HttpServer(Handler)
        self.http.start()

    @property
    def url(self) -> str:
        return self.http.url

    def stop(self) -> None:
        self.http.stop()


@pytest.fixture
def server() -> Iterator[HookServer]:
    hook_server = HookServer()
    hook_server.start()
    yield hook_server
    hook_server.stop()


def paging_settings(
    tmp_path: Path,
    database_url: str,
    server: HookServer,
    kinds: tuple[str, ...] = ("webhook", "pagerduty"),
    **oncall: object,
) -> Settings:
    """Settings with the chosen HTTP hooks pointed at the loopback server."""
    hooks: dict[str, object] = {
        "webhook": {"url": f"{server.url}/hook", "secret": SECRET},
        "pagerduty": {"routing_key": ROUTING_KEY, "url": f"{server.url}/v2/enqueue"},
    }
    chosen = {kind: hooks[kind] for kind in kinds}
    return make_settings(tmp_path, database_url, oncall=chosen | oncall)


def open_ticket(engine: Engine, now: datetime, severity: int = 0) -> Ticket:
    with transaction(engine) as session:
        ticket = Ticket(
            subject=SUBJECT,
            severity=severity,
            requester="ann@customer.example",
            requester_name="Ann Example",
            created_at=now,
            updated_at=now,
            status_changed_at=now,
        )
        session.add(ticket)
        session.flush()
    return ticket


def page_for(engine: Engine, ticket: Ticket, settings: Settings, now: datetime) -> list[Page]:
    with transaction(engine) as session:
        return escalate(session, ticket, settings, now, "new S0 ticket")


def pages(engine: Engine) -> list[Page]:
    with transaction(engine) as session:
        return list(session.exec(select(Page).order_by(Page.id)).all())  # type: ignore[arg-type]


def attempts(engine: Engine, page_id: int | None) -> list[PageAttempt]:
    with transaction(engine) as session:
        query = select(PageAttempt).where(PageAttempt.page_id == page_id)
        return list(session.exec(query.order_by(PageAttempt.id)).all())  # type: ignore[arg-type]


def details(ticket: Ticket) -> dict[str, object]:
    return {
        "ticket": ticket.id,
        "reference": f"[#{ticket.id}]",
        "subject": SUBJECT,
        "requester": "ann@customer.example",
        "requester_name": "Ann Example",
        "severity": "S0",
        "status": "open",
        "support_address": "support@example.com",
        "status_page": "https://status.example.com",
    }


def test_the_webhook_gets_the_signed_json(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("webhook",))
    ticket = open_ticket(engine, clock.now())
    [page] = page_for(engine, ticket, settings, clock.now())

    assert send_due_pages(engine, settings, clock, "w1") == 1

    [request] = server.received
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json == {
        "event_action": "trigger",
        "dedup_key": f"mailgate/example.com/ticket-{ticket.id}/1",
        "summary": f"[#{ticket.id}] {SUBJECT}",
        "severity": "critical",
        "reason": "new S0 ticket",
        "at": "2026-03-03T18:00:00+00:00",
        "ticket": details(ticket),
    }
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Mailgate-Signature"] == f"sha256={expected}"
    [stored] = pages(engine)
    assert (stored.status, stored.attempts, stored.delivered_at) == ("delivered", 1, clock.now())
    assert [(a.ok, a.detail) for a in attempts(engine, page.id)] == [(True, "HTTP 202")]


def test_pagerduty_gets_an_events_v2_trigger(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("pagerduty",))
    ticket = open_ticket(engine, clock.now())
    page_for(engine, ticket, settings, clock.now())

    send_due_pages(engine, settings, clock, "w1")

    [request] = server.received
    assert request.path == "/v2/enqueue"
    assert "X-Mailgate-Signature" not in request.headers
    assert request.json == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": f"mailgate/example.com/ticket-{ticket.id}/1",
        "client": "Example Support",
        "payload": {
            "summary": f"[#{ticket.id}] {SUBJECT}",
            "source": "support@example.com",
            "severity": "critical",
            "timestamp": "2026-03-03T18:00:00+00:00",
            "custom_details": details(ticket) | {"reason": "new S0 ticket"},
        },
        "links": [{"href": "https://status.example.com", "text": "Status page"}],
    }


def test_every_configured_hook_is_paged_once(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    out = tmp_path / "page.json"
    script = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_bytes(sys.stdin.buffer.read())"
    command = {"argv": [sys.executable, "-c", script, str(out)], "timeout": 20}
    settings = paging_settings(tmp_path, database_url, server, command=command)
    ticket = open_ticket(engine, clock.now())
    added = page_for(engine, ticket, settings, clock.now())
    assert [p.hook for p in added] == ["webhook", "pagerduty", "command"]

    assert send_due_pages(engine, settings, clock, "w1") == 3

    assert sorted(r.path for r in server.received) == ["/hook", "/v2/enqueue"]
    webhook_body = next(r.body for r in server.received if r.path == "/hook")
    assert out.read_bytes() == webhook_body  # the command reads what the webhook gets
    assert json.loads(out.read_bytes())["ticket"]["ticket"] == ticket.id
    assert [(p.status, p.attempts) for p in pages(engine)] == [("delivered", 1)] * 3
    [command_page] = [p for p in pages(engine) if p.hook == "command"]
    assert [a.detail for a in attempts(engine, command_page.id)] == ["exit 0"]


def test_a_failing_command_is_retried(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock
) -> None:
    script = "import sys; sys.stdin.read(); sys.stderr.write('pager gateway down'); sys.exit(3)"
    settings = make_settings(
        tmp_path, database_url, oncall={"command": {"argv": [sys.executable, "-c", script]}}
    )
    ticket = open_ticket(engine, clock.now())
    [page] = page_for(engine, ticket, settings, clock.now())

    send_due_pages(engine, settings, clock, "w1")

    [stored] = pages(engine)
    assert stored.status == "pending"
    assert stored.next_attempt_at > clock.now()
    assert [a.detail for a in attempts(engine, page.id)] == ["exit 3: pager gateway down"]


def test_503_twice_then_accepted_is_one_page_and_three_attempts(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("pagerduty",))
    server.replies = [(503, {}), (503, {})]
    ticket = open_ticket(engine, clock.now())
    [page] = page_for(engine, ticket, settings, clock.now())
    started = clock.now()

    assert send_due_pages(engine, settings, clock, "w1") == 1
    [stored] = pages(engine)
    assert stored.status == "pending"
    # The first retry waits the base backoff plus at most a quarter of jitter.
    assert timedelta(seconds=15) <= stored.next_attempt_at - started <= timedelta(seconds=18.75)
    assert send_due_pages(engine, settings, clock, "w1") == 0  # not due yet
    clock.at = stored.next_attempt_at

    assert send_due_pages(engine, settings, clock, "w1") == 1
    [stored] = pages(engine)
    assert timedelta(seconds=30) <= stored.next_attempt_at - clock.now() <= timedelta(seconds=37.5)
    clock.at = stored.next_attempt_at

    assert send_due_pages(engine, settings, clock, "w1") == 1
    assert send_due_pages(engine, settings, clock, "w1") == 0

    assert len(server.received) == 3
    assert len({r.body for r in server.received}) == 1  # the same event each time
    [stored] = pages(engine)
    assert (stored.status, stored.attempts, stored.delivered_at) == ("delivered", 3, clock.now())
    assert [(a.ok, a.detail.split(":")[0]) for a in attempts(engine, page.id)] == [
        (False, "HTTP 503"), (False, "HTTP 503"), (True, "HTTP 202"),
    ]
    with transaction(engine) as session:
        [listed] = list_pages(session)
    assert (listed["status"], listed["attempts"]) == ("delivered", 3)
    assert [a["ok"] for a in listed["history"]] == [False, False, True]


def test_429_waits_as_long_as_retry_after_says(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("webhook",))
    server.replies = [(429, {"Retry-After": "120"})]
    page_for(engine, open_ticket(engine, clock.now()), settings, clock.now())

    send_due_pages(engine, settings, clock, "w1")

    [stored] = pages(engine)
    assert stored.status == "pending"
    assert stored.next_attempt_at == clock.now() + timedelta(seconds=120)
    assert stored.last_error.startswith("HTTP 429")


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    now = datetime(2026, 3, 3, 18, 0, tzinfo=UTC)
    assert retry_after_seconds("30", now) == 30
    assert retry_after_seconds("Tue, 03 Mar 2026 18:01:00 GMT", now) == 60
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("", now) is None


def test_a_400_gives_up_at_once_and_says_so(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(
        tmp_path, database_url,
        oncall={"pagerduty": {"routing_key": "short", "url": f"{server.url}/v2/enqueue"}},
    )
    server.replies = [(400, {})]
    ticket = open_ticket(engine, clock.now())
    [page] = page_for(engine, ticket, settings, clock.now())

    with caplog.at_level(logging.ERROR, logger="mailgate.paging"):
        send_due_pages(engine, settings, clock, "w1")
    clock.advance(hours=2)
    assert send_due_pages(engine, settings, clock, "w1") == 0

    [stored] = pages(engine)
    assert stored.status == "gave_up"
    assert len(attempts(engine, page.id)) == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith(f"[#{ticket.id}] ON-CALL NOT PAGED")
    assert "HTTP 400" in record.getMessage()


def test_gives_up_after_give_up_after(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on this port: every attempt is a connection error.
    settings = make_settings(
        tmp_path, database_url,
        oncall={"give_up_after": 300, "webhook": {"url": f"http://127.0.0.1:{free_port()}/"}},
    )
    ticket = open_ticket(engine, clock.now())
    [page] = page_for(engine, ticket, settings, clock.now())
    give_up_at = clock.now() + timedelta(seconds=300)

    with caplog.at_level(logging.WARNING, logger="mailgate.paging"):
        for _ in range(20):
            send_due_pages(engine, settings, clock, "w1")
            [stored] = pages(engine)
            if stored.status != "pending":
                break
            assert stored.next_attempt_at <= give_up_at
            clock.at = stored.next_attempt_at

    assert stored.status == "gave_up"
    tried = attempts(engine, page.id)
    assert len(tried) > 3
    assert not any(a.ok for a in tried)
    assert tried[0].detail.startswith("connection error")
    assert tried[-1].at == give_up_at  # one last try at the give-up time, then no more
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"[#{ticket.id}] ON-CALL NOT PAGED")


def test_an_operator_retry_gives_a_given_up_page_another_go(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("webhook",))
    server.replies = [(404, {})]
    [page] = page_for(engine, open_ticket(engine, clock.now()), settings, clock.now())
    send_due_pages(engine, settings, clock, "w1")
    assert pages(engine)[0].status == "gave_up"
    clock.advance(hours=3)  # the URL is fixed, long after the give-up time

    assert page.id is not None
    # An operator's clock in another zone: the same instant, stored as every time is.
    assert retry_page(engine, page.id, clock.now().astimezone(ZoneInfo("America/New_York"))) == 1
    assert pages(engine)[0].give_up_at == clock.now()
    assert send_due_pages(engine, settings, clock, "w1") == 1

    [stored] = pages(engine)
    assert (stored.status, stored.attempts) == ("delivered", 2)
    assert retry_page(engine, page.id, clock.now()) == 0  # delivered: nothing to retry


def test_an_operator_retry_leaves_a_page_a_worker_is_delivering(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("webhook",))
    [page] = page_for(engine, open_ticket(engine, clock.now()), settings, clock.now())
    assert page.id is not None
    retried: list[int] = []
    second: list[int] = []

    def meanwhile() -> None:
        # While w1 waits for the hook's answer, the operator retries the page and a
        # second worker makes a pass: the on-call engineer must not be paged twice.
        try:
            retried.append(retry_page(engine, page.id, clock.now()))
        except PageBusy as exc:
            retried.append(exc.holder)
        second.append(send_due_pages(engine, settings, clock, "w2"))

    server.on_request = meanwhile
    assert send_due_pages(engine, settings, clock, "w1") == 1
    assert (retried, second) == (["w1"], [0])
    assert len(server.received) == 1
    [stored] = pages(engine)
    assert (stored.status, stored.attempts, stored.claimed_by) == ("delivered", 1, "w1")


def test_a_second_worker_does_not_take_a_page_being_delivered(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server)
    page_for(engine, open_ticket(engine, clock.now()), settings, clock.now())
    second: list[int] = []
    # While the first worker waits for the hook's answer, a second worker makes a full pass.
    server.on_request = lambda: second.append(send_due_pages(engine, settings, clock, "w2"))

    first = send_due_pages(engine, settings, clock, "w1", limit=1)

    assert (first, second) == (1, [1])  # each took one of the two pages
    assert sorted(r.path for r in server.received) == ["/hook", "/v2/enqueue"]
    assert [(p.status, p.attempts) for p in pages(engine)] == [("delivered", 1)] * 2


def test_workers_racing_on_one_database_deliver_each_page_once(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("webhook",))
    for _ in range(12):
        page_for(engine, open_ticket(engine, clock.now()), settings, clock.now())
    start = threading.Barrier(3)
    tried: list[int] = []

    def work(name: str) -> None:
        start.wait()
        tried.append(send_due_pages(engine, settings, clock, name))

    workers = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert sum(tried) == 12
    keys = [r.json["dedup_key"] for r in server.received]
    assert len(keys) == len(set(keys)) == 12
    assert [(p.status, p.attempts) for p in pages(engine)] == [("delivered", 1)] * 12


def test_a_claim_left_by_a_dead_worker_runs_out(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("webhook",))
    lease = settings.oncall.lease
    [page] = page_for(engine, open_ticket(engine, clock.now()), settings, clock.now())
    with transaction(engine) as session:
        # What a worker killed between its claim and the hook's answer leaves behind.
        stored = session.get_one(Page, page.id)
        stored.claimed_by, stored.claimed_until = "dead", clock.now() + timedelta(seconds=lease)

    assert send_due_pages(engine, settings, clock, "w1") == 0
    clock.advance(seconds=lease)
    assert send_due_pages(engine, settings, clock, "w1") == 1
    assert send_due_pages(engine, settings, clock, "w1") == 0
    assert len(server.received) == 1
    assert pages(engine)[0].status == "delivered"


def test_a_slow_hook_keeps_its_page_past_the_lease(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("webhook",), lease=2)
    [page] = page_for(engine, open_ticket(engine, clock.now()), settings, clock.now())
    second: list[int] = []

    def meanwhile() -> None:
        # The hook is slow: the claim's first lease has run out long before it answers.
        clock.advance(seconds=10)
        deadline = time.monotonic() + 20
        while (until := pages(engine)[0].claimed_until) is None or until <= clock.now():
            assert time.monotonic() < deadline, "the lease was not renewed within 20 s"
            time.sleep(0.02)
        second.append(send_due_pages(engine, settings, clock, "w2"))

    server.on_request = meanwhile
    assert send_due_pages(engine, settings, clock, "w1") == 1

    assert second == [0]  # renewed while the hook was called: nobody else took the page
    assert len(server.received) == 1
    stored = pages(engine)[0]
    assert (stored.id, stored.status, stored.attempts) == (page.id, "delivered", 1)
    assert stored.claimed_until is None


@pytest.mark.parametrize("lease", [0, 1])
def test_a_page_lease_under_two_seconds_is_refused(lease: int) -> None:
    with pytest.raises(ConfigError, match=r"oncall\.lease: at least 2 seconds"):
        settings_from_mapping({"oncall": {"lease": lease}})
    assert settings_from_mapping({"oncall": {"lease": 2}}).oncall.lease == 2
    assert settings_from_mapping({}).oncall.lease == 30


def test_escalating_twice_adds_no_second_page(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server)
    ticket = open_ticket(engine, clock.now())
    assert len(page_for(engine, ticket, settings, clock.now())) == 2
    send_due_pages(engine, settings, clock, "w1")
    clock.advance(minutes=10)

    # A reply on the same incident, a second [S0]: the escalation is still open.
    assert page_for(engine, ticket, settings, clock.now()) == []
    with transaction(engine) as session:
        assert escalate(session, ticket, settings, clock.now(), "again") == []
        assert escalate(session, ticket, settings, clock.now(), "and again") == []
    assert send_due_pages(engine, settings, clock, "w1") == 0
    assert len(pages(engine)) == 2
    assert len(server.received) == 2


def test_without_hooks_nothing_is_written(
    engine: Engine, settings: Settings, clock: FixedClock
) -> None:
    ticket = open_ticket(engine, clock.now())
    assert page_for(engine, ticket, settings, clock.now()) == []
    with transaction(engine) as session:
        assert resolve(session, ticket, settings, clock.now()) == []
    assert pages(engine) == []


def test_solving_a_paged_ticket_resolves_it_in_pagerduty(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server)
    ticket = open_ticket(engine, clock.now())
    page_for(engine, ticket, settings, clock.now())
    send_due_pages(engine, settings, clock, "w1")
    clock.advance(hours=1)

    with transaction(engine) as session:
        ticket.status = "solved"
        session.add(ticket)
        added = resolve(session, ticket, settings, clock.now())
        assert resolve(session, ticket, settings, clock.now()) == []  # closed already
    assert [(p.hook, p.action, p.status) for p in added] == [
        ("pagerduty", "resolve", "pending"), ("webhook", "resolve", "skipped"),
    ]
    assert send_due_pages(engine, settings, clock, "w1") == 1

    resolved = server.received[-1]
    assert resolved.path == "/v2/enqueue"
    assert resolved.json == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": f"mailgate/example.com/ticket-{ticket.id}/1",
    }
    assert len(server.received) == 3


def test_a_reopened_ticket_pages_again_under_a_new_key(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("pagerduty",))
    ticket = open_ticket(engine, clock.now())
    page_for(engine, ticket, settings, clock.now())
    with transaction(engine) as session:
        resolve(session, ticket, settings, clock.now())
    clock.advance(days=1)

    [again] = page_for(engine, ticket, settings, clock.now())

    assert again.dedup_key == f"mailgate/example.com/ticket-{ticket.id}/2"
    assert send_due_pages(engine, settings, clock, "w1") == 3
    assert [(r.json["event_action"], r.json["dedup_key"][-2:]) for r in server.received] == [
        ("trigger", "/1"), ("resolve", "/1"), ("trigger", "/2"),
    ]


def test_a_resolve_waits_for_its_trigger(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("pagerduty",))
    server.replies = [(503, {})]
    ticket = open_ticket(engine, clock.now())
    page_for(engine, ticket, settings, clock.now())
    send_due_pages(engine, settings, clock, "w1")  # the trigger fails, retried later
    with transaction(engine) as session:
        resolve(session, ticket, settings, clock.now())

    assert send_due_pages(engine, settings, clock, "w1") == 0  # the resolve is held back
    clock.at = pages(engine)[0].next_attempt_at
    assert send_due_pages(engine, settings, clock, "w1") == 2

    assert [r.json["event_action"] for r in server.received] == ["trigger", "trigger", "resolve"]


def test_pages_list_shows_attempts_and_hides_the_routing_key(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server)
    ticket = open_ticket(engine, clock.now())
    page_for(engine, ticket, settings, clock.now())
    send_due_pages(engine, settings, clock, "w1")

    with transaction(engine) as session:
        listed = list_pages(session, ticket_id=ticket.id)
    text = json.dumps(listed)

    assert ROUTING_KEY not in text
    assert [(p["hook"], p["action"], p["status"]) for p in listed] == [
        ("webhook", "trigger", "delivered"), ("pagerduty", "trigger", "delivered"),
    ]
    assert listed[1]["payload"]["routing_key"] == "…cdef"
    assert listed[0]["attempts"] == 1
    assert listed[0]["history"] == [
        {"at": "2026-03-03T18:00:00+00:00", "ok": True, "detail": "HTTP 202"}
    ]
    assert listed[0]["ticket"] == ticket.id


def test_the_paging_worker_delivers_and_wakes_on_demand(
    engine: Engine, database_url: str, tmp_path: Path, clock: FixedClock, server: HookServer
) -> None:
    settings = paging_settings(tmp_path, database_url, server, ("webhook",))
    page_for(engine, open_ticket(engine, clock.now()), settings, clock.now())

    async def scenario() -> None:
        stop, wake = asyncio.Event(), asyncio.Event()
        worker = asyncio.create_task(
            run_paging(engine, settings, clock, stop, wake, worker="w1", interval=300)
        )
        assert await asyncio.to_thread(server.arrived.wait, 10)
        server.arrived.clear()
        # A second page long before the interval is up: the wake starts a pass now.
        page_for(engine, open_ticket(engine, clock.now()), settings, clock.now())
        wake.set()
        assert await asyncio.to_thread(server.arrived.wait, 10)
        stop.set()
        await asyncio.wait_for(worker, 10)

    run_coroutine(scenario())

    assert len(server.received) == 2
