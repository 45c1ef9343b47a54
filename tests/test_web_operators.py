"""The operators' pages: outbox, pages and accounts in a real browser, and everyone else
kept out (customers, agents who are not operators, visitors, forged posts)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from mailgate.outbound import RelayTransport, send_due
from tests.harness import Relay, request, send, serving, wait_until_sent
from tests.helpdesk import WebClient
from tests.servers import free_port
from tests.test_cli import run, write_config
from tests.test_oncall_e2e import Pager
from tests.test_regressions_outbound import Answering
from ticketing.accounts import add_account, find_account, hash_password, set_password
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.inbound import Inbound
from ticketing.ingest import ingest, quarantine
from ticketing.models import Message, Outbox, Page, Quarantine, TicketEvent
from ticketing.settings import load_settings

OLIVE = "olive@example.com"  # the operator
ALICE = "alice@example.com"  # an agent, not an operator
CAROL = "carol@customer.test"
PASSWORD = "correct horse battery"
NO_SUCH_USER = "550 5.1.1 <carol@customer.test>: no such user here"


class SwitchingRelay(Answering):
    """A relay that refuses Carol's mail until told to take it, and keeps what it takes."""

    def __init__(self) -> None:
        super().__init__({CAROL: NO_SUCH_USER})
        self.kept: list[tuple[tuple[str, ...], bytes]] = []
        self.changed = threading.Condition()

    def accept_everything(self) -> None:
        self.answers.clear()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.changed:
            self.kept.append((tuple(envelope.rcpt_tos), envelope.original_content))
            self.changed.notify_all()
        return await super().handle_DATA(server, session, envelope)

    def wait_for(self, address: str, timeout: float = 15.0) -> bytes:
        """The first mail taken for the address; fails the test if none comes in time."""
        with self.changed:
            self.changed.wait_for(lambda: any(address in to for to, _ in self.kept), timeout)
            found = [raw for to, raw in self.kept if address in to]
        assert found, f"no mail for {address} reached the relay within {timeout} s"
        return found[0]


@contextmanager
def switching_relay() -> Iterator[SwitchingRelay]:
    with SwitchingRelay() as relay:
        yield relay  # type: ignore[misc]


def _desk(desks: Callable[..., Desk], relay_address: str, **sections: dict[str, object]) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay_address},
                 agents={"addresses": [ALICE], "operators": [OLIVE]}, **sections)


def _account(desk: Desk, address: str, name: str = "") -> None:
    with transaction(desk.engine) as session:
        account = add_account(session, address, name, desk.clock.now())
        set_password(session, account, hash_password(PASSWORD))


def _sign_in(url: str, page: Any, address: str) -> None:
    page.goto(url + "/sign-in")
    page.fill("#email", address)
    page.fill("#password", PASSWORD)
    page.click("form[action='/sign-in'] button")
    page.wait_for_selector("text=Sign out")


def _outbox(desk: Desk) -> list[Outbox]:
    with transaction(desk.engine) as session:
        return list(session.exec(select(Outbox).order_by(col(Outbox.id))).all())


def _to_carol(desk: Desk) -> Outbox:
    return next(o for o in _outbox(desk) if CAROL in o.recipients)


