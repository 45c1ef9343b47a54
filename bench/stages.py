"""Where a new request's time goes, stage by stage, in one process (no SMTP in front).

    .venv/bin/python bench/stages.py [--mails 300] [--batch 8] [--profile]

Runs the stages `serve` runs for each small new request (the bench/ingest.py mail, with
an agent configured, so a confirmation and an agents' notice are queued) on SQLite with
the default settings, and prints milliseconds a mail for each: prepare (parse, screen),
writing the raw mail to the data folder (with its fsyncs), the ticket's own statements in
its savepoint (the ORM work: message, ticket, participants, confirmation, notice), the
commit (one per --batch mails), and sending the queued mail to a relay sink on loopback
(claim, SMTP, record), and the CPU time of the statements and of all stages.
--profile adds the functions that take most of the ORM stage.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import free_port, make_request  # noqa: E402
from mailgate.outbound import send_due, transport_for  # noqa: E402
from ticketing.blobs import FolderBlobs  # noqa: E402
from ticketing.db import migrate, transaction  # noqa: E402
from ticketing.desk import Desk  # noqa: E402
from ticketing.groupcommit import fresh_view  # noqa: E402
from ticketing.inbound import Inbound  # noqa: E402
from ticketing.ingest import Prepared, prepare, record  # noqa: E402
from ticketing.settings import settings_from_mapping  # noqa: E402


class Sink:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    relay_port = free_port()
    relay = Controller(Sink(), hostname="127.0.0.1", port=relay_port, decode_data=False)
    relay.start()
    folder = Path(tempfile.mkdtemp(prefix="mailgate-stages-"))
    settings = settings_from_mapping({
        "support": {"address": "support@example.com", "secret": "bench"},
        "storage": {"path": str(folder / "data")},
        "agents": {"addresses": ["agent@example.com"]},
        "outbound": {"relay": f"127.0.0.1:{relay_port}"},
        "limits": {"per_recipient_per_hour": 0, "per_ticket_recipient_per_hour": 0,
                   "overall_per_hour": 0},
    })
    desk = Desk.create(settings)
    migrate(desk.engine)
    inbound = [Inbound(make_request(i), "smtp", "customer@bench.test", ("support@example.com",))
               for i in range(args.mails + 20)]
    times = {"prepare": 0.0, "files": 0.0, "statements": 0.0, "commit": 0.0, "send": 0.0}
    cpu = {"statements": 0.0, "total": 0.0}  # this process's CPU time (the relay sink too)
    profile = cProfile.Profile()
    sent = 0
    for start in range(0, len(inbound), args.batch):
        warm = start < 20
        c0 = time.process_time()
        t0 = time.perf_counter()
        prepared = [prepare(desk, i) for i in inbound[start:start + args.batch]]
        t1 = time.perf_counter()
        assert isinstance(desk.blobs, FolderBlobs)
        for p in prepared:
            assert isinstance(p, Prepared)
            desk.blobs.put(None, p.raw_sha256, p.inbound.raw)
        t2 = time.perf_counter()
        statements = statements_cpu = 0.0
        with transaction(desk.engine) as session:
            for p in prepared:
                assert isinstance(p, Prepared)
                fresh_view(session)
                t = time.perf_counter()
                c = time.process_time()
                if args.profile and not warm:
                    profile.enable()
                with session.begin_nested():
                    record(session, desk, p)
                profile.disable()
                statements += time.perf_counter() - t
                statements_cpu += time.process_time() - c
            t3 = time.perf_counter()
        t4 = time.perf_counter()
        transport = transport_for(desk)
        while count := send_due(desk, transport, "bench", 50, keep_open=True):
            sent += count
        transport.close()
        t5 = time.perf_counter()
        c5 = time.process_time()
        if not warm:
            times["prepare"] += t1 - t0
            times["files"] += t2 - t1
            times["statements"] += statements
            times["commit"] += t4 - t3
            times["send"] += t5 - t4
            cpu["statements"] += statements_cpu
            cpu["total"] += c5 - c0
    relay.stop()
    counted = len(inbound) - 20
    total = sum(times.values())
    print(f"{counted} new requests, {sent} mails sent, batches of {args.batch}; ms a request:")
    for stage, seconds in times.items():
        print(f"  {stage:<11} {seconds / counted * 1000:7.2f} ms  {seconds / total:5.0%}")
    print(f"  {'total':<11} {total / counted * 1000:7.2f} ms  ({counted / total:.0f} requests/s "
          "on one core, SMTP in front not counted)")
    print(f"  CPU: statements {cpu['statements'] / counted * 1000:.2f} ms, all stages "
          f"{cpu['total'] / counted * 1000:.2f} ms a request (steadier than wall time on a "
          "loaded machine)")
    if args.profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
