"""Regressions in what `serve` leaves behind: its log, and files only their owner can read."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import request, send
from tests.servers import free_port
from tests.test_cli import run, serving_process, write_config


def _log_line(log: Path, needle: str) -> str:
    """The first line of serve's log holding `needle`, as soon as it is written."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if needle in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no {needle!r} in {log.read_text()}")


def test_the_log_holds_our_lines_and_relay_errors_name_the_relay(tmp_path: Path) -> None:
    port, dead = free_port(), free_port()  # nothing listens on the relay's port
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}",
                          smtp=f"port = {port}", outbound=f'relay = "127.0.0.1:{dead}"')
    assert run(config, "init").returncode == 0
    log = config.with_suffix(".log")
    with serving_process(config) as process:
        for n in range(3):
            send(port, request(f"Printer {n}", "offline"))
        failed = _log_line(log, "attempt 1")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    assert f"127.0.0.1:{dead}" in failed
    lines = log.read_text().splitlines()
    assert not [line for line in lines if " mail.log: " in line], lines
    assert any("SMTP listening" in line for line in lines)
    outbox = json.loads(run(config, "outbox", "list", "--json").stdout)
    assert all(f"127.0.0.1:{dead}" in o["last_error"] for o in outbox), outbox


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_database_mail_and_blobs_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    config = write_config(tmp_path, f"sqlite:///{data / 'mailgate.sqlite3'}",
                          smtp=f"port = {port}")
    config.write_text(config.read_text().replace('secret = "cli-test-secret"\n', ""))
    with _umask(0o022):  # the usual umask: new files readable by everyone
        assert run(config, "init").returncode == 0
        with serving_process(config) as process:
            message = request("Invoice", "see attached")
            message.add_attachment(b"%PDF-1.4 invoice", maintype="application",
                                   subtype="pdf", filename="invoice.pdf")
            send(port, message)
            outbound = data / "outbound"
            deadline = time.monotonic() + 30
            while not list(outbound.glob("*.eml")) and time.monotonic() < deadline:
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
    files = [data / "mailgate.sqlite3", data / "secret", *outbound.glob("*.eml"),
             *(p for p in (data / "blobs").rglob("*") if p.is_file())]
    folders = [data, outbound, data / "blobs", *(p for p in (data / "blobs").rglob("*") if p.is_dir())]
    assert len([f for f in files if f.suffix == ".eml"]) == 1
    assert len(files) >= 5  # the database, the secret, the mail sent, raw mail, attachment
    assert {str(f.relative_to(data)): oct(_mode(f)) for f in files if _mode(f) != 0o600} == {}
    assert {str(f.relative_to(tmp_path)): oct(_mode(f))
            for f in folders if _mode(f) != 0o700} == {}


def test_the_systemd_unit_is_hardened_and_documented() -> None:
    root = Path(__file__).resolve().parent.parent
    unit: dict[str, list[str]] = {}
    for line in (root / "config" / "mailgate.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            unit.setdefault(key.strip(), []).append(value.strip())
    assert unit["ExecStart"][0].endswith(" serve")
    for key, value in {"NoNewPrivileges": "true", "ProtectSystem": "strict",
                       "PrivateTmp": "true", "ProtectHome": "true", "UMask": "0077"}.items():
        assert unit[key] == [value], key
    assert unit["WorkingDirectory"][0] in unit["ReadWritePaths"][0].split()
    assert unit["User"] != ["root"]
    assert "config/mailgate.service" in (root / "README.md").read_text()
