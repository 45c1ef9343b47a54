"""Time to queue one incident update for many status subscribers, beside a bare bulk insert.

    .venv/bin/python bench/status.py [--subscribers 10000] [--runs 3] [--database URL]

Makes a database (a new SQLite file, or --database URL: an empty PostgreSQL database)
with that many confirmed subscribers, then, each run, posts one update to an incident
and queues its mail to every subscriber, in one committed transaction, as
`mailgate incidents update` does. The floor, in the same run: one executemany insert of
as many outbox rows of the same size, built beforehand, committed. Prints the best run
of each (wall clock, and CPU in this process) and their ratios. The rows of each run
are deleted before the next.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import delete, insert  # noqa: E402
from sqlmodel import select  # noqa: E402

from ticketing.db import migrate, transaction  # noqa: E402
from ticketing.desk import Desk  # noqa: E402
from ticketing.incident_mail import publish  # noqa: E402
from ticketing.incidents import open_incident, post_update  # noqa: E402
from ticketing.models import AutoReplyLog, Incident, Outbox, StatusSubscriber  # noqa: E402
from ticketing.settings import settings_from_mapping  # noqa: E402


def make_desk(folder: Path, database: str) -> Desk:
    settings = settings_from_mapping({
        "support": {"address": "support@example.com", "name": "Example Support",
                    "secret": "bench-secret-" + "x" * 20},
        "database": {"url": database or f"sqlite:///{folder / 'bench.sqlite3'}"},
        "storage": {"path": str(folder / "data")},
        "web": {"base_url": "https://support.example.com"},
        "status": {"components": ["Dashboard", "API"]},
    })
    desk = Desk.create(settings)
    migrate(desk.engine)
    return desk


def add_subscribers(desk: Desk, count: int) -> None:
    now = datetime.now(UTC)
    with transaction(desk.engine) as session:
        session.execute(insert(StatusSubscriber), [
            {"address": f"reader{n}@subscribers.test", "key": secrets.token_hex(16),
             "created_at": now, "confirmed_at": now, "confirm_hash": "",
             "confirm_expires_at": None} for n in range(count)])


def clear(desk: Desk) -> None:
    with transaction(desk.engine) as session:
        session.execute(delete(Outbox))
        session.execute(delete(AutoReplyLog))


def queue_update(desk: Desk, number: int) -> tuple[float, float, int]:
    """Seconds to post one update and queue its mails, committed (wall clock, and this
    process's CPU); and the mails queued."""
    started, cpu = time.perf_counter(), time.process_time()
    now = datetime.now(UTC)
    with transaction(desk.engine) as session:
        incident = session.get(Incident, number)
        assert incident is not None
        posted = post_update(session, incident, state=None, now=now, author="ops",
                             message="A bad cache node; we are replacing it.")
        told = publish(session, desk, incident, posted, now)
    return time.perf_counter() - started, time.process_time() - cpu, told.subscribers


def bare_insert(desk: Desk, count: int, raw_size: int) -> tuple[float, float]:
    """Seconds for one executemany insert of `count` prebuilt outbox rows, committed
    (wall clock, and this process's CPU)."""
    now = datetime.now(UTC)
    rows = [{"ticket_id": None, "kind": "status_update", "message_id": f"m{n}@example.com",
             "mail_from": "support@example.com", "recipients": f'["reader{n}@subscribers.test"]',
             "raw": secrets.token_bytes(raw_size), "files": "[]", "status": "pending",
             "attempts": 0, "next_attempt_at": now, "claimed_by": "", "claimed_until": None,
             "last_error": "", "created_at": now, "sent_at": None} for n in range(count)]
    started, cpu = time.perf_counter(), time.process_time()
    with desk.engine.begin() as connection:
        connection.execute(insert(Outbox), rows)
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", default="", help="an empty PostgreSQL database's URL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        desk = make_desk(Path(folder), args.database)
        add_subscribers(desk, args.subscribers)
        with transaction(desk.engine) as session:
            incident, _ = open_incident(
                session, "Dashboards fail to load", components=["Dashboard"],
                state="investigating", message="Looking into it.", author="ops",
                now=datetime.now(UTC), known=desk.settings.status.components)
            number = incident.id
        assert number is not None
        queued: list[tuple[float, float]] = []
        floor: list[tuple[float, float]] = []
        raw_size = 0
        for _ in range(args.runs):
            seconds, cpu, mailed = queue_update(desk, number)
            assert mailed == args.subscribers, mailed
            queued.append((seconds, cpu))
            with transaction(desk.engine) as session:
                first = session.exec(select(Outbox).limit(1)).first()
                raw_size = len(first.raw) if first is not None else 2000
            clear(desk)
            floor.append(bare_insert(desk, args.subscribers, raw_size))
            clear(desk)
        desk.engine.dispose()
    backend = "postgresql" if args.database.startswith("postgresql") else "sqlite"
    (best, best_cpu), (base, base_cpu) = min(queued), min(floor)
    print(f"{backend}: one update queued for {args.subscribers} subscribers: {best:.2f} s "
          f"({best / args.subscribers * 1e6:.0f} us a subscriber; {best_cpu:.2f} s CPU in "
          f"this process), best of {args.runs}")
    print(f"{backend}: floor, one executemany insert of {args.subscribers} outbox rows of "
          f"{raw_size} bytes: {base:.2f} s ({base_cpu:.2f} s CPU in this process)")
    print(f"{backend}: ratio {best / base:.1f}x the floor ({best_cpu / base_cpu:.1f}x in CPU)")


if __name__ == "__main__":
    main()
