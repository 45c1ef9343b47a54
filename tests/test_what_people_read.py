"""The texts people read: a confirmation, the agents' notice, notes, as they arrive."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from tests.harness import Received, Relay, request, send, serving
from tests.servers import free_port
from tests.test_threads import envelope_to, reply_to
from ticketing.clock import FixedClock
from ticketing.desk import Desk
from ticketing.notifications import QUOTE_CHARACTERS, excerpt

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@customer.test"
DAVE = "dave@customer.test"
ERIN = "erin@customer.test"
SUNDAY_NIGHT = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)  # Sunday 21:00 in Los Angeles


def _read(mail: Received) -> str:
    return mail.text().replace("\r\n", "\n")


def test_what_the_customer_and_the_agents_read(desks: Callable[..., Desk], relay: Relay) -> None:
    desk = desks(clock=FixedClock(SUNDAY_NIGHT), smtp={"port": free_port()},
                 outbound={"relay": relay.address}, agents={"addresses": [ALICE, BOB]},
                 support={"status_page": ""})
    with serving(desk) as port:
        send(port, request("Invoice question", "Where is March?", sender=f"Carol Customer <{CAROL}>"))
        relay.wait_for(3)
        relay.settle()
        step = len(relay.received)
        send(port, request("[S2] Exports are slow", "Exports take ten minutes.\nSince Monday.",
                           sender=f"Carol Customer <{CAROL}>", cc=f"Dave Smith <{DAVE}>"))
        relay.wait_for(step + 3)
        second = relay.settle()[step:]
        step = len(relay.received)
        send(port, request("Login loops", "It keeps asking.", sender=ERIN))
        relay.wait_for(step + 3)
        third = relay.settle()[step:]
        confirmation = next(m for m in second if CAROL in m.rcpt_tos)
        notice = next(m for m in second if m.rcpt_tos == (ALICE,))
        # Alice writes a note; Carol answers later, and Bob reads the history.
        step = len(relay.received)
        send(port, reply_to(notice, ALICE, "#note\nShe is on the old exporter."),
             sender=ALICE, recipients=envelope_to(notice))
        relay.wait_for(step + 1)
        noted = relay.settle()[step:]
        step = len(relay.received)
        send(port, reply_to(confirmation, f"Carol Customer <{CAROL}>", "Still slow today."),
             sender=CAROL, recipients=envelope_to(confirmation))
        relay.wait_for(step + 3)
        answered = relay.settle()[step:]

    text = _read(confirmation)
    assert text.splitlines()[2] == "Hello Carol Customer,"
    assert "Copied:   Dave Smith <dave@customer.test>" in text
    assert "Our support desk is staffed Monday to Friday, 06:00 to 18:00 (America/Los_Angeles)." in text
    assert "For S2 (medium) requests we aim to answer within 1 business day." in text
    assert "when it opens,\n  Monday 02 March at 06:00 PST." in text
    assert '"[S1] Re: [#2] Exports are slow"' in text
    assert "S0 (critical) - Service is inaccessible" in text
    assert "> Exports take ten minutes.\n> Since Monday." in text
    assert "status" not in text.lower().replace("the status", "")
    assert "localhost" not in confirmation.raw.decode()
    assert "Status page" not in confirmation.raw.decode()

    text = _read(notice)
    assert "From:     Carol Customer <carol@customer.test>" in text
    assert "Copied:   Dave Smith <dave@customer.test>" in text
    assert "Received: Sunday 01 March 2026 at 21:00 PST, outside business hours" in text
    assert "Status:   open, unassigned" in text
    assert "[#1] open, S3, opened 2026-03-01: Invoice question" in text

    erin_notice = next(m for m in third if m.rcpt_tos == (ALICE,))
    erin_confirmation = next(m for m in third if m.rcpt_tos == (ERIN,))
    assert "From:     erin@customer.test\n" in _read(erin_notice)
    assert "<erin@customer.test>" not in _read(erin_notice)
    assert "Their other tickets: none" in _read(erin_notice)
    assert _read(erin_confirmation).splitlines()[2] == "Hello,"

    [to_bob] = [m for m in noted if m.rcpt_tos == (BOB,)]
    assert to_bob.message["Subject"] == "[Note] Re: [#2] Exports are slow"
    bob_reads = _read(next(m for m in answered if m.rcpt_tos == (BOB,)))
    dave_reads = _read(next(m for m in answered if m.rcpt_tos == (DAVE,)))
    assert "alice@example.com wrote (internal note: agents only):" in bob_reads
    assert "> She is on the old exporter." in bob_reads
    assert "old exporter" not in dave_reads


def test_a_quote_keeps_the_start_of_a_long_pasted_line_and_counts_what_it_leaves() -> None:
    # A greeting, then a log pasted as one line of 7,000 characters, then a signature
    # after blank lines: the quote shows the greeting and the start of the log.
    text = "Hi,\n" + "error " * 1200 + "\n\nCarol\n\n\n"
    quoted = excerpt(text).splitlines()
    assert quoted[0] == "Hi,"
    assert quoted[1].startswith("error error") and quoted[1].endswith(" [...]")
    assert len("\n".join(quoted[:2])) <= QUOTE_CHARACTERS + len(" [...]")
    assert quoted[2:] == ["[... 2 more lines, kept with the ticket]"]  # the blank one, Carol
    short = "Line one.\n\nLine three.\n"
    assert excerpt(short) == short.rstrip()
    assert excerpt("") == ""
