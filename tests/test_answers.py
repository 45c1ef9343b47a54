"""Answers as the customer receives them: one mail per event, a person's words unmarked."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import Relay, request, send, serving
from tests.servers import free_port
from tests.test_threads import envelope_to, reply_to
from ticketing.desk import Desk

ALICE = "alice@example.com"
CAROL = "carol@customer.test"
DAVE = "dave@customer.test"


@pytest.fixture
def desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE]})


def test_only_what_the_system_writes_itself_is_marked_auto_submitted(
    desk: Desk, relay: Relay
) -> None:
    with serving(desk) as port:
        send(port, request("[S2] Exports are slow", "Exports take ten minutes.",
                           sender=f"Carol <{CAROL}>", cc=DAVE))
        first = relay.wait_for(2)  # the confirmation (Cc Dave) and the notice
        relay.settle()
        confirmation = next(m for m in first if CAROL in m.rcpt_tos)
        notice = next(m for m in first if m.rcpt_tos == (ALICE,))
        step = len(relay.received)
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>", "We are looking into it."),
             sender=ALICE, recipients=envelope_to(notice))
        answers = relay.wait_for(step + 2)[step:]
        relay.settle()
        answer = next(m for m in answers if m.rcpt_tos == (CAROL,))
        step = len(relay.received)
        send(port, reply_to(answer, f"Carol <{CAROL}>", "Thanks, it is the big exports."),
             sender=CAROL, recipients=envelope_to(answer))
        passed_on = relay.wait_for(step + 2)[step:]
        relay.settle()
    assert confirmation.message["Auto-Submitted"] == "auto-replied"
    assert notice.message["Auto-Submitted"] == "auto-generated"
    assert sorted(r for m in answers for r in m.rcpt_tos) == [CAROL, DAVE]
    assert sorted(r for m in passed_on for r in m.rcpt_tos) == [ALICE, DAVE]
    for mail in (*answers, *passed_on):
        assert mail.message["Auto-Submitted"] is None, mail.rcpt_tos


def test_one_mail_per_event_per_reader(desk: Desk, relay: Relay) -> None:
    with serving(desk) as port:
        send(port, request("Search is slow", "Search takes 30 s.", sender=f"Carol <{CAROL}>",
                           cc=DAVE))
        notice = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,))[0]
        relay.settle()
        # Solved with an answer: one mail each, the answer carrying the status.
        step = len(relay.received)
        send(port, reply_to(notice, f"Alice Agent <{ALICE}>", "#status solved\nFast again."),
             sender=ALICE, recipients=envelope_to(notice))
        relay.wait_for(step + 2)
        solved = relay.settle()[step:]
        # Carol answers: the ticket reopens, and she hears nothing about her own mail.
        answer = next(m for m in solved if m.rcpt_tos == (CAROL,))
        step = len(relay.received)
        send(port, reply_to(answer, f"Carol <{CAROL}>", "Slow again since noon."),
             sender=CAROL, recipients=envelope_to(answer))
        relay.wait_for(step + 2)
        reopened = relay.settle()[step:]
    assert sorted(r for m in solved for r in m.rcpt_tos) == [CAROL, DAVE]
    assert "Fast again." in answer.text()
    assert "now marked solved" in answer.text()
    assert sorted(r for m in reopened for r in m.rcpt_tos) == [ALICE, DAVE]
    for mail in reopened:
        assert "Slow again since noon." in mail.text()
        assert "This reply reopened ticket [#1]" in mail.text()
