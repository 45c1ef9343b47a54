"""Incidents: opened, updated and resolved from the CLI; named in confirmations; tickets
attached by `#incident N`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.harness import Relay, request, send, serving
from tests.servers import free_port
from tests.test_cli import run, write_config
from tests.test_threads import envelope_to, reply_to
from ticketing.desk import Desk

ALICE = "alice@example.com"
CAROL = "carol@customer.test"
COMPONENTS = 'components = ["Dashboard", "API", "Mail"]'


def test_an_incident_is_opened_updated_and_resolved_from_the_command_line(
    tmp_path: Path, database_url: str,
) -> None:
    config = write_config(tmp_path, database_url, status=COMPONENTS)
    assert run(config, "init").returncode == 0
    opened = run(config, "incidents", "open", "Dashboards fail to load", "--components",
                 "dashboard", "--state", "investigating", "--message",
                 "We are looking into errors loading dashboards.")
    assert opened.returncode == 0, opened.stderr
    assert b"incident 1: investigating" in opened.stdout
    unknown = run(config, "incidents", "open", "Billing", "--components", "Billing",
                  "--message", "x")
    assert unknown.returncode != 0 and b"unknown component(s) Billing" in unknown.stderr
    wrong = run(config, "incidents", "update", "1", "--state", "fixed", "--message", "x")
    assert wrong.returncode != 0 and b"must be one of investigating" in wrong.stderr
    updated = run(config, "incidents", "update", "1", "--state", "identified", "--message",
                  "A bad cache node; replacing it.")
    assert updated.returncode == 0, updated.stderr
    listed = json.loads(run(config, "incidents", "list", "--json").stdout)
    assert [(i["number"], i["state"], i["components"]) for i in listed] == [
        (1, "identified", ["Dashboard"])]
    assert [(u["state"], u["text"]) for u in listed[0]["updates"]] == [
        ("identified", "A bad cache node; replacing it."),
        ("investigating", "We are looking into errors loading dashboards."),
    ]
    assert listed[0]["resolved_at"] is None
    resolved = run(config, "incidents", "resolve", "1", "--message", "All dashboards load.")
    assert resolved.returncode == 0, resolved.stderr
    again = run(config, "incidents", "resolve", "1")
    assert again.returncode != 0 and b"already resolved" in again.stderr
    listed = json.loads(run(config, "incidents", "list", "--json").stdout)
    assert listed[0]["state"] == "resolved" and listed[0]["resolved_at"] is not None
    text = run(config, "incidents", "list").stdout.decode()
    assert "resolved" in text and "Dashboards fail to load" in text
    missing = run(config, "incidents", "update", "7", "--message", "x")
    assert missing.returncode != 0 and b"no incident 7" in missing.stderr


def test_an_agent_attaches_a_ticket_by_mail_and_the_audit_trail_shows_it(
    desks: Callable[..., Desk], relay: Relay, tmp_path: Path, database_url: str,
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE]}, status={"components": ["Dashboard"]})
    config = write_config(tmp_path, database_url, status=COMPONENTS)
    with serving(desk) as port:
        assert run(config, "incidents", "open", "Dashboards fail to load", "--components",
                   "Dashboard", "--message", "Looking into it.").returncode == 0
        send(port, request("[S0] Dashboard down", "Nothing loads.", sender=f"Carol <{CAROL}>"))
        to_alice = relay.wait_for(1, where=lambda r: r.rcpt_tos == (ALICE,))[0]
        confirmation = relay.wait_for(1, where=lambda r: CAROL in r.rcpt_tos)[0]
        relay.settle()
        step = len(relay.received)
        # A wrong number is refused and nothing is attached.
        send(port, reply_to(to_alice, f"Alice Agent <{ALICE}>", "#incident 9"),
             sender=ALICE, recipients=envelope_to(to_alice))
        refusal = relay.wait_for(step + 1)[step]
        assert "#incident 9: no such incident" in refusal.text()
        relay.settle()
        # The server answers 250 once the mail is committed.
        send(port, reply_to(to_alice, f"Alice Agent <{ALICE}>", "#incident 1"),
             sender=ALICE, recipients=envelope_to(to_alice))
    listed = json.loads(run(config, "incidents", "list", "--json").stdout)
    assert listed[0]["tickets"] == [1]
    # Carol's confirmation names the open incident and links its page.
    assert "Dashboards fail to load (investigating): " \
        f"{desk.settings.web.url}/status/incidents/1" in confirmation.text()
    shown = json.loads(run(config, "tickets", "show", "1", "--json").stdout)
    events = [(e["what"], e["new"], e["who"], e["route"]) for e in shown["audit"]]
    assert ("incident", "1", ALICE, "mail") in events
    text = run(config, "tickets", "show", "1").stdout.decode()
    assert "incident 1 (Dashboards fail to load)" in text
