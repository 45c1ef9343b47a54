"""`mailgate deliver` as Postfix runs it: one process per mail, with and without `serve` up.

    .venv/bin/python bench/deliver.py [--messages 30] [--alone 5]

Prints calls a second, wall milliseconds a call and CPU milliseconds a call (user + system
of the started process: steadier than wall time on a busy machine) for each new `deliver`
process handing the mail to a running `mailgate serve` (the installed `mailgate` command,
as an MTA runs it, and the full CLI module `python -m mailgate.cli` beside it), for
`deliver` ingesting in its own process (no server running), and the floor: starting
Python and nothing else. The installed command is run twice: from this venv (an editable
install, whose import hook runs at every Python start) and from a regular install of the
same source made for the run in a scratch venv (a wheel, as an MTA host installs it; the
dependencies are read from this venv through a .pth line), each beside its own floor.
Then, for each, where a hand-over's time goes: the floor, `serve` answering the same mail
over SMTP from this process (connection to QUIT), and the rest, the entry's own imports
and work; and the ratio of a hand-over to the floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import free_port, make_request, wait_listening

ROOT = Path(__file__).resolve().parent.parent
MAILGATE = [str(Path(sys.executable).parent / "mailgate")]
FULL_CLI = [sys.executable, "-m", "mailgate.cli"]
DELIVER = ["deliver", "--recipient", "support@example.com", "--sender", "customer@bench.test"]


class Timing:
    """Calls a second, and wall and CPU milliseconds a call, of processes run one by one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.wall = 0.0
        self.cpu = 0.0

    def run(self, command: list[str], stdin: bytes | None = None) -> None:
        before = os.times()
        start = time.perf_counter()
        result = subprocess.run(command, input=stdin, capture_output=True, cwd=ROOT, check=False)
        self.wall += time.perf_counter() - start
        after = os.times()
        self.cpu += (after.children_user - before.children_user
                     + after.children_system - before.children_system)
        self.calls += 1
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode())

    @property
    def ms(self) -> float:
        return 1000 * self.wall / self.calls

    def line(self) -> str:
        return (f"{self.name:42} {self.calls / self.wall:6.1f} calls/s {self.ms:7.1f} ms a call "
                f"{1000 * self.cpu / self.calls:6.1f} ms CPU")


def deliver_all(timing: Timing, config: Path, count: int, offset: int,
                command: list[str] = MAILGATE) -> Timing:
    for i in range(count):
        timing.run([*command, "--config", str(config), *DELIVER], make_request(offset + i))
    return timing


def serve_answers(port: int, count: int, offset: int) -> float:
    """Milliseconds from connecting to the QUIT reply, a mail, sent from this process."""
    start = time.perf_counter()
    for i in range(count):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="bench", timeout=60) as client:
            client.sendmail("customer@bench.test", ["support@example.com"],
                            make_request(offset + i))
    return 1000 * (time.perf_counter() - start) / count


def regular_install(folder: Path) -> Path:
    """The `mailgate` command of a fresh venv (with pip, as `python -m venv` makes it)
    holding the wheel built from this source."""
    source = folder / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("mailgate", "ticketing"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(folder / "wheels"), str(source)], check=True, capture_output=True)
    (wheel,) = (folder / "wheels").glob("mailgate-*.whl")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "mailgate"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--alone", type=int, default=5, help="mails stored without serve")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as folder:
        config = Path(folder) / "mailgate.toml"
        config.write_text(
            f'[support]\naddress = "support@example.com"\nsecret = "bench"\n'
            f'[storage]\npath = "{Path(folder) / "data"}"\n[smtp]\nport = {port}\n'
            f'[web]\nenabled = false\n[monitoring]\nenabled = false\n'
        )
        subprocess.run([*MAILGATE, "--config", str(config), "init"], check=True,
                       capture_output=True, cwd=ROOT)
        regular_command = regular_install(Path(folder))
        regular_python = str(regular_command.parent / "python")
        alone = deliver_all(Timing("deliver, ingesting in its own process"), config,
                            args.alone, 0)
        serve = subprocess.Popen([*MAILGATE, "--config", str(config), "serve"], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            wait_listening(serve)
            serve_answers(port, 3, 90_000)  # warm: the first mails load templates
            full = deliver_all(Timing("python -m mailgate.cli deliver, to serve"), config,
                               args.messages, 20_000, FULL_CLI)
            # Interleaved, so that a change in the machine's load hits all alike.
            handed = Timing("mailgate deliver, handing over to serve")
            floor = Timing("floor: python -c pass")
            regular = Timing("the same, regular install")
            regular_floor = Timing("floor: python -c pass, regular install")
            answer = 0.0
            for i in range(args.messages):
                floor.run([sys.executable, "-c", "pass"])
                deliver_all(handed, config, 1, 10_000 + i)
                regular_floor.run([regular_python, "-c", "pass"])
                deliver_all(regular, config, 1, 40_000 + i, [str(regular_command)])
                answer += serve_answers(port, 1, 30_000 + i) / args.messages
        finally:
            serve.terminate()
            serve.wait(20)
    for timing in (alone, full, handed, floor, regular, regular_floor):
        print(timing.line())
    for name, call, start in (("a hand-over", handed, floor),
                              ("regular install", regular, regular_floor)):
        rest = call.ms - start.ms - answer
        print(f"{name}: {start.ms:.1f} ms starting Python + {answer:.1f} ms serve answering "
              f"over SMTP + {rest:.1f} ms the entry's imports and work = {call.ms:.1f} ms, "
              f"{call.ms / start.ms:.2f} x the floor")


if __name__ == "__main__":
    main()
