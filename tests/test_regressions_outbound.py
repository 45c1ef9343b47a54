"""Regressions on the way out: stored files, and outbox rows sent once, refused or deferred."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import col, select

from mailgate.outbound import RelayTransport, Sent, retry_now, send_due
from tests.harness import OffersPipelining, Relay, request
from tests.servers import free_port
from ticketing.blobs import FolderBlobs
from ticketing.clock import FixedClock
from ticketing.db import on_commit, transaction
from ticketing.desk import Desk
from ticketing.inbound import Inbound
from ticketing.ingest import ingest
from ticketing.models import Account, Outbox

ALICE = "alice@example.com"
GONE = "gone@customer.test"
LEASE = 300
# Passes a worker makes before a test gives up: a mail that never goes out fails the
# test (the rows say which) instead of keeping it waiting for ever.
PASSES = 100


# 1. Content-addressed files written by several threads at once.

def test_threads_storing_the_same_bytes_at_once_leave_the_whole_file(tmp_path: Path) -> None:
    store = FolderBlobs(tmp_path / "blobs")
    threads, rounds = 4, 40
    barrier = threading.Barrier(threads)
    problems: list[str] = []

    def writer(number: int) -> None:
        for round_ in range(rounds):
            # New bytes each round, so every round races to create the file.
            data = round_.to_bytes(4, "big") * (3 * 1024 * 1024 // 4)
            digest = hashlib.sha256(data).hexdigest()
            barrier.wait()
            try:
                store.put(None, digest, data)
                found = store.path(digest).read_bytes()
            except Exception as exc:
                problems.append(f"round {round_}, thread {number}: {type(exc).__name__}: {exc}")
                continue
            if found != data:
                problems.append(f"round {round_}, thread {number}: {len(found)} of "
                                f"{len(data)} bytes")

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert problems == []
    left = [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file() and p.name.startswith(".")]
    assert left == []
    assert sum(1 for p in (tmp_path / "blobs").rglob("*") if p.is_file()) == rounds


# 2. Outbound workers sharing one database, and what relays answer.

class Answering(OffersPipelining):
    """A relay on loopback that answers each recipient as told and keeps what it accepts."""

    def __init__(self, answers: dict[str, str] | None = None, *, pipelining: bool = False,
                 smtputf8: bool = False, hang_up: bool = False) -> None:
        self.answers = dict(answers or {})
        self.hang_up = hang_up  # after each refusal, as Exim's "drop" does
        self.attempts: list[str] = []
        self.accepted: list[tuple[str, ...]] = []
        self.pipelining = pipelining
        # For each MAIL: whether the client had sent its RCPT commands already, before
        # this answer (which it can only do when it pipelines).
        self.envelope_ahead: list[bool] = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                      decode_data=False, enable_SMTPUTF8=smtputf8)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        waiting = bytes(getattr(server._reader, "_buffer", b""))  # read, not yet answered
        self.envelope_ahead.append(b"RCPT TO:" in waiting.upper())
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        self.attempts.append(address)
        answer = self.answers.get(address.lower(), "250 OK")
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        elif self.hang_up:
            self.hang_up_on(server, answer)
        return answer

    def hang_up_on(self, server: Any, answer: str) -> None:
        """Give this answer and close the connection at once: commands the client sent
        after it (pipelined) get no answer."""
        server.transport.write(answer.encode() + b"\r\n")
        server.transport.close()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted.append(tuple(envelope.rcpt_tos))
        return "250 OK"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Answering:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 3, 3, 18, 0, tzinfo=UTC))


def _requests(desk: Desk, senders: list[str]) -> None:
    """Requests as the SMTP listener hands them to ingest: each queues its confirmation."""
    for sender in senders:
        raw = request("Exports are slow", "Exports take ten minutes.", sender=sender).as_bytes()
        outcome = ingest(desk, Inbound(raw, "smtp", sender, ("support@example.com",)))
        assert outcome.status == "new_ticket", outcome


def _utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime, whichever way the backend gives it back."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _outbox(desk: Desk) -> list[Outbox]:
    with transaction(desk.engine) as session:
        return list(session.exec(select(Outbox).order_by(col(Outbox.id))).all())


def _each_sent_once(desk: Desk, relay: Relay, rows: list[Outbox]) -> list[Outbox]:
    """Every queued mail reached the relay exactly once and is recorded as sent at the
    first attempt; the rows as they stand now."""
    received = Counter(r.message["Message-ID"].strip("<>") for r in relay.received)
    assert [mid for mid, count in received.items() if count > 1] == []
    assert sorted(received) == sorted(r.message_id for r in rows)
    after = _outbox(desk)
    assert {r.status for r in after} == {"sent"}
    assert {r.attempts for r in after} == {1}
    return after


def test_two_workers_at_once_send_each_mail_exactly_once(
    desks: Callable[..., Desk], relay: Relay, clock: FixedClock
) -> None:
    settings = {"outbound": {"relay": relay.address, "lease": LEASE}}
    # Two desks on one database: two machines, each with its own connections, racing
    # for the same rows on real threads. The clock stands still: no lease runs out, so
    # a mail sent twice can only come from two workers claiming it at once.
    first, second = desks(clock=clock, **settings), desks(clock=clock, **settings)
    _requests(first, [f"customer{n}@customer.test" for n in range(24)])
    rows = _outbox(first)
    assert len(rows) == 24
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(desk: Desk, name: str) -> None:
        try:
            barrier.wait()
            for _ in range(PASSES):
                if not any(r.status == "pending" for r in _outbox(desk)):
                    break
                send_due(desk, RelayTransport(desk.settings.outbound), name, 6)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(first, "machine-a")),
               threading.Thread(target=work, args=(second, "machine-b"))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert errors == []
    _each_sent_once(first, relay, rows)


class SlowRelay:
    """Worker A's relay takes 40% of the lease per mail (on the desks' clock); while it
    sends, worker B makes a pass of one mail."""

    def __init__(self, desk: Desk, other: Desk, clock: FixedClock) -> None:
        self.inner = RelayTransport(desk.settings.outbound)
        self.other = other
        self.clock = clock

    def send(self, row: Outbox) -> Sent:
        self.clock.advance(seconds=LEASE * 0.4)
        send_due(self.other, RelayTransport(self.other.settings.outbound), "machine-b", 1)
        return self.inner.send(row)

    def close(self) -> None:
        self.inner.close()


def test_a_slow_worker_holds_only_the_mail_it_is_sending(
    desks: Callable[..., Desk], relay: Relay, clock: FixedClock
) -> None:
    # Had worker A claimed its six mails at once, the third slow send would outlive
    # the lease of the rest, and B would send them again while A still meant to.
    settings = {"outbound": {"relay": relay.address, "lease": LEASE}}
    first, second = desks(clock=clock, **settings), desks(clock=clock, **settings)
    _requests(first, [f"customer{n}@customer.test" for n in range(12)])
    rows = _outbox(first)
    for _ in range(PASSES):
        if not any(r.status == "pending" for r in _outbox(first)):
            break
        send_due(first, SlowRelay(first, second, clock), "machine-a", 6)
    after = _each_sent_once(first, relay, rows)
    assert {r.claimed_by for r in after} == {"machine-a", "machine-b"}


class OperatorMeanwhile:
    """Worker A's relay: while A holds the mail, the operator retries everything and
    worker B makes a pass; then A sends."""

    def __init__(self, desk: Desk, other: Desk) -> None:
        self.inner = RelayTransport(desk.settings.outbound)
        self.desk, self.other = desk, other
        self.retried: list[int] = []
        self.sent_by_other: list[int] = []

    def send(self, row: Outbox) -> Sent:
        self.retried.append(retry_now(self.desk, None))
        self.retried.append(retry_now(self.desk, row.id))
        self.sent_by_other.append(
            send_due(self.other, RelayTransport(self.other.settings.outbound), "machine-b"))
        return self.inner.send(row)

    def close(self) -> None:
        self.inner.close()


def test_operator_retry_leaves_a_mail_another_worker_holds(
    desks: Callable[..., Desk], relay: Relay, clock: FixedClock
) -> None:
    settings = {"outbound": {"relay": relay.address}}
    first, second = desks(clock=clock, **settings), desks(clock=clock, **settings)
    _requests(first, ["carol@customer.test"])
    transport = OperatorMeanwhile(first, second)
    assert send_due(first, transport, "machine-a") == 1
    assert transport.retried == [0, 0]
    assert transport.sent_by_other == [0]
    assert len(relay.received) == 1
    [row] = _outbox(first)
    assert (row.status, row.attempts, row.claimed_by) == ("sent", 1, "machine-a")
    # Held by nobody, a failed mail is the operator's to retry.
    with transaction(first.engine) as session:
        stored = session.get(Outbox, row.id)
        assert stored is not None
        stored.status = "failed"
        session.add(stored)
    assert retry_now(first, row.id) == 1


@pytest.mark.parametrize("hang_up", [False, True], ids=["", "hanging-up"])
@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
def test_relay_refusing_the_recipient_for_good_fails_the_mail_and_marks_the_address(
    desks: Callable[..., Desk], clock: FixedClock, pipelining: bool, hang_up: bool
) -> None:
    with Answering({GONE: "550 5.1.1 <gone@customer.test>: no such user"},
                   pipelining=pipelining, hang_up=hang_up) as answering:
        desk = desks(clock=clock, outbound={"relay": answering.address})
        _requests(desk, [GONE])
        assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a") == 0
        [row] = _outbox(desk)
        assert row.status == "failed"
        assert "550" in row.last_error
        with transaction(desk.engine) as session:
            account = session.exec(select(Account).where(Account.address == GONE)).one()
        assert account.bouncing_since is not None
        assert _utc(account.bouncing_since) == clock.now()
        assert answering.accepted == []
        # The address bounces now: its next request gets no confirmation at all.
        clock.advance(hours=2)
        _requests(desk, [GONE])
        assert len(_outbox(desk)) == 1


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
def test_relay_answering_451_keeps_the_mail_for_a_later_attempt(
    desks: Callable[..., Desk], clock: FixedClock, pipelining: bool
) -> None:
    with Answering({GONE: "451 4.3.0 try again later"}, pipelining=pipelining) as answering:
        desk = desks(clock=clock, outbound={"relay": answering.address})
        _requests(desk, [GONE])
        [before] = _outbox(desk)
        assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a") == 0
        [row] = _outbox(desk)
        assert row.status == "pending"
        assert row.attempts == 1
        assert "451" in row.last_error
        assert _utc(before.next_attempt_at) == clock.now()
        assert _utc(row.next_attempt_at) > clock.now()
        # Not due yet: the next pass leaves it alone.
        assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a") == 0
        assert answering.attempts == [GONE]
        with transaction(desk.engine) as session:
            account = session.exec(select(Account).where(Account.address == GONE)).one()
        assert account.bouncing_since is None
        # Once due and the relay takes it, it goes out once.
        answering.answers.clear()
        clock.advance(hours=1)
        assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a") == 1
        assert answering.accepted == [(GONE,)]
        [row] = _outbox(desk)
        assert (row.status, row.attempts) == ("sent", 2)
        assert json.loads(row.recipients) == [GONE]


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
def test_a_relay_offering_pipelining_gets_each_envelope_in_one_write(
    desks: Callable[..., Desk], clock: FixedClock, pipelining: bool
) -> None:
    copied = "dave@customer.test, gone@customer.test, erin@customer.test"
    with Answering({GONE: "550 5.1.1 <gone@customer.test>: no such user"},
                   pipelining=pipelining) as answering:
        desk = desks(clock=clock, outbound={"relay": answering.address})
        raw = request("Exports are slow", "Exports take ten minutes.",
                      sender="carol@customer.test", cc=copied).as_bytes()
        ingest(desk, Inbound(raw, "smtp", "carol@customer.test", ("support@example.com",)))
        assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a") == 1
    # RFC 2920: the RCPTs were sent before MAIL was answered only when it is offered.
    assert answering.envelope_ahead == [pipelining]
    # The one unknown reader is refused and marked; the others get the mail.
    assert answering.accepted == [
        ("carol@customer.test", "dave@customer.test", "erin@customer.test")]
    [row] = _outbox(desk)
    assert row.status == "sent" and "gone@customer.test" in row.last_error
    with transaction(desk.engine) as session:
        account = session.exec(select(Account).where(Account.address == GONE)).one()
    assert account.bouncing_since is not None


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
def test_an_internationalised_address_goes_to_a_relay_that_offers_smtputf8(
    desks: Callable[..., Desk], clock: FixedClock, pipelining: bool
) -> None:
    joerg = "jörg@exämple.de"
    with Answering(smtputf8=True, pipelining=pipelining) as answering:
        desk = desks(clock=clock, outbound={"relay": answering.address})
        _requests(desk, [f"Jörg <{joerg}>"])
        # The first mail on a new connection: what the relay offers is known by then.
        assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a") == 1
        assert answering.accepted == [(joerg,)]
    # A relay that does not offer it: the mail fails at once, saying why.
    clock.advance(hours=2)
    with Answering(pipelining=pipelining) as plain:
        other = desks(clock=clock, outbound={"relay": plain.address})
        _requests(other, [f"Jörg <{joerg}>"])
        assert send_due(other, RelayTransport(other.settings.outbound), "machine-a") == 0
        row = _outbox(other)[-1]
        assert row.status == "failed" and "does not offer SMTPUTF8" in row.last_error
        assert plain.accepted == []


# 3. The commits serve's workers are woken by.

def test_each_commit_that_queues_mail_or_changes_it_is_told_and_a_pass_with_nothing_due_is_not(
    desks: Callable[..., Desk], clock: FixedClock
) -> None:
    with Answering({GONE: "451 4.3.0 try again later"}) as answering:
        desk = desks(clock=clock, outbound={"relay": answering.address})
        told: list[frozenset[str]] = []
        stop = on_commit(desk.engine, told.append)
        _requests(desk, [GONE])  # queues her confirmation
        assert [t for t in told if "outbox" in t] == [told[-1]]
        told.clear()
        # Tried, and kept for a later attempt: a change to the row.
        assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a") == 0
        assert answering.attempts == [GONE]
        assert told and all("outbox" in t for t in told)
        told.clear()
        # Nothing due: a pass that claims nothing changes nothing, and nobody is told.
        assert send_due(desk, RelayTransport(desk.settings.outbound), "machine-a") == 0
        assert answering.attempts == [GONE]
        assert told == []
        # Made due again in a transaction of its own, as an operator's change does.
        with transaction(desk.engine) as session:
            row = session.exec(select(Outbox)).one()
            row.next_attempt_at = clock.now()
            session.add(row)
        assert told == [frozenset({"outbox"})]
        stop()
        _requests(desk, ["carol@customer.test"])
        assert told == [frozenset({"outbox"})]


@pytest.mark.parametrize("lease", [0, 1])
def test_an_outbound_lease_under_two_seconds_is_refused(lease: int) -> None:
    from ticketing.settings import ConfigError, settings_from_mapping

    # With no lease a claimed mail is free again at once, and a second worker sends it too.
    with pytest.raises(ConfigError, match=r"outbound\.lease: at least 2 seconds"):
        settings_from_mapping({"outbound": {"lease": lease}})
    assert settings_from_mapping({"outbound": {"lease": 2}}).outbound.lease == 2
    assert settings_from_mapping({}).outbound.lease == 300