def test_an_operator_retries_failed_mail_clears_a_bounce_and_disables_an_account(
    desks: Callable[..., Desk], person: Callable[[], Any]
) -> None:
    with switching_relay() as relay:
        desk = _desk(desks, relay.address)
        _account(desk, OLIVE, "Olive Operator")
        _account(desk, CAROL, "Carol Customer")
        with serving(desk) as port:
            url = desk.settings.web.url
            send(port, request("Exports are slow", "Exports take ten minutes."))
            wait_until_sent(desk.engine)
            assert _to_carol(desk).status == "failed"  # the relay said: no such user
            carol = person()
            _sign_in(url, carol, CAROL)
            assert "Outbox" not in carol.inner_text("header")

            olive = person()
            _sign_in(url, olive, OLIVE)
            olive.click("header >> text=Outbox")
            failed = olive.inner_text("table.failed")
            assert CAROL in failed and "5.1.1" in failed and "no such user" in failed
            # The address was marked bouncing: the operator clears it.
            olive.click("header >> text=Accounts")
            row = olive.locator("tr", has_text=CAROL)
            assert "no such user" in row.inner_text()
            row.locator("button:has-text('Clear bouncing')").click()
            assert f"{CAROL} is mailed again" in olive.inner_text(".done")
            assert olive.locator("tr", has_text=CAROL).locator(".bouncing").inner_text() == "—"
            # The mailbox exists again: the relay takes it on the retry.
            relay.accept_everything()
            olive.click("header >> text=Outbox")
            olive.locator("table.failed button:has-text('Retry')").click()
            assert "1 mail(s) due now" in olive.inner_text(".done")
            arrived = relay.wait_for(CAROL)
            assert b"Exports are slow" in arrived
            wait_until_sent(desk.engine)
            olive.click("header >> text=Outbox")
            assert "No mail has failed." in olive.content()
            olive.goto(url + "/desk/tickets/1")
            history = olive.inner_text(".audit")
            assert "outbox" in history and "via web" in history and "Olive Operator" in history

            # Carol is signed in; once disabled, her next request is refused.
            carol.goto(url + "/requests")
            assert "Exports are slow" in carol.content()
            olive.click("header >> text=Accounts")
            olive.locator("tr", has_text=CAROL).locator("button:has-text('Disable')").click()
            assert "disabled; its sessions ended" in olive.inner_text(".done")
            assert "disabled" in olive.locator("tr", has_text=CAROL).inner_text()
            carol.goto(url + "/requests")
            assert "/sign-in" in carol.url
            assert "Exports are slow" not in carol.content()
            assert carol.locator("text=Sign out").count() == 0
            # A new account, added from the same page, may sign in.
            olive.fill("#add-address", "dave@customer.test")
            olive.fill("#add-name", "Dave")
            olive.click("form.add-account button")
            assert "dave@customer.test added" in olive.inner_text(".done")
        with transaction(desk.engine) as session:
            dave = find_account(session, "dave@customer.test")
            assert dave is not None and dave.registered and dave.disabled_at is None


GETS = ["/ops/outbox", "/ops/pages", "/ops/accounts", "/ops/mail", "/ops/quarantine/1/raw"]


def _posts(held: int) -> list[tuple[str, dict[str, str]]]:
    return [
        ("/ops/outbox/retry", {}),
        ("/ops/outbox/1/retry", {}),
        ("/ops/pages/1/retry", {}),
        ("/ops/accounts/add", {"address": "mallory@evil.test", "name": "Mallory"}),
        ("/ops/accounts/disable", {"address": OLIVE}),
        ("/ops/accounts/clear-bounce", {"address": CAROL}),
        (f"/ops/held/{held}/release", {}),
        ("/ops/quarantine/1/replay", {}),
    ]


def _state(desk: Desk) -> dict[str, object]:
    """What any of the forged posts would change."""
    with transaction(desk.engine) as session:
        olive = find_account(session, OLIVE)
        carol = find_account(session, CAROL)
        page = session.get(Page, 1)
        replayed = session.get(Quarantine, 1)
        return {
            "outbox": [(o.id, o.status) for o in session.exec(select(Outbox)).all()],
            "olive enabled": olive is not None and olive.disabled_at is None,
            "carol bouncing": carol is not None and carol.bouncing_since is not None,
            "mallory": find_account(session, "mallory@evil.test") is not None,
            "page": page.status if page else None,
            "held": len(session.exec(select(Message).where(Message.kind == "held")).all()),
            "replayed": replayed is not None and replayed.replayed_at is not None,
            "trail": len(session.exec(select(TicketEvent)).all()),
        }


