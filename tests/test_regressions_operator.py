"""Regressions in what an operator types: one clear line and a sysexits code, never a traceback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests import commands
from tests.harness import request
from tests.servers import free_port
from tests.test_cli import run, write_config


def _one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}",
                              smtp=f"port = {port}")
        assert run(config, "init").returncode == 0
        result = run(config, "serve")
    assert result.returncode == 69
    line = _one_line(result)
    assert f"127.0.0.1:{port}" in line and "in use" in line


@pytest.mark.parametrize("command", [["init"], ["tickets", "list"], ["tickets", "show", "1"]])
def test_an_unreachable_postgresql_is_one_line(tmp_path: Path, command: list[str]) -> None:
    nobody = free_port()  # nothing listens here
    config = write_config(tmp_path, f"postgresql://mailgate:hunter2@127.0.0.1:{nobody}/test")
    result = run(config, *command)
    assert result.returncode == 69
    line = _one_line(result)
    assert f"127.0.0.1:{nobody}" in line and "refused" in line.lower()
    assert "hunter2" not in line


def test_tickets_show_into_head_ends_quietly(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert run(config, "init").returncode == 0
    body = "\n".join(f"line {i} of a long log pasted into the request" for i in range(20_000))
    delivered = run(config, "deliver", "--recipient", "support@example.com",
                    "--sender", "carol@customer.test",
                    stdin=request("Long log", body).as_bytes())
    assert delivered.returncode == 0, delivered.stderr
    # `mailgate tickets show 1 | head -1`: head reads a line and goes away.
    with commands.Command(["--config", str(config), "tickets", "show", "1"],
                          stdout=commands.PIPE, stderr=commands.PIPE,
                          env=commands.operator_env()) as shown:
        assert shown.stdout is not None and shown.stderr is not None
        assert shown.stdout.readline().startswith(b"Ticket #1")
        shown.stdout.close()
        err = shown.stderr.read()
        code = shown.wait(60)
    assert err == b""
    assert code == 74


def test_version_and_config_after_the_subcommand(tmp_path: Path) -> None:
    version = commands.run(["--version"], env=commands.operator_env())
    assert version.returncode == 0
    assert version.stdout.decode().startswith("mailgate 0.")
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}")
    init = commands.run(["init", "--config", str(config)], env=commands.operator_env(),
                        cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    listed = commands.run(["tickets", "list", "--config", str(config)], env=commands.operator_env(),
                          cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert (tmp_path / "db.sqlite3").exists()
    assert not (tmp_path / "data" / "mailgate.sqlite3").exists()  # not the built-in default


def test_lists_read_as_tables_of_addresses_and_filters_refuse_unknown_values(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}",
                          agents='addresses = ["alice@example.com", "bob@example.com"]')
    assert run(config, "init").returncode == 0
    for subject, cc in (("[S1] Exports broken", "dave@customer.test, erin@customer.test"),
                        ("Printer offline", "")):
        raw = request(subject, "Since noon.", cc=cc).as_bytes()
        assert run(config, "deliver", "--recipient", "support@example.com",
                   "--sender", "carol@customer.test", stdin=raw).returncode == 0
    listed = run(config, "tickets", "list").stdout.decode().splitlines()
    assert listed[0].split() == ["TICKET", "SEV", "STATUS", "ASSIGNEE", "AGE", "REQUESTER",
                                 "SUBJECT"]
    first = listed[1].split()
    assert first[:4] == ["#1", "S1", "open", "-"] and first[5] == "carol@customer.test"
    assert first[4][-1] in "smhd"
    only = run(config, "tickets", "list", "--severity", "S1").stdout.decode().splitlines()
    assert [line.split()[0] for line in only[1:]] == ["#1"]
    for wrong in (["--status", "opne"], ["--severity", "S7"], ["--assignee", "alice"]):
        refused = run(config, "tickets", "list", *wrong)
        assert refused.returncode == 64, wrong
        assert _one_line(refused).startswith("mailgate"), wrong
    outbox = run(config, "outbox", "list").stdout.decode()
    assert "[" not in outbox and "'" not in outbox
    assert "carol@customer.test, dave@customer.test, erin@customer.test" in outbox
    assert run(config, "agents", "add", "carl@example.com").returncode == 0
    agents = run(config, "agents", "list").stdout.decode().splitlines()
    assert [line.split()[0] for line in agents[1:]] == [
        "alice@example.com", "bob@example.com", "carl@example.com"]
