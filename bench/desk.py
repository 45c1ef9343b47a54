"""Agents' desk page times with 10,000 tickets and 100,000 mails: the Queue, a ticket, a search.

    .venv/bin/python bench/desk.py [--tickets 10000] [--messages 100000] [--requests 200]
                                   [--database URL]

Fills a fresh database (SQLite in a temporary folder, or --database URL, which must be
empty) by bulk inserts after `mailgate init`, so the search indexes are kept by the
same triggers and indexes that keep them for ingest. Then starts `mailgate serve`,
signs in over HTTP as an agent and prints p50/p99, over one keep-alive connection, of
the Queue, a ticket page with ten mails, a search for a rare word and one for a common
word (over every status), beside the sign-in page of the same server (a rendered page
with no database work) and the ratio of each p50 to that page's.
"""

from __future__ import annotations

import argparse
import http.client
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ingest import free_port, wait_listening
from web import report, sign_in, timed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MAILGATE = [sys.executable, "-m", "mailgate.cli"]
AGENT = "agent@example.com"
PASSWORD = "bench password 1234"
WIDTH = 36  # the longest name printed
RARE = "zeppelin"  # in about one mail in 2,000
COMMON = "export"  # in about one mail in 10
BATCH = 5000


def vocabulary(rng: random.Random) -> list[str]:
    """Made-up words that read like a support thread's, so the index has a realistic spread."""
    syllables = ["ka", "lo", "mi", "ter", "son", "pra", "vel", "du", "rin", "ex", "po", "ta"]
    made = {"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(4000)}
    plain = ("the invoice page login error after update customer report slow file upload "
             "password account totals billing sync mobile app crash timeout server data").split()
    return sorted(made) + plain * 40


def text(rng: random.Random, words: list[str]) -> str:
    chosen = rng.choices(words, k=rng.randint(30, 90))
    if rng.random() < 0.1:
        chosen.insert(rng.randrange(len(chosen)), "exports")
    if rng.random() < 0.0005:
        chosen.insert(rng.randrange(len(chosen)), RARE)
    return " ".join(chosen).capitalize() + "."


def _insert(connection: Any, name: str, rows: list[dict[str, Any]]) -> None:
    from sqlalchemy import insert
    from sqlmodel import SQLModel

    table = SQLModel.metadata.tables[name]
    if rows[0].get("id") is None:  # numbered by the database
        rows = [{k: v for k, v in row.items() if k != "id"} for row in rows]
    for start in range(0, len(rows), BATCH):
        connection.execute(insert(table), rows[start:start + BATCH])


def fill(url: str, tickets: int, messages: int) -> int:
    """Tickets, their requesters and mails by bulk insert; returns a ticket with ten mails."""
    from sqlalchemy import text as sql

    from ticketing.accounts import hash_password
    from ticketing.db import make_engine
    from ticketing.models import Account, Message, Participant, Ticket

    rng = random.Random(13)
    words = vocabulary(rng)
    now = datetime.now(UTC)
    started = time.perf_counter()
    ticket_rows, people, mails = [], [], []
    # Every column's default, taken once from the models; each row is a plain dict.
    blank = {
        "ticket": Ticket(subject="", requester="", created_at=now, updated_at=now,
                         status_changed_at=now).model_dump(),
        "participant": Participant(ticket_id=0, address="", role="", created_at=now).model_dump(),
        "message": Message(dedupe_key="", kind="", created_at=now).model_dump(),
    }
    for number in range(1, tickets + 1):
        opened = now - timedelta(minutes=rng.randint(10, 90 * 24 * 60))
        requester = f"customer{number % 3000}@client{number % 400}.test"
        status = rng.choices(["open", "pending", "solved", "closed"], [20, 10, 30, 40])[0]
        severity = rng.choices([0, 1, 2, 3], [2, 10, 40, 48])[0]
        subject = " ".join(rng.choices(words, k=rng.randint(3, 8))).capitalize()
        ticket_rows.append(blank["ticket"] | dict(
            id=number, subject=subject, severity=severity, status=status, requester=requester,
            assignee=AGENT if rng.random() < 0.5 else None, created_at=opened,
            updated_at=opened, status_changed_at=opened))
        people.append(blank["participant"] | dict(ticket_id=number, address=requester,
                                                  role="requester", created_at=opened))
    for i in range(messages):
        number = i % tickets + 1
        ticket = ticket_rows[number - 1]
        first = i < tickets
        by_agent = not first and i % 2 == 0
        mails.append(blank["message"] | dict(
            id=i + 1, ticket_id=number, dedupe_key=f"<{i}@bench.test>",
            message_id=f"<{i}@bench.test>", kind="request" if first else "reply",
            route="smtp", from_address=AGENT if by_agent else ticket["requester"],
            subject=ticket["subject"], text=text(rng, words),
            created_at=ticket["created_at"] + timedelta(minutes=i // tickets * 30),
        ))
        if not by_agent:
            ticket["customer_wrote_at"] = mails[-1]["created_at"]
    engine = make_engine(url)
    with engine.begin() as connection:
        _insert(connection, "account", [Account(
            address=AGENT, name="Bench Agent", registered=True, created_at=now,
            password_hash=hash_password(PASSWORD)).model_dump()])
        _insert(connection, "ticket", ticket_rows)
        _insert(connection, "participant", people)
        _insert(connection, "message", mails)
        if engine.dialect.name == "postgresql":
            for table in ("ticket", "participant", "message"):
                connection.execute(sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                       f"(SELECT max(id) FROM {table}))"))
            # What autovacuum would have done by now on a desk that grew to this size.
            connection.execute(sql("ANALYZE"))
    engine.dispose()
    print(f"filled {tickets} tickets and {messages} mails in "
          f"{time.perf_counter() - started:.1f} s")
    return tickets // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database", help="an empty database URL instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        web_port = free_port()
        url = args.database or f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        config = Path(folder) / "mailgate.toml"
        config.write_text(
            f'[support]\naddress = "support@example.com"\nsecret = "bench"\n'
            f'[storage]\npath = "{Path(folder) / "data"}"\n[database]\nurl = "{url}"\n'
            f'[agents]\naddresses = ["{AGENT}"]\n'
            f'[smtp]\nport = {free_port()}\n[web]\nport = {web_port}\n'
            f'[monitoring]\nport = {free_port()}\n'
        )
        subprocess.run([*MAILGATE, "--config", str(config), "init"], check=True,
                       capture_output=True, cwd=ROOT)
        number = fill(url, args.tickets, args.messages)
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
                connection = http.client.HTTPConnection("127.0.0.1", web_port, timeout=120)
                cookie = sign_in(connection, f"http://127.0.0.1:{web_port}", AGENT, PASSWORD, "/desk")
                n = args.requests
                timed(connection, "/desk", cookie, 3, b"Queue")  # warm up
                floor = timed(connection, "/sign-in", "", n, b"Sign in")
                base = statistics.median(floor)
                report("sign-in page (no database)", floor, base, WIDTH)
                report("Queue (open and pending, 200)", timed(
                    connection, "/desk", cookie, n, b"tickets/"), base, WIDTH)
                report(f"ticket page #{number} (10 mails)", timed(
                    connection, f"/desk/tickets/{number}", cookie, n, b"History"), base, WIDTH)
                report(f"search '{RARE}' (rare, all statuses)", timed(
                    connection, f"/desk?status=all&q={RARE}", cookie, n, b"tickets/"), base, WIDTH)
                report(f"search '{COMMON}' (1 mail in 10)", timed(
                    connection, f"/desk?status=all&q={COMMON}", cookie, n, b"tickets/"), base, WIDTH)
            finally:
                serve.terminate()
                serve.wait(30)


if __name__ == "__main__":
    main()