def test_only_operators_see_or_change_anything_under_ops(desks: Callable[..., Desk]) -> None:
    with switching_relay() as relay:
        desk = _desk(desks, relay.address, support={"sender_policy": "registered"})
        for address in (OLIVE, ALICE, CAROL):
            _account(desk, address)
        with serving(desk) as port:
            url = desk.settings.web.url
            send(port, request("Exports are slow", "Exports take ten minutes."))
            send(port, request("Please help", "No account yet.", sender="nina@newcomer.test"))
            wait_until_sent(desk.engine)
            quarantine(desk, Inbound(request("Broken", "x").as_bytes(), "smtp", CAROL,
                                     ("support@example.com",)), RuntimeError("parser crashed"))
            now = desk.clock.now()
            with transaction(desk.engine) as session:
                session.add(Page(ticket_id=1, hook="webhook", dedup_key="mailgate-1",
                                 payload="{}", status="gave_up", attempts=3,
                                 next_attempt_at=now, give_up_at=now - timedelta(minutes=1),
                                 created_at=now))
                held = session.exec(select(Message.id).where(Message.kind == "held")).one()
            before = _state(desk)
            assert before["carol bouncing"] and before["held"] == 1 and before["page"] == "gave_up"
            assert ("failed" in str(before["outbox"]))

            visitor = WebClient(url)
            for path in GETS:
                status, headers, _ = visitor.get(path)
                assert status == 303 and headers["Location"].startswith("/sign-in"), path
            for path, fields in _posts(held):
                status, headers, _ = visitor.post(path, {**fields, "csrf": visitor.token(
                    "/sign-in")}, {"Origin": url})
                assert status == 303 and headers["Location"].startswith("/sign-in"), path

            for address in (CAROL, ALICE):  # a customer, and an agent who is no operator
                client = WebClient(url)
                client.sign_in(address, PASSWORD)
                for path in GETS:
                    status, _, body = client.get(path)
                    assert status == 404, (address, path)
                    assert b"Outbox" not in body and b"parser crashed" not in body
                status, _, body = client.get("/account")
                assert status == 200 and b'href="/ops/' not in body
                assert (b'href="/desk"' in body) == (address == ALICE)  # the Queue link
                token = client.token("/account")
                for path, fields in _posts(held):
                    status, _, _ = client.post(path, {**fields, "csrf": token}, {"Origin": url})
                    assert status == 404, (address, path)
            assert _state(desk) == before

            operator = WebClient(url)
            operator.sign_in(OLIVE, PASSWORD)
            _, _, body = operator.get("/account")
            for path in ("/desk", "/ops/outbox", "/ops/pages", "/ops/mail", "/ops/accounts"):
                assert f'href="{path}"'.encode() in body, path
            token = operator.token("/ops/accounts")
            for path, fields in _posts(held):
                # No form token, or a token posted from another site: refused.
                status, _, _ = operator.post(path, fields, {"Origin": url})
                assert status == 403, path
                status, _, _ = operator.post(path, {**fields, "csrf": token},
                                             {"Origin": "https://evil.test"})
                assert status == 403, path
            assert _state(desk) == before
            # The operator's own form goes through.
            status, _, body = operator.post("/ops/accounts/add", {
                "address": "dave@customer.test", "csrf": token}, {"Origin": url})
            assert status == 200 and b"dave@customer.test added" in body


def test_an_operator_retries_a_page_the_hook_refused(
    desks: Callable[..., Desk], relay: Relay, person: Callable[[], Any]
) -> None:
    sunday_2am = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # 02:00 in Los Angeles
    with Pager(failures=1) as pager:
        # The clock stands still: the hook's next try would never come on its own.
        desk = desks(clock=FixedClock(sunday_2am), smtp={"port": free_port()},
                     outbound={"relay": relay.address}, agents={"operators": [OLIVE]},
                     oncall={"webhook": {"url": pager.url, "secret": "webhook-secret"}})
        _account(desk, OLIVE, "Olive Operator")
        with serving(desk) as port:
            url = desk.settings.web.url
            send(port, request("[S0] Checkout is down", "Every card is declined."))
            wait_until_sent(desk.engine, desk.clock)
            assert pager.calls == 1 and pager.bodies == []
            olive = person()
            _sign_in(url, olive, OLIVE)
            olive.click("header >> text=Pages")
            row = olive.locator("table.pages tr", has_text="#1")
            assert "pending" in row.inner_text() and "failed" in row.inner_text()
            # Each heading stands above its column.
            heading = olive.locator("table.pages th", has_text="Status").bounding_box()
            cell = row.locator("td.page-status").bounding_box()
            assert heading is not None and cell is not None
            assert abs(heading["x"] - cell["x"]) < 1 and heading["y"] < cell["y"]
            # A worker (another serve) is delivering it right now: it is left to it.
            _hold_page(desk, 1, "machine-b", until=sunday_2am + timedelta(seconds=30))
            row.locator("button:has-text('Retry')").click()
            assert "Page 1 is being delivered by machine-b now" in olive.inner_text(".error")
            assert pager.calls == 1
            _hold_page(desk, 1, "machine-b", until=None)  # its answer came: a failure
            row = olive.locator("table.pages tr", has_text="#1")
            row.locator("button:has-text('Retry')").click()
            assert "Page 1 is due now." in olive.inner_text(".done")
            assert pager.wait_for(1)[0]["ticket"]["severity"] == "S0"  # type: ignore[index]
            wait_until_sent(desk.engine, desk.clock)
            olive.click("header >> text=Pages")
            assert "delivered" in olive.inner_text("table.pages")
            assert olive.locator("table.pages button").count() == 0
            olive.goto(url + "/desk/tickets/1")
            history = olive.inner_text(".audit")
            assert "trigger retry (webhook)" in history and "Olive Operator" in history


