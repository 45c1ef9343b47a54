"""Severity comes from explicit subject tags only; the subject keeps every other word."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlmodel import select

from tests.harness import Relay, request, send, serving
from tests.servers import free_port
from tests.test_oncall_e2e import Pager
from ticketing.clock import FixedClock
from ticketing.conversation import clean_subject
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Page, Ticket
from ticketing.severity import Severity, severity_in, strip_tags

ALICE = "alice@example.com"
CAROL = "carol@customer.test"
SUNDAY_NIGHT = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)  # Sunday 21:00 in Los Angeles


@pytest.mark.parametrize(("subject", "level", "kept"), [
    ("[S0] Dashboard down", Severity.S0, "Dashboard down"),
    ("(s1) API slow", Severity.S1, "API slow"),
    ("[Sev0] Outage", Severity.S0, "Outage"),
    ("[SEV-1] Outage", Severity.S1, "Outage"),
    ("Checkout fails [P0]", Severity.S0, "Checkout fails"),
    ("[critical] Nothing loads", Severity.S0, "Nothing loads"),
    ("[low] A wish", Severity.S3, "A wish"),
    ("S1: exports slow", Severity.S1, "exports slow"),
    ("Re: Fwd: S0: still down", Severity.S0, "still down"),
    ("[S3] minor and [S1] major", Severity.S1, "minor and major"),
    # Words in running text are no tags.
    ("Is error P0 documented?", None, "Is error P0 documented?"),
    ("Pricing for the P1 plan", None, "Pricing for the P1 plan"),
    ("Migrating from SEV-1 tooling", None, "Migrating from SEV-1 tooling"),
    ("how does S3: bucket sync work", None, "how does S3: bucket sync work"),
    ("Severity 1 definitions?", None, "Severity 1 definitions?"),
    ("S3://bucket listing fails", None, "S3://bucket listing fails"),
    ("Error:", None, "Error:"),
])
def test_only_explicit_tags_set_severity(subject: str, level: Severity | None, kept: str) -> None:
    assert severity_in(subject) == level
    assert clean_subject(strip_tags(subject)) == kept


def test_a_p0_in_a_question_pages_nobody_and_keeps_its_subject(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    with Pager() as pager:
        desk = desks(clock=FixedClock(SUNDAY_NIGHT), smtp={"port": free_port()},
                     outbound={"relay": relay.address}, agents={"addresses": [ALICE]},
                     oncall={"webhook": {"url": pager.url, "secret": "s"}})
        with serving(desk) as port:
            send(port, request("Is error P0 documented?", "I saw it in the log.",
                               sender=f"Carol <{CAROL}>"))
            mails = relay.wait_for(2)
    confirmation = next(m for m in mails if CAROL in m.rcpt_tos)
    notice = next(m for m in mails if m.rcpt_tos == (ALICE,))
    assert "Is error P0 documented?" in confirmation.message["Subject"]
    assert "S3 (low)" in confirmation.text()
    assert "paged" not in confirmation.text()
    assert "Is error P0 documented? (S3 low)" in notice.message["Subject"]
    with transaction(desk.engine) as session:
        ticket = session.exec(select(Ticket)).one()
        assert (ticket.subject, ticket.severity) == ("Is error P0 documented?", 3)
        # The page rows are written with the ticket: none means nobody is paged.
        assert session.exec(select(Page)).all() == []
    assert pager.bodies == []
