"""`serve` against a careless operator and a hostile network: leftovers, ceilings, faults."""

from __future__ import annotations

import os
import resource
import signal
import smtplib
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import commands
from tests.harness import Relay, request, send, serving
from tests.servers import POSTGRES_URL, free_port, postgres_url
from tests.test_cli import write_config
from ticketing.desk import Desk


def test_half_written_files_after_a_full_disk_are_removed_at_start(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port()}, outbound={"relay": relay.address},
                 storage={"blobs": "folder"})
    folder = desk.settings.storage_path / "blobs" / "ab" / "cd"
    folder.mkdir(parents=True)
    kept = folder / ("abcd" + "0" * 60)
    kept.write_bytes(b"a stored file")
    # What a write cut short by a full disk leaves: part of a file under a temporary name.
    stale = [folder / f".abcd{'1' * 60}.{n:032x}.tmp" for n in range(3)]
    hour_ago = time.time() - 7200
    for path in stale:
        path.write_bytes(b"half of a mail")
        os.utime(path, (hour_ago, hour_ago))
    in_progress = folder / f".abcd{'2' * 60}.{9:032x}.tmp"
    in_progress.write_bytes(b"being written now")
    with serving(desk) as port:
        assert send(port, request("still taking mail", "hello")) == {}
    assert [p for p in stale if p.exists()] == []
    assert kept.read_bytes() == b"a stored file"
    assert in_progress.exists()  # another process may be writing it


def _log_lines(path: Path, needle: str) -> list[str]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [line for line in text.splitlines() if needle in line]


def _wait_for_line(path: Path, needle: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while not (found := _log_lines(path, needle)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_serve_waits_for_a_database_that_is_not_there_yet(
    tmp_path: Path, postgres_template: str
) -> None:
    from sqlalchemy import create_engine, text

    name = f"mailgate_late_{uuid.uuid4().hex[:10]}"
    port = free_port()
    # Tried again every half second, so the test does not wait out the default five.
    config = write_config(tmp_path, postgres_url(name), smtp=f"port = {port}",
                          database="retry = 0.5")
    log = config.with_suffix(".log")
    env = commands.operator_env()
    admin = create_engine("postgresql+psycopg://" + POSTGRES_URL.removeprefix("postgresql://"),
                          isolation_level="AUTOCOMMIT")
    try:
        with open(log, "ab") as handle, commands.Command(
            ["--config", str(config), "serve"], stdout=commands.PIPE, stderr=handle, env=env,
        ) as process:
            try:
                assert _wait_for_line(log, "database not reachable at"), log.read_text()
                assert process.poll() is None  # still there, waiting
                # The database comes up (made whole, from a migrated template).
                with admin.connect() as connection:
                    connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
                assert process.stdout is not None
                assert b"listening" in process.stdout.readline(), log.read_text()
                assert send(port, request("after the wait", "hello")) == {}
                process.send_signal(signal.SIGTERM)
                assert process.wait(30) == 0, log.read_text()[-4000:]
            finally:
                if process.poll() is None:
                    process.kill()
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    (line,) = _log_lines(log, "database not reachable")
    assert f"{name}" in line and "retrying every 0.5 s" in line
    assert "Traceback" not in log.read_text()


def test_connections_over_the_overall_ceiling_are_told_to_come_back(
    desks: Callable[..., Desk], relay: Relay
) -> None:
    desk = desks(smtp={"port": free_port(), "max_connections": 5,
                       "max_connections_per_client": 0},
                 outbound={"relay": relay.address})
    with serving(desk) as port:
        held = [smtplib.SMTP("127.0.0.1", port, timeout=30) for _ in range(5)]
        try:
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP("127.0.0.1", port, timeout=30)
            assert refused.value.smtp_code == 421
            held.pop().quit()
            # A place is free again: the next client gets in and its mail is stored.
            assert send(port, request("after the crowd", "hello")) == {}
            assert relay.wait_for(1, timeout=30)
        finally:
            for client in held:
                client.close()


FILE_LIMIT = 64


def test_running_out_of_file_descriptors_is_logged_once_a_minute(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'data' / 'mailgate.sqlite3'}",
                          smtp=f"port = {port}\nmax_connections_per_client = 0\n"
                               "max_connections = 0")
    env = commands.operator_env()
    assert commands.run(["--config", str(config), "init"], env=env,
                        timeout=120).returncode == 0
    log = config.with_suffix(".log")
    held: list[socket.socket] = []
    with open(log, "ab") as handle, commands.Command(
        ["--config", str(config), "serve"], stdout=commands.PIPE, stderr=handle, env=env,
        rlimits={resource.RLIMIT_NOFILE: (FILE_LIMIT, FILE_LIMIT)},
    ) as process:
        try:
            assert process.stdout is not None
            assert b"listening" in process.stdout.readline(), log.read_text()
            # More connections than the process has descriptors: the rest wait in the
            # listen backlog, and every accept() of them fails with EMFILE.
            for _ in range(FILE_LIMIT + 20):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            assert _wait_for_line(log, "Too many open files"), log.read_text()
            time.sleep(3)  # the attack goes on: asyncio tries again every second
            for client in held:
                client.close()
            held.clear()
            assert send(port, request("after the flood", "hello")) == {}
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, log.read_text()[-4000:]
        finally:
            for client in held:
                client.close()
            if process.poll() is None:
                process.kill()
    text = log.read_text(errors="replace")
    (line,) = _log_lines(log, "Too many open files")
    assert "cannot accept connections" in line
    assert "Traceback" not in text, text[-4000:]
    assert len(text) < 20_000
