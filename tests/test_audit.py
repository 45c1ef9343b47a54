"""Every change on a ticket is on record, and a customer's escalation is acknowledged."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.harness import Relay, request, send, serving
from tests.servers import free_port
from tests.test_cli import run, write_config
from tests.test_oncall_e2e import Pager
from tests.test_threads import envelope_to, reply_to
from ticketing.clock import FixedClock
from ticketing.desk import Desk

ALICE = "alice@example.com"
CAROL = "carol@customer.test"
DAVE = "dave@customer.test"
SUNDAY_NIGHT = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)  # Sunday 21:00 in Los Angeles


def test_a_customer_who_raises_severity_is_answered_and_every_change_is_shown(
    desks: Callable[..., Desk], relay: Relay, tmp_path: Path, database_url: str,
) -> None:
    with Pager() as pager:
        desk = desks(clock=FixedClock(SUNDAY_NIGHT), smtp={"port": free_port()},
                     outbound={"relay": relay.address}, agents={"addresses": [ALICE]},
                     oncall={"webhook": {"url": pager.url, "secret": "s"}})
        with serving(desk) as port:
            send(port, request("[S2] Reports are slow", "A bit slow.",
                               sender=f"Carol <{CAROL}>"))
            confirmation = relay.wait_for(1, where=lambda r: CAROL in r.rcpt_tos)[0]
            relay.settle()
            step = len(relay.received)
            # Carol raises it herself, answering her confirmation, and copies Dave.
            send(port, reply_to(confirmation, f"Carol <{CAROL}>", "Now nothing loads at all.",
                                cc=DAVE, subject="[S0] Re: " + confirmation.message["Subject"]),
                 sender=CAROL, recipients=envelope_to(confirmation))
            pager.wait_for(1)
            relay.wait_for(step + 2)
            raised = relay.settle()[step:]
            to_alice = next(m for m in raised if m.rcpt_tos == (ALICE,))
            step = len(relay.received)
            send(port, reply_to(to_alice, f"Alice Agent <{ALICE}>",
                                "#severity S1\n#status pending\nWe found it; a fix is rolling out."),
                 sender=ALICE, recipients=envelope_to(to_alice))
            relay.wait_for(step + 2)
            relay.settle()
    ack = next(m for m in raised if m.rcpt_tos == (CAROL,))
    assert ack.message["Auto-Submitted"] == "auto-replied"
    assert "is now S0 (critical)" in ack.text() and "raised from S2" in ack.text()
    assert "on-call engineer is being paged now" in ack.text()
    assert "URGENT: Carol raised this ticket from S2 to S0 (critical)" in to_alice.text()
    assert "the on-call engineer is being paged" in to_alice.text()
    assert to_alice.message["Importance"] == "high"

    config = write_config(tmp_path, database_url)
    shown = run(config, "tickets", "show", "1", "--json")
    assert shown.returncode == 0
    audit = json.loads(shown.stdout)["audit"]
    changes = [(e["what"], e["old"], e["new"], e["who"], e["route"]) for e in audit]
    assert changes == [
        ("opened", "", "S2 open", CAROL, "mail"),
        ("follower", "", DAVE, CAROL, "mail"),
        ("page", "", "queued (webhook)", "mailgate", "system"),
        ("severity", "S2", "S0", CAROL, "mail"),
        ("page", "", "trigger delivered (webhook)", "mailgate", "system"),
        ("page", "", "resolved (webhook)", "mailgate", "system"),
        ("severity", "S0", "S1", ALICE, "mail"),
        ("status", "open", "pending", ALICE, "mail"),
        ("assignee", "", ALICE, ALICE, "mail"),
    ]
    assert all(e["at"].startswith("2026-03-02T05:00") for e in audit)
    shown = run(config, "tickets", "show", "1")
    assert shown.returncode == 0
    text = shown.stdout.decode()
    assert "severity S2 -> S0" in text and "by Carol <carol@customer.test> via mail" in text
    assert "status open -> pending" in text and "by Alice Agent <alice@example.com>" in text
