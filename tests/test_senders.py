"""`mailgate serve` sends mail from a process of its own, which stops with serve."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text

from tests.harness import Relay, request, send, wait_until_sent
from tests.servers import free_port
from tests.test_cli import MAILGATE, run, serving_process, write_config


def _children(pid: int) -> list[int]:
    return [int(child) for child in
            Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_mail_goes_out_from_the_senders_process_which_stops_with_serve(
    tmp_path: Path, database_url: str, engine: Engine, relay: Relay
) -> None:
    port = free_port()
    config = write_config(tmp_path, database_url, smtp=f"port = {port}",
                          outbound=f'relay = "{relay.address}"')
    assert run(config, "init").returncode == 0
    with serving_process(config) as process:
        assert _until(lambda: len(_children(process.pid)) == 1)
        [senders] = _children(process.pid)
        send(port, request("First", "Please."))
        relay.wait_for(1)
        wait_until_sent(engine)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert not _alive(senders)
    with engine.connect() as db:
        [(status, holder)] = db.execute(text("SELECT status, claimed_by FROM outbox")).all()
    assert status == "sent"
    # Held last by the senders' process, not by serve's own.
    assert holder.endswith(f":{senders}")


def test_a_killed_serve_takes_its_senders_with_it(
    tmp_path: Path, database_url: str, relay: Relay
) -> None:
    config = write_config(tmp_path, database_url, outbound=f'relay = "{relay.address}"')
    assert run(config, "init").returncode == 0
    with serving_process(config) as process:
        assert _until(lambda: len(_children(process.pid)) == 1)
        [senders] = _children(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert _until(lambda: not _alive(senders))


def test_a_senders_process_that_dies_as_it_starts_is_started_less_and_less_often(
    tmp_path: Path, database_url: str, relay: Relay
) -> None:
    # An interpreter that ends at once whenever it would run the senders: a broken install.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "import os\n"
        "if b'mailgate.senders' in open('/proc/self/cmdline', 'rb').read():\n"
        "    os._exit(3)\n")
    config = write_config(tmp_path, database_url, outbound=f'relay = "{relay.address}"')
    assert run(config, "init").returncode == 0
    log = config.with_suffix(".log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env["PYTHONPATH"] = str(broken)  # read at interpreter start: a process of its own
    with open(log, "ab") as err, subprocess.Popen(
        [*MAILGATE, "--config", str(config), "serve"], stdout=subprocess.PIPE, stderr=err,
        env=env,
    ) as process:
        try:
            assert _until(lambda: "starting it again in 4 s" in log.read_text())
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    said = log.read_text()
    pauses = re.findall(r"ended \(exit 3\); starting it again in (\d+) s", said)
    # Each start that dies at once waits twice as long as the one before it.
    assert pauses[:3] == ["1", "2", "4"]
    assert "not ready after" not in said


def test_serve_keeps_trying_to_start_its_senders_when_their_interpreter_is_gone_a_while(
    tmp_path: Path, database_url: str, relay: Relay
) -> None:
    # An install of its own whose interpreter can be taken away, as an upgrade does.
    install = tmp_path / "install"
    (install / "bin").mkdir(parents=True)
    (install / "lib").symlink_to(Path(sys.prefix) / "lib")
    shutil.copy(Path(sys.prefix) / "pyvenv.cfg", install / "pyvenv.cfg")
    python = install / "bin" / "python3"
    python.symlink_to(Path(sys.executable).resolve())
    port = free_port()
    config = write_config(tmp_path, database_url, smtp=f"port = {port}",
                          outbound=f'relay = "{relay.address}"')
    assert run(config, "init").returncode == 0
    log = config.with_suffix(".log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    with open(log, "ab") as err, subprocess.Popen(
        [str(python), "-m", "mailgate", "--config", str(config), "serve"],
        stdout=subprocess.PIPE, stderr=err, env=env,
    ) as process:
        try:
            assert process.stdout is not None
            assert b"listening" in process.stdout.readline(), log.read_text()
            [senders] = _children(process.pid)
            python.unlink()
            os.kill(senders, signal.SIGKILL)
            assert _until(lambda: "could not be started" in log.read_text())
            python.symlink_to(Path(sys.executable).resolve())
            assert _until(lambda: log.read_text().count("senders started") == 2)
            send(port, request("After the upgrade", "Please."))
            relay.wait_for(1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "Traceback" not in log.read_text()
