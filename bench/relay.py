"""Sending to a relay some way off: one command at a time against PIPELINING (RFC 2920).

    .venv/bin/python bench/relay.py [--mails 200] [--rtt-ms 20] [--copied 2]

Queues --mails confirmations (each to the requester and --copied people), then sends
them through the outbound worker's code over one kept relay connection to an aiosmtpd
relay behind a proxy on loopback that holds every piece of data --rtt-ms/2 each way (a
relay that far away), twice in the same run: once with the relay not offering
PIPELINING (each of MAIL, RCPT, DATA and the mail waits for its answer), once offering
it (MAIL, every RCPT and DATA in one write). Prints mails a second and milliseconds a
mail for each, and their ratio; with --rtt-ms 0 the relay is reached directly.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import free_port, make_request  # noqa: E402
from mailgate.outbound import send_due, transport_for  # noqa: E402
from ticketing.db import migrate  # noqa: E402
from ticketing.desk import Desk  # noqa: E402
from ticketing.inbound import Inbound  # noqa: E402
from ticketing.ingest import ingest  # noqa: E402
from ticketing.settings import settings_from_mapping  # noqa: E402


class Sink:
    def __init__(self) -> None:
        self.pipelining = False
        self.received = 0

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        return "250 OK"


class Distance:
    """A TCP proxy on loopback that holds each piece of data `delay` seconds each way,
    in order: the round trip of a relay that far away."""

    def __init__(self, upstream: int, delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while data := await reader.read(65536):
            loop.call_later(self.delay, writer.write, data)
        loop.call_later(self.delay, writer.close)


def queued_desk(folder: Path, relay_port: int, mails: int, copied: int) -> Desk:
    settings = settings_from_mapping({
        "support": {"address": "support@example.com", "secret": "bench"},
        "storage": {"path": str(folder / "data")},
        "outbound": {"relay": f"127.0.0.1:{relay_port}"},
        "limits": {"per_recipient_per_hour": 0, "per_ticket_recipient_per_hour": 0,
                   "overall_per_hour": 0},
    })
    desk = Desk.create(settings)
    migrate(desk.engine)
    for n in range(mails):
        raw = make_request(n)
        if copied != 1:  # make_request copies one colleague
            cc = ", ".join(f"colleague{k}@bench.test" for k in range(copied))
            raw = raw.replace(b"Cc: colleague@bench.test", f"Cc: {cc}".encode())
        ingest(desk, Inbound(raw, "smtp", f"customer{n}@bench.test", ("support@example.com",)))
    return desk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=200)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--copied", type=int, default=2)
    args = parser.parse_args()
    sink = Sink()
    relay_port = free_port()
    relay = Controller(sink, hostname="127.0.0.1", port=relay_port, decode_data=False)
    relay.start()
    port = Distance(relay_port, args.rtt_ms / 2000).port if args.rtt_ms else relay_port
    rates = {}
    try:
        for pipelining in (False, True):
            sink.pipelining, sink.received = pipelining, 0
            with tempfile.TemporaryDirectory(prefix="mailgate-relay-") as folder:
                desk = queued_desk(Path(folder), port, args.mails, args.copied)
                transport = transport_for(desk)
                started = time.perf_counter()
                sent = 0
                while count := send_due(desk, transport, "bench", 50, keep_open=True):
                    sent += count
                elapsed = time.perf_counter() - started
                transport.close()
                desk.engine.dispose()
            assert sent == sink.received == args.mails, (sent, sink.received)
            name = "PIPELINING" if pipelining else "one command at a time"
            rates[pipelining] = sent / elapsed
            print(f"{name:<24} {sent / elapsed:7.1f} mails/s  {elapsed / sent * 1000:6.1f} ms a "
                  f"mail  ({sent} mails, {1 + args.copied} recipients each, round trip "
                  f"{args.rtt_ms:g} ms)")
    finally:
        relay.stop()
    print(f"PIPELINING / one at a time: {rates[True] / rates[False]:.2f}")


if __name__ == "__main__":
    main()
