"""What a plain HTTP client can type into an address or a form that no page of ours would:
numbers no row can have, NUL bytes, the same form many times at once. The answer is a
404 or a 400 on both databases, never a 500, and no limit is passed."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.harness import Relay, request, send, wait_until_sent
from tests.helpdesk import HelpDesk, WebClient, helpdesk
from tests.servers import free_port
from ticketing.desk import Desk

ALICE = "alice@example.com"  # an agent
OLIVE = "olive@example.com"  # an operator
CAROL = "carol@customer.test"
PASSWORD = "correct horse battery"
# Past a 32-bit column (PostgreSQL's integer), and past a 64-bit one.
NUMBERS = [str(2**31), "99999999999", str(2**64 + 1)]


def _desk(desks: Callable[..., Desk], relay: Relay) -> Desk:
    return desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 agents={"addresses": [ALICE], "operators": [OLIVE]},
                 status={"components": ["API"]})


def _clients(hd: HelpDesk) -> dict[str, WebClient]:
    clients = {"visitor": WebClient(hd.url)}
    for address in (CAROL, ALICE, OLIVE):
        hd.add_account(address, password=PASSWORD)
        clients[address] = WebClient(hd.url)
        clients[address].sign_in(address, PASSWORD)
    return clients


def test_numbers_no_row_can_have_are_a_404_for_everyone(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        send(hd.smtp_port, request("Invoices are wrong", "The totals are doubled."))
        wait_until_sent(hd.desk.engine)
        for who, client in _clients(hd).items():
            token = client.token("/status/subscribe")
            for n in NUMBERS:
                for path in (f"/requests/{n}", f"/requests/1/files/{n}/x.pdf",
                             f"/requests/{n}/files/1/x.pdf", f"/desk/tickets/{n}",
                             f"/desk/tickets/1/files/{n}/x.pdf", f"/status/incidents/{n}",
                             f"/ops/quarantine/{n}/raw", f"/status/subscription/{n}-{'0' * 32}",
                             f"/status/unsubscribe/{n}-{'0' * 32}"):
                    status, _, _ = client.get(path)
                    assert status in (303, 404), (who, path, status)
                for path in (f"/requests/{n}/reply", f"/desk/tickets/{n}",
                             f"/ops/outbox/{n}/retry", f"/ops/pages/{n}/retry",
                             f"/ops/held/{n}/release", f"/ops/quarantine/{n}/replay",
                             f"/status/unsubscribe/{n}-{'0' * 32}"):
                    status, _, _ = client.post(path, {"csrf": token, "text": "Hello",
                                                      "List-Unsubscribe": "One-Click"},
                                               {"Origin": hd.url})
                    assert status in (303, 404), (who, path, status)


def test_a_nul_byte_in_an_address_or_a_search_is_refused_not_a_500(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        clients = _clients(hd)
        visitor, operator = clients["visitor"], clients[OLIVE]
        status, _, body = visitor.post("/status/subscribe", {"email": "ann\x00@reader.test"},
                                       {"Origin": hd.url})
        assert status == 400 and b"not a mail address" in body
        # Nor can a line break carry a header into the confirmation mail.
        status, _, body = visitor.post("/status/subscribe", {
            "email": "ann@reader.test\r\nBcc: mallory@evil.test"}, {"Origin": hd.url})
        assert status == 400 and b"not a mail address" in body
        token = operator.token("/ops/accounts")
        for path in ("/ops/accounts/add", "/ops/accounts/disable", "/ops/accounts/clear-bounce"):
            status, _, _ = operator.post(path, {"csrf": token, "address": "mallory\x00@evil.test"},
                                         {"Origin": hd.url})
            assert status in (400, 404), (path, status)
        status, _, body = operator.get("/ops/accounts?q=%00olive")
        assert status == 200 and OLIVE.encode() in body
        status, _, _ = clients[ALICE].get("/desk?q=%00totals")
        assert status == 200
        relay.settle()
        assert not [r for r in relay.received if any("\x00" in a or "evil" in a
                                                     for a in r.rcpt_tos)]


def test_the_subscribe_form_sent_many_times_at_once_answers_alike_within_the_limits(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    """Asks that race each other for a new address: none may fail where a lone ask would
    not (a 500 would tell the address was new) or mail past the hourly limits."""
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 status={"components": ["API"], "subscribe_per_address_per_hour": 2,
                         "subscribe_per_client_per_hour": 5})
    with helpdesk(desk, relay) as hd:
        asks = [("dan@reader.test" if i < 8 else f"reader{i}@reader.test") for i in range(16)]
        start = threading.Barrier(len(asks))
        answers: list[int] = []

        def ask(address: str) -> None:
            start.wait()
            status, _, _ = WebClient(hd.url).post("/status/subscribe", {"email": address},
                                                  {"Origin": hd.url})
            answers.append(status)

        threads = [threading.Thread(target=ask, args=(a,)) for a in asks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [200] * len(asks)
        received = relay.settle()
        confirmations = [r for r in received if "Confirm your subscription" in
                         str(r.message["Subject"])]
        assert len([r for r in confirmations if "dan@reader.test" in r.rcpt_tos]) <= 2
        assert len(confirmations) <= 5


def test_every_new_page_forbids_scripts_framing_and_sniffing(
    desks: Callable[..., Desk], relay: Relay,
) -> None:
    with helpdesk(_desk(desks, relay), relay) as hd:
        send(hd.smtp_port, request("Invoices are wrong", "The totals are doubled."))
        wait_until_sent(hd.desk.engine)
        clients = _clients(hd)
        pages = [("visitor", "/status"), ("visitor", "/status/subscribe"),
                 ("visitor", "/status/confirm/" + "A" * 43),
                 ("visitor", f"/status/subscription/1-{'0' * 32}"),
                 (ALICE, "/desk?q=totals"), (ALICE, "/desk/tickets/1"),
                 (OLIVE, "/ops/outbox"), (OLIVE, "/ops/pages"), (OLIVE, "/ops/accounts?q=a"),
                 (OLIVE, "/ops/mail")]
        for who, path in pages:
            status, headers, _ = clients[who].get(path)
            assert status in (200, 404, 410), (who, path, status)
            policy = headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "script-src" not in policy, path
            assert "frame-ancestors 'none'" in policy and "form-action 'self'" in policy, path
            assert headers["X-Frame-Options"] == "DENY", path
            assert headers["X-Content-Type-Options"] == "nosniff", path
