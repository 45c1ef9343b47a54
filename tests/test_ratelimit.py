"""Rate limits on automatic mail: sliding windows, machine and bouncing addresses."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, insert
from sqlmodel import Session, select

from tests.harness import serving
from tests.servers import free_port
from ticketing.clock import FixedClock
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Account, AutoReplyLog
from ticketing.ratelimit import (
    clear_bouncing,
    mark_bouncing,
    may_auto_reply,
    prune_auto_replies,
    record_auto_reply,
)
from ticketing.settings import LimitSettings

ANN = "ann@customer.example"


def test_the_per_recipient_window_slides(engine: Engine, clock: FixedClock) -> None:
    limits = LimitSettings(per_recipient_per_hour=2, per_ticket_recipient_per_hour=0)
    start = clock.now()
    with transaction(engine) as session:
        assert may_auto_reply(session, limits, ANN, 1, clock.now())
        record_auto_reply(session, ANN, 1, "confirmation", clock.now())
        clock.advance(minutes=10)
        assert may_auto_reply(session, limits, ANN, 2, clock.now())
        record_auto_reply(session, "Ann@Customer.Example", 2, "confirmation", clock.now())
        clock.advance(minutes=20)
        assert not may_auto_reply(session, limits, ANN, 3, clock.now())
        # Someone else is not held back by Ann's replies.
        assert may_auto_reply(session, limits, "bob@customer.example", 3, clock.now())
    # An hour after the first, it has left the window; the second has not.
    clock.at = start + timedelta(hours=1)
    with transaction(engine) as session:
        assert may_auto_reply(session, limits, ANN, 3, clock.now())
        record_auto_reply(session, ANN, 3, "confirmation", clock.now())
        assert not may_auto_reply(session, limits, ANN, 4, clock.now())
    clock.at = start + timedelta(hours=1, minutes=10)
    with transaction(engine) as session:
        assert may_auto_reply(session, limits, ANN, 4, clock.now())


def test_per_ticket_and_recipient(engine: Engine, clock: FixedClock) -> None:
    limits = LimitSettings(per_recipient_per_hour=10, per_ticket_recipient_per_hour=1)
    with transaction(engine) as session:
        record_auto_reply(session, ANN, 7, "confirmation", clock.now())
        assert not may_auto_reply(session, limits, ANN, 7, clock.now())
        assert may_auto_reply(session, limits, ANN, 8, clock.now())
        assert may_auto_reply(session, limits, ANN, None, clock.now())
        assert may_auto_reply(session, limits, "bob@customer.example", 7, clock.now())


def test_the_overall_ceiling_and_zero_meaning_off(engine: Engine, clock: FixedClock) -> None:
    ceiling = LimitSettings(per_recipient_per_hour=0, overall_per_hour=3)
    off = LimitSettings(per_recipient_per_hour=0, per_ticket_recipient_per_hour=0,
                        overall_per_hour=0)
    with transaction(engine) as session:
        for n in range(3):
            record_auto_reply(session, f"c{n}@customer.example", None, "confirmation", clock.now())
        assert not may_auto_reply(session, ceiling, "new@customer.example", None, clock.now())
        for _ in range(30):
            record_auto_reply(session, ANN, 1, "confirmation", clock.now())
        assert may_auto_reply(session, off, ANN, 1, clock.now())
        clock.advance(hours=1)
        assert may_auto_reply(session, ceiling, "new@customer.example", None, clock.now())


def test_machine_addresses_never_get_automatic_mail(engine: Engine, clock: FixedClock) -> None:
    limits = LimitSettings()
    with transaction(engine) as session:
        for address in (
            "noreply@customer.example",
            "no-reply@customer.example",
            "MAILER-DAEMON@mx.customer.example",
            "postmaster@customer.example",
            "bounces+abc@lists.customer.example",
            "customers-request@lists.customer.example",
            "not an address",
        ):
            assert not may_auto_reply(session, limits, address, None, clock.now()), address
        # Nor our own addresses, when the caller names them.
        assert not may_auto_reply(
            session, limits, "Support@Example.com", None, clock.now(), ("support@example.com",)
        )
        assert may_auto_reply(session, limits, ANN, None, clock.now(), ("support@example.com",))


def test_bouncing_addresses_get_nothing_until_cleared(engine: Engine, clock: FixedClock) -> None:
    limits = LimitSettings()
    first = clock.now()
    with transaction(engine) as session:
        mark_bouncing(session, "Ann@Customer.example", "5.1.1 no such user", clock.now())
        assert not may_auto_reply(session, limits, ANN, None, clock.now())
    clock.advance(days=1)
    with transaction(engine) as session:
        mark_bouncing(session, ANN, "5.2.2 mailbox full", clock.now())
    with Session(engine) as session:
        account = session.exec(select(Account).where(Account.address == ANN)).one()
        # The first bounce dates it; the newest says why.
        assert (account.bouncing_since, account.bounce_detail) == (first, "5.2.2 mailbox full")
    with transaction(engine) as session:
        assert clear_bouncing(session, "ANN@customer.example")
        assert not clear_bouncing(session, ANN)
        assert not clear_bouncing(session, "nobody@customer.example")
        assert may_auto_reply(session, limits, ANN, None, clock.now())


def test_marking_keeps_an_existing_account(engine: Engine, clock: FixedClock) -> None:
    with transaction(engine) as session:
        session.add(Account(address=ANN, name="Ann Customer", registered=True, created_at=clock.now()))
    with transaction(engine) as session:
        mark_bouncing(session, ANN, "5.1.1", clock.now())
    with Session(engine) as session:
        accounts = session.exec(select(Account)).all()
        assert [(a.address, a.name, a.registered) for a in accounts] == [
            (ANN, "Ann Customer", True)
        ]
        assert accounts[0].bouncing_since == clock.now()


def test_the_helpers_never_commit(engine: Engine, clock: FixedClock) -> None:
    with Session(engine) as session:
        record_auto_reply(session, ANN, 1, "confirmation", clock.now())
        mark_bouncing(session, "bob@customer.example", "5.1.1", clock.now())
        session.rollback()
    with Session(engine) as session:
        assert session.exec(select(AutoReplyLog)).all() == []
        assert session.exec(select(Account)).all() == []


def _counted(engine: Engine) -> list[tuple[str, datetime]]:
    with transaction(engine) as session:
        rows = session.exec(select(AutoReplyLog).order_by(AutoReplyLog.id)).all()
        return [(r.recipient, r.sent_at) for r in rows]


def test_serve_deletes_counts_no_window_reads_and_the_limits_still_hold(
    desks: Callable[..., Desk], clock: FixedClock
) -> None:
    desk = desks(clock=clock, smtp={"port": free_port()})
    now = clock.now()
    with transaction(desk.engine) as session:
        for hours in (720, 48, 25):  # more than a day old: gone
            record_auto_reply(session, ANN, 1, "confirmation", now - timedelta(hours=hours))
        record_auto_reply(session, ANN, 1, "confirmation", now - timedelta(hours=23))
        for minutes in (40, 10):
            record_auto_reply(session, ANN, 2, "confirmation", now - timedelta(minutes=minutes))
    with serving(desk):
        deadline = time.monotonic() + 10
        while len(_counted(desk.engine)) > 3:
            assert time.monotonic() < deadline, "the old counts are still there"
            time.sleep(0.02)
    assert [at for _, at in _counted(desk.engine)] == [
        now - timedelta(hours=23), now - timedelta(minutes=40), now - timedelta(minutes=10)]
    limits = LimitSettings(per_recipient_per_hour=2, per_ticket_recipient_per_hour=0)
    with transaction(desk.engine) as session:
        assert not may_auto_reply(session, limits, ANN, 3, now)


def test_pruning_deletes_many_counts_a_batch_at_a_time(engine: Engine, clock: FixedClock) -> None:
    old = clock.now() - timedelta(days=3)
    with transaction(engine) as session:
        session.connection().execute(insert(AutoReplyLog), [
            {"recipient": f"c{n}@customer.example", "ticket_id": n, "kind": "confirmation",
             "sent_at": old} for n in range(12_000)])
        record_auto_reply(session, ANN, 1, "confirmation", clock.now())
    assert prune_auto_replies(engine, clock.now()) == 12_000
    assert [r for r, _ in _counted(engine)] == [ANN]
    assert prune_auto_replies(engine, clock.now()) == 0
