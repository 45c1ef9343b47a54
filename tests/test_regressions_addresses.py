"""Regressions in reading From and Cc as mail arrives over SMTP: CRLF line ends, folded names."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import Relay, send, serving
from tests.servers import corpus_dir, free_port
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.parse import parse_mail
from ticketing.reports import list_tickets, show_ticket

GATEWAY = "bounces-4711@mailer.example.net"  # an envelope sender that is nobody's address
KERNEL = "notmuch/lkml/cur/1382298793.002543:2,"


def _crlf(text: str) -> bytes:
    """A mail as it crosses SMTP and IMAP: every line ends in CRLF."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _mail(headers: str, subject: str, body: str = "Hello,\n\nplease help.\n") -> bytes:
    return _crlf(f"{headers.rstrip()}\nTo: support@example.com\nSubject: {subject}\n"
                 f"Message-ID: <{abs(hash(subject))}@customer.test>\n"
                 "Date: Mon, 02 Mar 2026 10:00:00 +0000\n"
                 f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{body}")


def _folded_header(path: str, name: str) -> str:
    """One header field of a corpus mail exactly as written, folds included."""
    raw = (corpus_dir() / path).read_bytes().decode("latin-1").replace("\r\n", "\n")
    found = re.search(rf"^{name}:.*\n(?:[ \t].*\n)*", raw, re.MULTILINE)
    assert found is not None
    return found.group(0)


def _ticket(desk: Desk) -> dict[str, Any]:
    with transaction(desk.engine) as session:
        (listed,) = list_tickets(session, None)
        shown = show_ticket(session, listed["number"])
    assert shown is not None
    return shown


@pytest.fixture
def desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address})


def test_a_quoted_encoded_name_folded_with_crlf_keeps_the_customers_address(
    desk: Desk, relay: Relay
) -> None:
    # As Outlook writes a long Polish name: the quoted encoded words folded inside the quotes.
    sender = ('From: "=?UTF-8?Q?Ma=C5=82gorzata?=\n =?UTF-8?Q?_Krzy=C5=BCanowska?="'
              " <m.krzyzanowska@firma.example.pl>\n")
    with serving(desk) as port:
        send(port, _mail(sender, "Faktura"), sender=GATEWAY)
        confirmation = relay.wait_for(1)[0]
    ticket = _ticket(desk)
    assert ticket["requester"] == "m.krzyzanowska@firma.example.pl"
    assert confirmation.rcpt_tos == ("m.krzyzanowska@firma.example.pl",)
    assert "Krzyżanowska" in confirmation.message["To"]


def test_a_kernel_cc_list_folded_inside_quoted_names_keeps_everyone(
    desk: Desk, relay: Relay
) -> None:
    cc = _folded_header(KERNEL, "Cc")
    assert '"Brandeburg,\n\tJesse"' in cc  # the corpus mail folds inside the quotes
    with serving(desk) as port:
        send(port, _mail(f"From: Carol Customer <carol@customer.test>\n{cc}", "Driver oops"),
             sender="carol@customer.test")
        relay.wait_for(1)
    participants = set(_ticket(desk)["participants"])
    assert {"jesse.brandeburg@intel.com", "jeffrey.t.kirsher@intel.com",
            "bruce.w.allan@intel.com", "john.ronciak@intel.com"} <= participants


def test_a_quoted_local_part_is_the_requester(desk: Desk, relay: Relay) -> None:
    with serving(desk) as port:
        send(port, _mail('From: "#FAX#*49000783135#"@otobo.fax\n', "Fax received"),
             sender=GATEWAY)
        confirmation = relay.wait_for(1)[0]
    # The quotes are not needed around these characters: the same mailbox either way.
    assert _ticket(desk)["requester"] == "#fax#*49000783135#@otobo.fax"
    assert confirmation.rcpt_tos == ("#fax#*49000783135#@otobo.fax",)


@pytest.mark.parametrize("name", ["From", "Cc"])
def test_every_corpus_address_reads_the_same_with_crlf_and_lf(name: str) -> None:
    differ = []
    for path in sorted(corpus_dir().rglob("*")):
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        raw = path.read_bytes().replace(b"\r\n", b"\n")
        if not re.search(rb"^" + name.encode() + rb":.*\n[ \t]", raw, re.MULTILINE | re.IGNORECASE):
            continue  # only mails with this field folded
        lf, crlf = parse_mail(raw), parse_mail(raw.replace(b"\n", b"\r\n"))
        read = (lf.sender, crlf.sender) if name == "From" else (lf.cc, crlf.cc)
        if read[0] != read[1]:
            differ.append(str(path.relative_to(corpus_dir())))
    assert differ == []
