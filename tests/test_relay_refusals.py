"""A relay that refuses our mail for its own reasons marks no reader as bouncing."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from mailgate.outbound import RelayTransport, send_due
from tests.harness import request
from tests.test_cli import run, write_config
from tests.test_regressions_outbound import Answering
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.inbound import Inbound
from ticketing.ingest import ingest
from ticketing.models import Account, Outbox
from ticketing.ratelimit import mark_bouncing
from ticketing.settings import load_settings

ALICE = "alice@example.com"
CUSTOMERS = ["carol@customer.test", "erin@other.test", "frank@third.test"]
DAVE = "dave@customer.test"


class Refusing(Answering):
    """A relay that refuses every mail at one step, as a relay with a broken login does."""

    def __init__(self, step: str, answer: str, pipelining: bool = False,
                 hang_up: bool = False) -> None:
        super().__init__(pipelining=pipelining, hang_up=hang_up)
        self.step, self.answer = step, answer

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        if self.step == "MAIL":
            if self.hang_up:
                self.hang_up_on(server, self.answer)
            return self.answer
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if self.step == "RCPT":
            self.attempts.append(address)
            return self.answer.format(address)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.step == "DATA":
            return self.answer
        return await super().handle_DATA(server, session, envelope)


def _open_tickets(desk: Desk) -> None:
    for n, sender in enumerate(CUSTOMERS):
        raw = request(f"Exports are slow {n}", "Exports take ten minutes.", sender=sender,
                      cc=DAVE if n == 0 else "").as_bytes()
        outcome = ingest(desk, Inbound(raw, "smtp", sender, ("support@example.com",)))
        assert outcome.status == "new_ticket", outcome


def _outbox(desk: Desk) -> list[Outbox]:
    with transaction(desk.engine) as session:
        return list(session.exec(select(Outbox).order_by(col(Outbox.id))).all())


def _bouncing(desk: Desk) -> list[str]:
    with transaction(desk.engine) as session:
        return sorted(session.exec(select(Account.address).where(
            col(Account.bouncing_since).is_not(None))).all())


@pytest.mark.parametrize(("step", "answer", "hang_up"), [
    ("RCPT", "554 5.7.1 <{}>: Relay access denied", False),
    ("RCPT", "550 Relaying denied", False),  # no enhanced status code
    ("MAIL", "553 5.7.1 Sender address rejected: not owned by user", False),
    ("MAIL", "553 5.7.1 Sender address rejected: not owned by user", True),
    ("DATA", "554 5.7.1 Message refused by policy", False),
], ids=["rcpt-5.7.1", "rcpt-bare-550", "mail-from", "mail-from-hanging-up", "data"])
@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
def test_a_relay_refusing_all_our_mail_marks_nobody_and_sends_it_once_fixed(
    desks: Callable[..., Desk], step: str, answer: str, hang_up: bool, pipelining: bool,
    caplog: pytest.LogCaptureFixture
) -> None:
    clock = FixedClock(datetime(2026, 3, 3, 18, 0, tzinfo=UTC))
    with Refusing(step, answer, pipelining, hang_up) as relay:
        desk = desks(clock=clock, outbound={"relay": relay.address},
                     agents={"addresses": [ALICE]})
        _open_tickets(desk)
        queued = _outbox(desk)
        readers = {r for row in queued for r in json.loads(row.recipients)}
        assert {ALICE, DAVE, *CUSTOMERS} <= readers
        with caplog.at_level(logging.ERROR, logger="mailgate.outbound"):
            assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a") == 0
        # Nobody is marked: the relay's refusal is the relay's problem, said loudly.
        assert _bouncing(desk) == []
        after = _outbox(desk)
        assert {(r.status, r.attempts) for r in after} == {("pending", 1)}
        assert all(relay.address in r.last_error for r in after)
        loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(loud) == len(queued) and all(relay.address in line for line in loud)
        # The relay is fixed: every mail goes out, once, to every reader.
        relay.step = ""
        clock.advance(hours=2)
        assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a") == len(queued)
        assert sorted(r for sent in relay.accepted for r in sent) == sorted(
            r for row in queued for r in json.loads(row.recipients))
        # And the customers still get their confirmations.
        clock.advance(hours=2)
        _open_tickets(desk)
        assert len(_outbox(desk)) == 2 * len(queued)


def test_only_the_recipient_the_relay_does_not_know_is_marked(
    desks: Callable[..., Desk]
) -> None:
    clock = FixedClock(datetime(2026, 3, 3, 18, 0, tzinfo=UTC))
    with Answering({DAVE: "550 5.1.1 <dave@customer.test>: Recipient address rejected: "
                          "User unknown"}) as relay:
        desk = desks(clock=clock, outbound={"relay": relay.address})
        _open_tickets(desk)
        send_due(desk, RelayTransport(desk.settings.outbound), "machine-a")
        assert _bouncing(desk) == [DAVE]
        assert sorted(r for sent in relay.accepted for r in sent) == sorted(CUSTOMERS)


def test_operator_lists_who_bounces_and_why_and_clears_one_or_all(
    tmp_path: Path, database_url: str
) -> None:
    config = write_config(tmp_path, database_url)
    assert run(config, "init").returncode == 0
    desk = Desk.create(load_settings(str(config)))
    with transaction(desk.engine) as session:
        for address in ("gone@customer.test", "left@customer.test", "moved@other.test"):
            mark_bouncing(session, address, f"550 5.1.1 <{address}>: no such user",
                          datetime(2026, 3, 3, 18, 0, tzinfo=UTC))
    desk.engine.dispose()

    def bouncing() -> list[str]:
        listed = run(config, "accounts", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        return sorted(r["address"] for r in json.loads(listed.stdout) if r["bouncing_since"])

    listing = run(config, "accounts", "list").stdout.decode()
    assert "550 5.1.1 <gone@customer.test>: no such user" in listing
    assert run(config, "accounts", "clear-bounce", "gone@customer.test").returncode == 0
    assert bouncing() == ["left@customer.test", "moved@other.test"]
    assert run(config, "accounts", "clear-bounce").returncode != 0  # one address or --all
    assert run(config, "accounts", "clear-bounce", "--all").returncode == 0
    assert bouncing() == []
