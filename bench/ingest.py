"""Ingest throughput and latency over SMTP: mailgate serve beside the bare-SQLite floor.

    .venv/bin/python bench/ingest.py [--messages 2000] [--connections 4] [--offered 100]

Starts `mailgate serve` (SQLite, WAL, synchronous=FULL, or --database URL; each new
request's confirmation and the agents' notice sent by the same serve to a relay sink,
which offers PIPELINING as most relays do) and the floor server
(bench/floor_server.py) on loopback, sends the same small requests
to each over K smtplib connections, and prints, in one run: the floor's rate; mailgate's
accepted rate (mails/s to the last 250) and end-to-end rate (mails/s until every
confirmation and notice they caused has reached the relay), each also as a ratio of the
floor; p50/p99 time to the 250. A second pass offers a fixed rate (--offered mails/s) to
mailgate and reports the latency at that load.
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_request(i: int) -> bytes:
    message = EmailMessage()
    message["From"] = f"Customer {i % 50} <customer{i % 50}@bench.test>"
    message["To"] = "support@example.com"
    message["Cc"] = "colleague@bench.test"
    message["Subject"] = f"[S{i % 3 + 1}] Request number {i}"
    message["Message-ID"] = email.utils.make_msgid(idstring=str(i), domain="bench.test")
    message["Date"] = email.utils.formatdate()
    message.set_content(f"Request {i}.\n" + "Something is not working as it should.\n" * 20)
    return message.as_bytes(policy=email.policy.SMTP)


def wait_listening(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if b"listening" in line:
            return
    raise RuntimeError("server did not start")


def run_load(port: int, messages: list[bytes], connections: int,
             offered: float | None = None) -> tuple[float, list[float]]:
    """Send all messages over K connections; returns (elapsed seconds, latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def worker(k: int) -> None:
        mine = messages[k::connections]
        local: list[float] = []
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            for n, raw in enumerate(mine):
                if offered:
                    due = start + (n * connections + k) / offered
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                t0 = time.perf_counter()
                client.sendmail("customer@bench.test", ["support@example.com"], raw)
                local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies


def report(name: str, count: int, elapsed: float, latencies: list[float]) -> float:
    rate = count / elapsed
    q = statistics.quantiles(latencies, n=100)
    print(f"{name:<34} {rate:8.1f} mails/s   p50 {q[49] * 1000:6.1f} ms   "
          f"p99 {q[98] * 1000:6.1f} ms   ({count} mails, {elapsed:.1f} s)")
    return rate


# serve names its threads (their Python names, which the system shows too).
PARTS = {"MainThread": "event loop (SMTP)", "ingest": "parsing and files",
         "storing": "storing", "workers": "sending and paging"}


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each part of a process, by its threads' names, and
    of its living child processes ("children"), from /proc (Linux); empty elsewhere.
    Only living threads count: serve's pools keep theirs for as long as it runs."""
    tick = os.sysconf("SC_CLK_TCK")

    def own(stat: Path) -> float:
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick

    parts: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        part = PARTS.get("MainThread" if task.name == str(pid) else name.rpartition("_")[0],
                         "other")
        parts[part] = parts.get(part, 0.0) + own(task / "stat")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    parts["children"] = sum(own(Path(f"/proc/{child}/stat")) for child in children)
    return parts


def report_cpu(pid: int, before: dict[str, float], count: int) -> dict[str, float]:
    """CPU a mail in serve, and where: by its threads' work, in one process."""
    after = cpu_seconds(pid)
    spent = {part: (after[part] - before.get(part, 0.0)) / count for part in after}
    children = spent.pop("children", 0.0)
    listener = sum(spent.values())
    shown = ", ".join(f"{part} {spent[part] * 1000:.1f}"
                      for part in [*PARTS.values(), "other"] if spent.get(part, 0.0) >= 0.05e-3)
    print(f"{'  CPU a mail':<34} {listener * 1000:8.1f} ms in serve's process ({shown}), "
          f"{children * 1000:.1f} ms in its child processes")
    return after


def start_relay_sink(port: int) -> subprocess.Popen[bytes]:
    code = (
        "import asyncio,sys\n"
        "from aiosmtpd.smtp import SMTP\n"
        "class H:\n"
        "    async def handle_EHLO(self, s, session, env, host, responses):\n"
        "        session.host_name = host\n"
        "        return responses[:-1] + ['250-PIPELINING'] + responses[-1:]\n"
        "    async def handle_DATA(self, s, e, env): return '250 OK'\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        f"    srv = await loop.create_server(lambda: SMTP(H()), '127.0.0.1', {port})\n"
        "    print('listening', flush=True)\n"
        "    await srv.serve_forever()\n"
        "asyncio.run(main())\n"
    )
    process = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE)
    wait_listening(process)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--offered", type=float, default=100.0)
    parser.add_argument("--database", metavar="URL",
                        help="an empty database for mailgate (default: SQLite in a temp folder)")
    parser.add_argument("--profile", metavar="FILE",
                        help="run serve under py-spy and write its collapsed stacks here")
    args = parser.parse_args()
    messages = [make_request(i) for i in range(args.messages)]
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as folder:
        workdir = Path(folder)
        floor_port, serve_port, relay_port = free_port(), free_port(), free_port()
        relay = start_relay_sink(relay_port)
        processes = [relay]
        profiler: subprocess.Popen[bytes] | None = None
        try:
            floor = subprocess.Popen(
                [PYTHON, str(ROOT / "bench" / "floor_server.py"), str(floor_port),
                 str(workdir / "floor.sqlite3")], stdout=subprocess.PIPE)
            processes.append(floor)
            wait_listening(floor)
            elapsed, latencies = run_load(floor_port, messages, args.connections)
            floor_rate = report("floor (insert raw, commit per mail)", len(messages), elapsed,
                                latencies)
            floor.terminate()

            config = workdir / "mailgate.toml"
            config.write_text(
                f'[support]\naddress = "support@example.com"\nsecret = "bench"\n'
                f'[storage]\npath = "{workdir / "data"}"\n'
                + (f'[database]\nurl = "{args.database}"\n' if args.database else "") +
                f'[smtp]\nport = {serve_port}\nmax_connections_per_client = 0\n[web]\nenabled = false\n'
                f'[monitoring]\nport = {free_port()}\n'
                f'[outbound]\nrelay = "127.0.0.1:{relay_port}"\n'
                f'[agents]\naddresses = ["agent@example.com"]\n'
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
            if args.profile:
                # Attached to serve, not its parent: serve is the process stopped at the
                # end (py-spy then writes its file) and the one whose CPU is counted.
                # Without pausing serve at each sample; a thread waiting for the GIL
                # shows where it waits.
                # Its complaints are shown: attaching to a process not its child needs
                # root or CAP_SYS_PTRACE where kernel.yama.ptrace_scope is 1.
                profiler = subprocess.Popen(
                    ["py-spy", "record", "--pid", str(serve.pid), "--nonblocking",
                     "--format", "raw", "-r", "250", "-o", args.profile],
                    stdout=subprocess.DEVNULL)
            from sqlalchemy import text

            from ticketing.db import make_engine

            engine = make_engine(args.database or f"sqlite:///{workdir / 'data' / 'mailgate.sqlite3'}")

            def unsent() -> tuple[int, int]:
                with engine.connect() as db:
                    return (
                        db.execute(text("select count(*) from outbox where status != 'sent'"))
                        .scalar_one(),
                        db.execute(text("select count(*) from outbox")).scalar_one())

            started = time.perf_counter()
            cpu = cpu_seconds(serve.pid)
            elapsed, latencies = run_load(serve_port, messages, args.connections)
            rate = report("mailgate serve (full ingest)", len(messages), elapsed, latencies)
            # End to end: until every mail these requests caused has reached the relay.
            deadline = time.monotonic() + 600
            while (waiting := unsent())[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            drained = time.perf_counter() - started
            end_to_end = len(messages) / drained
            print(f"{'mailgate end to end (all mail out)':<34} {end_to_end:8.1f} mails/s   "
                  f"({waiting[1]} confirmations and notices at the relay in {drained:.1f} s, "
                  f"{waiting[0]} unsent)")
            cpu = report_cpu(serve.pid, cpu, len(messages))
            paced = [make_request(len(messages) + i) for i in range(int(args.offered * 10))]
            elapsed, latencies = run_load(serve_port, paced, args.connections, args.offered)
            report(f"mailgate at {args.offered:.0f} mails/s offered", len(paced), elapsed,
                   latencies)
            while unsent()[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            report_cpu(serve.pid, cpu, len(paced))
            engine.dispose()
            print(f"ratio to the floor: accepted {rate / floor_rate:.2f}, "
                  f"end to end {end_to_end / floor_rate:.2f}")
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
            if profiler is not None:  # it writes its file once serve has stopped
                try:
                    profiler.wait(60)
                except subprocess.TimeoutExpired:
                    profiler.kill()
                    print("py-spy did not finish writing its samples in 60 s")


if __name__ == "__main__":
    main()
