"""Peak memory of `mailgate serve` taking mails with a 10 MiB attachment.

    .venv/bin/python bench/memory.py [--mails 50] [--attachment-mib 10]

Starts `serve` (SQLite defaults, confirmations to a relay sink), reads its peak resident
size (VmHWM in /proc/PID/status) once it listens, sends one mail with the attachment,
reads it again, then sends `--mails` more such mails one after another and reads it a
third time. Prints the three figures and the growth of each step in MiB, and the CPU
time serve spent a mail (user and system, from /proc/PID/stat).
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
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import PYTHON, ROOT, free_port, start_relay_sink, wait_listening

MIB = 1024 * 1024


def peak_rss(pid: int) -> float:
    """VmHWM, the peak resident set size of the process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_mail(i: int, attachment: bytes) -> bytes:
    message = EmailMessage()
    message["From"] = f"Customer {i} <customer{i}@bench.test>"
    message["To"] = "support@example.com"
    message["Subject"] = f"Logs for request {i}"
    message["Message-ID"] = email.utils.make_msgid(idstring=str(i), domain="bench.test")
    message["Date"] = email.utils.formatdate()
    message.set_content(f"Request {i}: the logs are attached.\n")
    message.add_attachment(attachment, maintype="application", subtype="octet-stream",
                           filename=f"logs-{i}.bin")
    return message.as_bytes(policy=email.policy.SMTP)


def send(port: int, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
        client.sendmail("customer@bench.test", ["support@example.com"], raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=50)
    parser.add_argument("--attachment-mib", type=float, default=10.0)
    args = parser.parse_args()
    attachment = os.urandom(int(args.attachment_mib * MIB))
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as folder:
        workdir = Path(folder)
        serve_port, relay_port = free_port(), free_port()
        relay = start_relay_sink(relay_port)
        serve = None
        try:
            config = workdir / "mailgate.toml"
            config.write_text(
                f'[support]\naddress = "support@example.com"\nsecret = "bench"\n'
                f'[storage]\npath = "{workdir / "data"}"\n'
                f'[smtp]\nport = {serve_port}\n[web]\nenabled = false\n[monitoring]\nenabled = false\n'
                f'[outbound]\nrelay = "127.0.0.1:{relay_port}"\n'
            )
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            subprocess.run([PYTHON, "-m", "mailgate.cli", "--config", str(config), "init"],
                           check=True, env=env, capture_output=True)
            log = open(workdir / "serve.log", "wb")
            serve = subprocess.Popen([PYTHON, "-m", "mailgate.cli", "--config", str(config), "serve"],
                                     stdout=subprocess.PIPE, stderr=log, env=env)
            wait_listening(serve)
            started = peak_rss(serve.pid)
            cpu_started = cpu_seconds(serve.pid)
            send(serve_port, make_mail(0, attachment))
            after_one = peak_rss(serve.pid)
            cpu_one = cpu_seconds(serve.pid)
            for i in range(1, args.mails + 1):
                send(serve_port, make_mail(i, attachment))
            after_more = peak_rss(serve.pid)
            cpu_more = cpu_seconds(serve.pid)
        finally:
            for process in (serve, relay):
                if process is not None:
                    process.terminate()
                    process.wait(30)
    size = f"{args.attachment_mib:g} MiB attachment"
    print(f"serve peak RSS once listening          {started:7.1f} MiB")
    print(f"after one mail with a {size:18} {after_one:7.1f} MiB  (+{after_one - started:.1f})")
    print(f"after {args.mails} more such mails{'':14} {after_more:7.1f} MiB  "
          f"(+{after_more - after_one:.1f})")
    print(f"serve CPU for the first mail            {cpu_one - cpu_started:7.2f} s")
    if args.mails:
        print(f"serve CPU a mail for the {args.mails} more{'':10} "
              f"{(cpu_more - cpu_one) / args.mails:7.2f} s")


if __name__ == "__main__":
    main()
