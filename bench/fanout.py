"""An agent's answer with one large file to many readers: what it costs the database and serve.

    .venv/bin/python bench/fanout.py [--size 9000000] [--readers 20] [--database URL]

Starts `mailgate serve` (SQLite with the folder store, or --database URL: an empty
PostgreSQL database, files in the database) with a relay sink on loopback, opens a
ticket whose requester copied readers-1 people, then sends an agent's answer carrying
one file of --size random bytes. Once every reader's copy has gone to the relay it
prints how much the stored data grew (the PostgreSQL database's size, or the SQLite
files and the data folder) and serve's peak resident memory (VmHWM), before and after.
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import os
import smtplib
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import free_port, start_relay_sink, wait_listening  # noqa: E402

PYTHON = sys.executable
AGENT = "alice@example.com"


def mail(sender: str, subject: str, text: str, cc: tuple[str, ...] = (),
         attachment: bytes | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "support@example.com"
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Message-ID"] = email.utils.make_msgid(domain="bench.test")
    message["Date"] = email.utils.formatdate()
    message.set_content(text)
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="zip",
                               filename="export.zip")
    return message.as_bytes(policy=email.policy.SMTP)


def stored_bytes(database: str, folder: Path) -> int:
    if database.startswith("postgresql"):
        from sqlalchemy import text

        from ticketing.db import make_engine

        engine = make_engine(database)
        with engine.connect() as connection:
            size = int(connection.execute(
                text("SELECT pg_database_size(current_database())")).scalar_one())
        engine.dispose()
        return size
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def sent(database: str) -> int:
    from sqlalchemy import text

    from ticketing.db import make_engine

    engine = make_engine(database)
    with engine.connect() as connection:
        count = int(connection.execute(
            text("SELECT count(*) FROM outbox WHERE status = 'sent'")).scalar_one())
    engine.dispose()
    return count


def wait_sent(database: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sent(database) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {sent(database)} of {count} mails sent in {timeout:.0f} s")
        time.sleep(0.5)


def peak_memory(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=9_000_000, help="the file's bytes")
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--database", metavar="URL",
                        help="an empty database for mailgate (default: SQLite in a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as folder:
        workdir = Path(folder)
        data = workdir / "data"
        database = args.database or f"sqlite:///{data / 'mailgate.sqlite3'}"
        serve_port, relay_port = free_port(), free_port()
        relay = start_relay_sink(relay_port)
        processes = [relay]
        try:
            config = workdir / "mailgate.toml"
            config.write_text(
                f'[support]\naddress = "support@example.com"\nsecret = "bench"\n'
                f'[storage]\npath = "{data}"\n'
                + (f'[database]\nurl = "{args.database}"\n' if args.database else "") +
                f'[smtp]\nport = {serve_port}\n[web]\nenabled = false\n'
                f'[outbound]\nrelay = "127.0.0.1:{relay_port}"\n'
                f'[agents]\naddresses = ["{AGENT}"]\n'
                f'[limits]\nper_recipient_per_hour = 0\nper_ticket_recipient_per_hour = 0\n'
                f'overall_per_hour = 0\n'
            )
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            subprocess.run([PYTHON, "-m", "mailgate.cli", "--config", str(config), "init"],
                           check=True, env=env, capture_output=True)
            log = open(workdir / "serve.log", "wb")
            serve = subprocess.Popen(
                [PYTHON, "-m", "mailgate.cli", "--config", str(config), "serve"],
                stdout=subprocess.PIPE, stderr=log, env=env)
            processes.append(serve)
            wait_listening(serve)
            readers = tuple(f"reader{n}@bench.test" for n in range(1, args.readers))
            with smtplib.SMTP("127.0.0.1", serve_port, timeout=300) as client:
                client.sendmail("carol@bench.test", ["support@example.com"], mail(
                    "carol@bench.test", "[S2] Exports fail", "Each export fails.", readers))
            wait_sent(database, 2, 120)  # the confirmation and the agent's notice
            before = stored_bytes(database, data)
            peak_before = peak_memory(serve.pid)
            answer = mail(AGENT, "Re: [#1] Exports fail", "The fixed export is attached.",
                          attachment=os.urandom(args.size))
            started = time.monotonic()
            with smtplib.SMTP("127.0.0.1", serve_port, timeout=300) as client:
                client.sendmail(AGENT, ["support@example.com"], answer)
            wait_sent(database, 2 + args.readers, 1800)
            elapsed = time.monotonic() - started
            grown = stored_bytes(database, data) - before
            peak_after = peak_memory(serve.pid)
            mib = 2**20
            print(f"store: {'database' if args.database else 'folder (SQLite)'}")
            print(f"answer: {len(answer) / mib:.1f} MiB raw, a {args.size / mib:.1f} MiB file, "
                  f"{args.readers} readers, all sent in {elapsed:.1f} s")
            print(f"stored data grew by {grown / mib:.1f} MiB "
                  f"({grown / (len(answer) + args.size):.2f} x the raw mail and the file)")
            print(f"serve peak memory: {peak_before / mib:.0f} MiB before the answer, "
                  f"{peak_after / mib:.0f} MiB after")
        finally:
            for process in processes:
                process.terminate()
                process.wait(20)


if __name__ == "__main__":
    main()
