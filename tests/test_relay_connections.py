"""Mail out goes over few relay connections, and a relay that hangs up loses none of it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Relay, request, send, serving
from tests.servers import PROJECT, free_port
from ticketing.desk import Desk
from ticketing.inbound import Inbound
from ticketing.ingest import ingest


def _confirmations(relay: Relay, count: int) -> list[str]:
    found = relay.wait_for(count, where=lambda r: r.rcpt_tos[0].endswith("@customer.test"))
    return [r.message["Subject"] for r in found]


def test_mail_that_keeps_coming_goes_over_one_relay_connection(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address})
    with serving(desk) as port:
        for n in range(5):
            # One request at a time: each confirmation is out before the next one comes.
            assert send(port, request(f"Request {n}", "Please.",
                                      sender=f"c{n}@customer.test")) == {}
            _confirmations(relay, n + 1)
        received = relay.settle()
    assert len(received) == 5
    assert {r.connection for r in received} == {1}


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
def test_a_relay_that_hangs_up_after_two_mails_gets_every_mail_once_at_once(
    desks: Callable[..., Desk], pipelining: bool
) -> None:
    with Relay(mails_per_connection=2, pipelining=pipelining) as relay:
        desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address})
        for n in range(5):
            raw = request(f"Request {n}", "Please.", sender=f"c{n}@customer.test").as_bytes()
            assert ingest(desk, Inbound(raw, "smtp", "", ("support@example.com",))).ticket
        with serving(desk):
            # All five are due at once: one pass, and the relay ends its connection
            # after every second mail. The rest go on a new one, not after a retry delay.
            subjects = _confirmations(relay, 5)
            received = relay.settle()
    assert len(received) == 5
    assert Counter(r.message["Message-ID"] for r in received).most_common(1)[0][1] == 1
    assert sorted(subjects) == sorted(f"[#{n}] Request {n - 1}" for n in range(1, 6))
    assert len({r.connection for r in received}) == 3


# A new interpreter whose first database work is the sender's pass: nothing has gone
# through the ORM in it before (serve just started, with mail due from before).
_SEND_IN_A_NEW_PROCESS = """
import json, sys
from mailgate.outbound import send_due, transport_for
from ticketing.desk import Desk
from ticketing.settings import settings_from_mapping
desk = Desk.create(settings_from_mapping(json.loads(sys.argv[1])))
print(send_due(desk, transport_for(desk), "restarted"))
"""


def test_a_new_process_sends_the_mail_that_was_due_before_it_started(
    desks: Callable[..., Desk], relay: Relay, database_url: str, tmp_path: Path
) -> None:
    desk = desks(outbound={"relay": relay.address})
    raw = request("Queued before a restart", "Please.", sender="c@customer.test").as_bytes()
    assert ingest(desk, Inbound(raw, "smtp", "", ("support@example.com",))).ticket
    settings = {"support": {"address": "support@example.com", "secret": "restart"},
                "database": {"url": database_url}, "storage": {"path": str(tmp_path / "data")},
                "outbound": {"relay": relay.address}}
    result = subprocess.run([sys.executable, "-c", _SEND_IN_A_NEW_PROCESS, json.dumps(settings)],
                            capture_output=True, cwd=PROJECT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.split() == [b"1"], result.stderr.decode()[-2000:]
    assert _confirmations(relay, 1) == ["[#1] Queued before a restart"]
