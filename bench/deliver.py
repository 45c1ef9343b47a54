"""`mailgate deliver` as Postfix runs it: one process per mail, with and without `serve` up.

    .venv/bin/python bench/deliver.py [--messages 30] [--alone 5]

Prints mails per second and milliseconds a call for each new `deliver` process handing
the mail to a running `mailgate serve` (the installed `mailgate` command, as an MTA runs
it, and the full CLI module `python -m mailgate.cli` beside it), for `deliver` ingesting
in its own process (no server running), and the floor: starting Python and nothing else.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import free_port, make_request, wait_listening

ROOT = Path(__file__).resolve().parent.parent
MAILGATE = [str(Path(sys.executable).parent / "mailgate")]
FULL_CLI = [sys.executable, "-m", "mailgate.cli"]


def deliver_all(config: Path, count: int, offset: int, command: list[str] = MAILGATE) -> float:
    start = time.perf_counter()
    for i in range(count):
        result = subprocess.run(
            [*command, "--config", str(config), "deliver", "--recipient",
             "support@example.com", "--sender", "customer@bench.test"],
            input=make_request(offset + i), capture_output=True, cwd=ROOT, check=False)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode())
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--alone", type=int, default=5, help="mails stored without serve")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as folder:
        config = Path(folder) / "mailgate.toml"
        config.write_text(
            f'[support]\naddress = "support@example.com"\nsecret = "bench"\n'
            f'[storage]\npath = "{Path(folder) / "data"}"\n[smtp]\nport = {free_port()}\n'
            f'[web]\nenabled = false\n'
        )
        subprocess.run([*MAILGATE, "--config", str(config), "init"], check=True,
                       capture_output=True, cwd=ROOT)
        alone = deliver_all(config, args.alone, 0)
        serve = subprocess.Popen([*MAILGATE, "--config", str(config), "serve"], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            wait_listening(serve)
            handed = deliver_all(config, args.messages, 10_000)
            full = deliver_all(config, args.messages, 20_000, FULL_CLI)
            start = time.perf_counter()
            for _ in range(args.messages):
                subprocess.run([sys.executable, "-c", "pass"], check=True)
            floor = args.messages / (time.perf_counter() - start)
        finally:
            serve.terminate()
            serve.wait(20)
    for name, rate in (("deliver, ingesting in its own process", alone),
                       ("python -m mailgate.cli deliver, to serve", full),
                       ("mailgate deliver, handing over to serve", handed),
                       ("floor: python -c pass", floor)):
        print(f"{name:42} {rate:6.1f} calls/s {1000 / rate:7.1f} ms a call")


if __name__ == "__main__":
    main()
