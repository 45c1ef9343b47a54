"""Help Desk page times: My requests and a ticket page, with 1,000 tickets in the database.

    .venv/bin/python bench/web.py [--tickets 1000] [--requests 300] [--database URL]

Fills a fresh database (SQLite in a temporary folder, or --database URL, which must be
empty) with tickets through the one ingest path: the customer asks for every one, a
colleague is copied on half, and the ticket measured has a thread of ten messages.
Then starts `mailgate serve`, signs in over HTTP as the customer, and prints p50/p99
of GET /requests and GET /requests/N over one keep-alive connection, once serve
has sent the mail the filling queued (the sign-in page, with no database work, for scale).
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import http.client
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from email.message import EmailMessage
from pathlib import Path

from ingest import free_port, wait_listening

from ticketing.ingest import ingest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MAILGATE = [sys.executable, "-m", "mailgate.cli"]
CUSTOMER = "customer@bench.test"
PASSWORD = "bench password 1234"


def mail(i: int, subject: str, in_reply_to: str = "") -> bytes:
    message = EmailMessage()
    message["From"] = f"Bench Customer <{CUSTOMER}>"
    message["To"] = "support@example.com"
    if i % 2:
        message["Cc"] = "colleague@bench.test"
    message["Subject"] = subject
    message["Message-ID"] = email.utils.make_msgid(idstring=str(i), domain="bench.test")
    message["Date"] = email.utils.formatdate()
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    message.set_content(f"Request {i}.\n" + "Something is not working as it should.\n" * 20)
    return message.as_bytes(policy=email.policy.SMTP)


def fill(config: Path, tickets: int) -> int:
    """Tickets through ingest, in this process; returns the number of the one with a thread."""
    from ticketing.accounts import add_account, hash_password, set_password
    from ticketing.db import transaction
    from ticketing.desk import Desk
    from ticketing.inbound import Inbound
    from ticketing.settings import load_settings

    desk = Desk.create(load_settings(config))
    with transaction(desk.engine) as session:
        account = add_account(session, CUSTOMER, "Bench Customer", desk.clock.now())
        set_password(session, account, hash_password(PASSWORD))
    started = time.perf_counter()
    first = ""
    for i in range(tickets):
        raw = mail(i, f"[S{i % 4}] Request number {i}")
        ingest(desk, Inbound(raw, "pipe", CUSTOMER, ("support@example.com",)))
        if i == tickets // 2:
            first = email.message_from_bytes(raw)["Message-ID"]
    for j in range(9):
        ingest(desk, Inbound(mail(tickets + j, f"Re: Request number {tickets // 2}", first),
                            "pipe", CUSTOMER, ("support@example.com",)))
    print(f"filled {tickets} tickets in {time.perf_counter() - started:.1f} s")
    desk.engine.dispose()
    return tickets // 2 + 1


def drained(config: Path) -> None:
    """Wait until serve has sent the confirmations the filling queued, so they do not
    compete with the pages measured."""
    from sqlalchemy import func
    from sqlmodel import select

    from ticketing.db import make_engine, transaction
    from ticketing.models import Outbox
    from ticketing.settings import load_settings

    engine = make_engine(load_settings(config).database)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with transaction(engine) as session:
            pending = session.exec(select(func.count()).select_from(Outbox)
                                   .where(Outbox.status == "pending")).one()
        if not pending:
            break
        time.sleep(0.5)
    engine.dispose()


def sign_in(connection: http.client.HTTPConnection, base: str, address: str = CUSTOMER,
            password: str = PASSWORD, then: str = "/requests") -> str:
    """Signs in with a password as a browser does; the cookies to send from then on."""
    connection.request("GET", "/sign-in")
    response = connection.getresponse()
    body = response.read()
    cookie = response.getheader("set-cookie", "").split(";")[0]
    token = re.search(rb'name="csrf" value="([0-9a-f]+)"', body)
    assert token, body[:300]
    form = urllib.parse.urlencode({"csrf": token.group(1).decode(), "email": address,
                                   "password": password, "next": then})
    connection.request("POST", "/sign-in", form, {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie, "Origin": base})
    response = connection.getresponse()
    response.read()
    assert response.status == 303, response.status
    session = response.getheader("set-cookie", "").split(";")[0]
    return f"{cookie}; {session}"


def timed(connection: http.client.HTTPConnection, path: str, cookie: str, count: int,
          expect: bytes) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", path, headers={"Cookie": cookie})
        response = connection.getresponse()
        body = response.read()
        times.append((time.perf_counter() - started) * 1000)
        assert response.status == 200 and expect in body, (response.status, body[:200])
    return times


def report(name: str, times: list[float], floor: float | None = None, width: int = 28) -> None:
    """p50 and p99 of request times in ms; with `floor`, the p50 as a ratio of it."""
    ordered = sorted(times)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    if floor is None:
        print(f"{name:<{width}} p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
              f"({len(ordered)} requests)")
    else:
        print(f"{name:<{width}} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   x{p50 / floor:6.1f}   "
              f"({len(ordered)} requests)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--database", help="an empty database URL instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        web_port = free_port()
        config = Path(folder) / "mailgate.toml"
        config.write_text(
            f'[support]\naddress = "support@example.com"\nsecret = "bench"\n'
            f'[storage]\npath = "{Path(folder) / "data"}"\n'
            + (f'[database]\nurl = "{args.database}"\n' if args.database else "") +
            f'[smtp]\nport = {free_port()}\n[web]\nport = {web_port}\n'
            f'[limits]\nper_recipient_per_hour = 0\nper_ticket_recipient_per_hour = 0\n'
            f'overall_per_hour = 0\n'
        )
        subprocess.run([*MAILGATE, "--config", str(config), "init"], check=True,
                       capture_output=True, cwd=ROOT)
        number = fill(config, args.tickets)
        log = Path(folder) / "serve.log"
        with open(log, "wb") as errors, subprocess.Popen(
            [*MAILGATE, "--config", str(config), "serve"], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=errors,
        ) as serve:
            try:
                try:
                    wait_listening(serve)
                except RuntimeError:
                    sys.exit(f"serve did not start:\n{log.read_text()}")
                drained(config)
                base = f"http://127.0.0.1:{web_port}"
                connection = http.client.HTTPConnection("127.0.0.1", web_port, timeout=60)
                cookie = sign_in(connection, base)
                timed(connection, "/requests", cookie, 5, b"My requests")  # warm up
                report("sign-in page (no database)", timed(connection, "/sign-in", "",
                                                          args.requests, b"Sign in"))
                report("My requests (100 of them)", timed(connection, "/requests", cookie,
                                                         args.requests, b"Request number"))
                report(f"ticket page #{number}", timed(connection, f"/requests/{number}", cookie,
                                                      args.requests, b"Conversation"))
            finally:
                serve.terminate()
                serve.wait(30)


if __name__ == "__main__":
    main()
