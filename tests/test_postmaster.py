"""postmaster@ our domain takes mail (RFC 5321 4.5.1) and passes it on to the operator."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Callable
from pathlib import Path

from sqlmodel import select

from tests.harness import Relay, request, send, serving
from tests.servers import free_port
from tests.test_cli import run, write_config
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.models import Message, Ticket

ALICE = "alice@example.com"
OPERATOR = "ops@example.com"
ADMIN = "hostmaster@remote.test"


def _report(subject: str) -> bytes:
    message = request(subject, "Your server sent us mail we did not expect; see our logs.",
                      sender=f"Remote Admin <{ADMIN}>", to="postmaster@example.com")
    return message.as_bytes()


def test_mail_to_postmaster_goes_to_the_operator_address(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE]}, support={"operator_address": OPERATOR})
    with serving(desk) as port:
        assert send(port, _report("Your server is on our list"), sender=ADMIN,
                    recipients=["postmaster@example.com"]) == {}
        (passed,) = relay.wait_for(1, where=lambda r: r.rcpt_tos == (OPERATOR,))
        # Any case, any of our domains' postmaster; no other domain's.
        assert send(port, _report("Second report"), sender=ADMIN,
                    recipients=["PostMaster@Example.COM"]) == {}
        relay.wait_for(2, where=lambda r: r.rcpt_tos == (OPERATOR,))
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo()
            client.mail(ADMIN)
            code, _ = client.rcpt("postmaster@elsewhere.test")
        assert code == 550
        received = relay.settle()
    assert passed.message["Subject"] == "[postmaster] Your server is on our list"
    assert ADMIN in passed.text() and "see our logs" in passed.text()
    # No ticket, and nothing to the writer or the agents.
    assert {r.rcpt_tos for r in received} == {(OPERATOR,)}
    with transaction(desk.engine) as session:
        assert session.exec(select(Ticket)).all() == []
        kinds = [m.kind for m in session.exec(select(Message)).all()]
    assert kinds == ["postmaster", "postmaster"]


def test_without_an_operator_address_postmaster_mail_goes_to_the_agents(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE, "bob@example.com"]})
    with serving(desk) as port:
        assert send(port, _report("Abuse report"), sender=ADMIN,
                    recipients=["postmaster@example.com"]) == {}
        passed = relay.wait_for(2)
        relay.settle()
    assert sorted(r.rcpt_tos for r in passed) == [(ALICE,), ("bob@example.com",)]
    assert all(r.message["Subject"] == "[postmaster] Abuse report" for r in passed)


def test_the_pipe_takes_postmaster_mail_too(tmp_path: Path, database_url: str) -> None:
    config = write_config(tmp_path, database_url, agents=f'addresses = ["{ALICE}"]')
    assert run(config, "init").returncode == 0
    taken = run(config, "deliver", "--recipient", "postmaster@example.com",
                stdin=_report("By the pipe"))
    refused = run(config, "deliver", "--recipient", "postmaster@elsewhere.test",
                  stdin=_report("Not ours"))
    assert taken.returncode == 0, taken.stderr
    assert refused.returncode == 67
    outbox = json.loads(run(config, "outbox", "list", "--json").stdout)
    assert [o["recipients"] for o in outbox] == [[ALICE]]