def _hold_page(desk: Desk, number: int, worker: str, until: datetime | None) -> None:
    with transaction(desk.engine) as session:
        page = session.get_one(Page, number)
        page.claimed_by, page.claimed_until = worker, until
        session.add(page)


def test_a_retry_from_the_cli_is_on_the_tickets_history_as_well(
    tmp_path: Path, database_url: str
) -> None:
    with Answering({CAROL: NO_SUCH_USER}) as relay:
        config = write_config(tmp_path, database_url, outbound=f'relay = "{relay.address}"')
        assert run(config, "init").returncode == 0
        desk = Desk.create(load_settings(str(config)))
        raw = request("Exports are slow", "Exports take ten minutes.").as_bytes()
        assert ingest(desk, Inbound(raw, "smtp", CAROL, ("support@example.com",))).ticket == 1
        send_due(desk, RelayTransport(desk.settings.outbound), "machine-a")
        assert _to_carol(desk).status == "failed"
        retried = run(config, "outbox", "retry", "--all")
        assert retried.returncode == 0 and b"1 mail(s) due now" in retried.stdout
        with transaction(desk.engine) as session:
            events = session.exec(select(TicketEvent).where(TicketEvent.what == "outbox")).all()
        desk.engine.dispose()
    assert [(e.ticket_id, e.route, e.new) for e in events] == [(1, "cli", "retry")]
    assert events[0].actor == (os.environ.get("USER") or "operator")


def test_an_agent_added_as_operator_from_the_cli_has_the_operators_pages(
    tmp_path: Path, database_url: str
) -> None:
    config = write_config(tmp_path, database_url)
    assert run(config, "init").returncode == 0
    added = run(config, "agents", "add", OLIVE, "--name", "Olive", "--operator")
    assert added.returncode == 0 and b"(an operator)" in added.stdout, added.stderr
    alice_added = run(config, "agents", "add", ALICE)
    assert alice_added.returncode == 0, alice_added.stderr
    listed = json.loads(run(config, "agents", "list", "--json").stdout)
    assert [(a["address"], a["operator"]) for a in listed] == [(ALICE, False), (OLIVE, True)]
    desk = Desk.create(load_settings(str(config)))
    for address in (OLIVE, ALICE):
        _account(desk, address)
    try:
        with serving(desk):
            olive, alice = WebClient(desk.settings.web.url), WebClient(desk.settings.web.url)
            olive.sign_in(OLIVE, PASSWORD)
            alice.sign_in(ALICE, PASSWORD)
            for client, path, expected in ((olive, "/ops/outbox", 200), (alice, "/ops/outbox", 404),
                                           (alice, "/desk", 200)):
                status, _, body = client.get(path)
                assert status == expected, (path, status, body[:300])
            # Taken away again: the next request finds a plain agent.
            demoted = run(config, "agents", "add", OLIVE, "--no-operator")
            assert demoted.returncode == 0, demoted.stderr
            for path, expected in (("/ops/outbox", 404), ("/desk", 200)):
                status, _, body = olive.get(path)
                assert status == expected, (path, status, body[:300])
    finally:
        desk.engine.dispose()
