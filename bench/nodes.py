"""Two `mailgate serve` processes on one PostgreSQL database against one, under the same load.

    .venv/bin/python bench/nodes.py [--messages 600] [--connections 4]
        [--database postgresql://postgres@127.0.0.1:5432/test]

For one process, then for two (each on its own SMTP port and data folder, one database
and secret), on a fresh database each time: sends the same requests over K smtplib
connections (split between the processes), one in ten of them S0 so that it pages the
on-call webhook. Prints the accepted rate (mails to their 250 a second), the rate at
which every confirmation reached the relay and every page the webhook, the ratio of two
processes to one, and how many confirmations and pages went out more than once, or never.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import PYTHON, ROOT, free_port, make_request, run_load, wait_listening


class Sink:
    """The relay: counts each mail it gets by Message-ID."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        with self.lock:
            self.received[str(message.get("Message-ID", ""))] += 1
        return "250 OK"


class Pager:
    """The on-call webhook: counts each page it gets by its dedup key."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        pager = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                pager.received[f"{body.get('event_action')} {body.get('dedup_key')}"] += 1
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/page"


def request(i: int) -> bytes:
    raw = make_request(i)
    if i % 10 == 0:  # one in ten pages on-call
        raw = re.sub(rb"Subject: \[S\d\]", b"Subject: [S0]", raw, count=1)
    return raw


def settled(url: str, messages: int) -> tuple[int, int]:
    """Mails sent and pages delivered, or (-1, -1) while any still waits to go out."""
    engine = create_engine(url)
    try:
        with engine.connect() as db:
            waiting = db.execute(text(
                "select (select count(*) from outbox where status = 'pending')"
                " + (select count(*) from page where status = 'pending')")).scalar_one()
            sent = db.execute(text("select count(*) from outbox where status = 'sent'")).scalar_one()
            paged = db.execute(text("select count(*) from page where status = 'delivered'")).scalar_one()
            tickets = db.execute(text("select count(*) from ticket")).scalar_one()
    finally:
        engine.dispose()
    if waiting or tickets < messages:
        return -1, -1
    return int(sent), int(paged)


def scratch(admin_url: str) -> tuple[str, str]:
    name = f"mailgate_bench_{uuid.uuid4().hex[:8]}"
    url = make_url(admin_url).set(drivername="postgresql+psycopg")
    with create_engine(url, isolation_level="AUTOCOMMIT").connect() as db:
        db.execute(text(f'CREATE DATABASE "{name}"'))
    return name, url.set(database=name).render_as_string(hide_password=False)


def drop(admin_url: str, name: str) -> None:
    url = make_url(admin_url).set(drivername="postgresql+psycopg")
    with create_engine(url, isolation_level="AUTOCOMMIT").connect() as db:
        db.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(admin_url: str, processes: int, messages: list[bytes], connections: int,
        relay: Sink, relay_port: int, pager: Pager, workdir: Path) -> dict[str, float]:
    relay.received.clear()
    pager.received.clear()
    name, url = scratch(admin_url)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started: list[subprocess.Popen[bytes]] = []
    ports = [free_port() for _ in range(processes)]
    try:
        for n, port in enumerate(ports):
            config = workdir / f"{name}-{n}.toml"
            config.write_text(
                f'[support]\naddress = "support@example.com"\nsecret = "bench"\n'
                f'[database]\nurl = "{url}"\n[storage]\npath = "{workdir / name / str(n)}"\n'
                f'blobs = "database"\n'
                f'[smtp]\nport = {port}\nmax_connections_per_client = 0\n'
                f'[web]\nenabled = false\n[monitoring]\nenabled = false\n'
                f'[outbound]\nrelay = "127.0.0.1:{relay_port}"\n'
                f'[limits]\nper_recipient_per_hour = 0\nper_ticket_recipient_per_hour = 0\n'
                f'overall_per_hour = 0\n'
                f'[oncall]\nmax_pages_per_sender = 0\nmax_pages_per_domain = 0\n'
                f'[oncall.webhook]\nurl = "{pager.url}"\nsecret = "bench"\n'
            )
            if n == 0:
                subprocess.run([PYTHON, "-m", "mailgate.cli", "--config", str(config), "init"],
                               check=True, env=env, capture_output=True)
            log = open(workdir / f"{name}-{n}.log", "wb")
            serve = subprocess.Popen([PYTHON, "-m", "mailgate.cli", "--config", str(config),
                                      "serve"], stdout=subprocess.PIPE, stderr=log, env=env)
            started.append(serve)
            wait_listening(serve)
        start = time.perf_counter()
        threads = [threading.Thread(target=run_load, args=(
            port, messages[n::processes], max(1, connections // processes)))
            for n, port in enumerate(ports)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted = time.perf_counter() - start
        deadline = time.monotonic() + 300
        sent, paged = settled(url, len(messages))
        while sent < 0 or len(relay.received) < sent or len(pager.received) < paged:
            if time.monotonic() > deadline:
                raise RuntimeError("mail or pages still waiting to go out after 300 s")
            time.sleep(0.1)
            sent, paged = settled(url, len(messages))
        delivered = time.perf_counter() - start
        time.sleep(3)  # a second copy, if any, would come within the lease
    finally:
        for serve in started:
            serve.terminate()
            serve.wait(30)
        drop(admin_url, name)
    return {
        "accepted": len(messages) / accepted,
        "delivered": len(messages) / delivered,
        "mails": len(relay.received),
        "mails_due": sent,
        "mail_duplicates": sum(n - 1 for n in relay.received.values()),
        "pages": len(pager.received),
        "pages_due": paged,
        "page_duplicates": sum(n - 1 for n in pager.received.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--database", metavar="URL",
                        default=os.environ.get("MAILGATE_TEST_POSTGRES",
                                               "postgresql://postgres@127.0.0.1:5432/test"),
                        help="a PostgreSQL server (any database on it) where scratch databases "
                             "may be made")
    args = parser.parse_args()
    messages = [request(i) for i in range(args.messages)]
    relay, relay_port = Sink(), free_port()
    controller = Controller(relay, hostname="127.0.0.1", port=relay_port)
    controller.start()
    pager = Pager()
    try:
        with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as folder:
            one = run(args.database, 1, messages, args.connections, relay, relay_port, pager,
                      Path(folder))
            two = run(args.database, 2, messages, args.connections, relay, relay_port, pager,
                      Path(folder))
    finally:
        controller.stop()
        pager.server.shutdown()
    for name, figures in (("one serve", one), ("two serve processes", two)):
        print(f"{name:20} {figures['accepted']:6.1f} mails/s accepted, "
              f"{figures['delivered']:6.1f} mails/s with every confirmation and page out; "
              f"mails {figures['mails']:.0f} of {figures['mails_due']:.0f} "
              f"({figures['mail_duplicates']:.0f} duplicates), pages {figures['pages']:.0f} of "
              f"{figures['pages_due']:.0f} ({figures['page_duplicates']:.0f} duplicates)")
    print(f"two processes / one: {two['accepted'] / one['accepted']:.2f} accepted, "
          f"{two['delivered'] / one['delivered']:.2f} delivered")


if __name__ == "__main__":
    main()
