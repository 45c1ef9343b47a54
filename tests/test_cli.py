"""The `mailgate` command as an operator and an MTA run it: config, init, deliver, tickets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from tests import commands
from tests.harness import Relay, request, send, wait_until_sent
from tests.servers import PROJECT, free_port
from ticketing.config_file import ConfigError, plain_toml, read_config

MAILGATE = commands.MAILGATE


def write_config(tmp_path: Path, database_url: str, **extra: str) -> Path:
    lines = [
        "[support]",
        'address = "support@example.com"',
        'name = "Example Support"',
        'status_page = "https://status.example.com"',
        'secret = "cli-test-secret"',
        "[database]",
        f'url = "{database_url}"',
        extra.pop("database", ""),  # more of the same table
        "[storage]",
        f'path = "{tmp_path / "data"}"',
    ]
    # A port of its own, so `deliver` never hands a test's mail to some other server.
    extra.setdefault("smtp", f"port = {free_port()}")
    extra.setdefault("web", f"port = {free_port()}")
    extra.setdefault("monitoring", f"port = {free_port()}")
    for section, body in extra.items():
        lines += [f"[{section}]", body]
    path = tmp_path / "mailgate.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(config: Path, *args: str, stdin: bytes = b"",
        trace_imports: bool = False) -> subprocess.CompletedProcess[bytes]:
    env = commands.operator_env()
    if trace_imports:  # every module the call imports, one line each on stderr
        # What a fresh interpreter imports: a new process, not a forked one.
        env["PYTHONPROFILEIMPORTTIME"] = "1"
        return subprocess.run([*MAILGATE, "--config", str(config), *args], input=stdin,
                              capture_output=True, timeout=120, env=env, check=False)
    return commands.run(["--config", str(config), *args], input=stdin, env=env, timeout=120)


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    path = write_config(tmp_path, database_url)
    assert run(path, "init").returncode == 0
    return path


def test_bad_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    for config, said in [
        ('[smtp]\nport = "twenty-five"\n', b"smtp.port"),
        ('[support]\nadress = "x@y.z"\n', b"support.adress: unknown key"),
        ('[database]\nretry = 0\n', b"database.retry: expected seconds above 0"),
        ('database = "postgresql://db.example/mailgate"\n', b"database: expected a table"),
    ]:
        path.write_text(config)
        result = run(path, "serve")
        assert result.returncode == 78, config
        assert said in result.stderr, config


def test_serve_refuses_a_database_without_schema(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    result = run(path, "serve")
    assert result.returncode == 78
    assert b"mailgate init" in result.stderr


def test_deliver_stores_and_tickets_list_shows_it(config: Path) -> None:
    raw = request("[S2] Exports broken", "CSV exports fail.", cc="dave@customer.test").as_bytes()
    result = run(config, "deliver", "--recipient", "support@example.com",
                 "--sender", "carol@customer.test", stdin=raw)
    assert result.returncode == 0, result.stderr
    again = run(config, "deliver", "--recipient", "support@example.com", stdin=raw)
    assert again.returncode == 0
    assert b"duplicate" in again.stderr
    listed = json.loads(run(config, "tickets", "list", "--json").stdout)
    assert len(listed) == 1
    ticket = listed[0]
    assert ticket["subject"] == "Exports broken"
    assert ticket["severity"] == "S2"
    assert ticket["status"] == "open"
    assert ticket["requester"] == "carol@customer.test"
    assert set(ticket["participants"]) == {"carol@customer.test", "dave@customer.test"}
    assert ticket["created_at"]
    shown = json.loads(run(config, "tickets", "show", str(ticket["number"]), "--json").stdout)
    assert shown["messages"][0]["from"] == "carol@customer.test"
    assert shown["messages"][0]["kind"] == "request"
    assert "CSV exports fail." in shown["messages"][0]["text"]
    plain = run(config, "tickets", "show", str(ticket["number"])).stdout.decode()
    assert "Exports broken" in plain and "CSV exports fail." in plain


def test_deliver_exit_codes(config: Path, tmp_path: Path) -> None:
    raw = request("Hello", "Hi").as_bytes()
    assert run(config, "deliver", "--recipient", "someone@elsewhere.test", stdin=raw).returncode == 67
    assert run(config, "deliver", stdin=b"").returncode == 65
    broken = tmp_path / "broken.toml"
    broken.write_text("[smtp\n")
    # A broken config defers the mail (the MTA keeps it) instead of bouncing it for good.
    result = run(broken, "deliver", stdin=raw)
    assert result.returncode == 75
    assert b"configuration" in result.stderr


def test_deliver_answers_75_when_the_database_cannot_be_written(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite3"
    config = write_config(tmp_path, f"sqlite:///{database}")
    assert run(config, "init").returncode == 0
    database.chmod(0o444)
    (tmp_path / "db.sqlite3-wal").touch()
    (tmp_path / "db.sqlite3-wal").chmod(0o444)
    try:
        if os.geteuid() == 0:
            # root writes through file modes: take the write away another way.
            database.chmod(0o644)
            os.rename(database, tmp_path / "moved.sqlite3")
            database.mkdir()  # the database path is now a folder: nothing can be written
        result = run(config, "deliver", stdin=request("Lost?", "no").as_bytes())
    finally:
        if database.is_dir():
            database.rmdir()
    assert result.returncode == 75, result.stderr


def test_inbound_list_shows_classified_mail(config: Path) -> None:
    raw = request("Out of office", "I am away.", Auto_Submitted="auto-replied").as_bytes()
    assert run(config, "deliver", stdin=raw).returncode == 0
    records = json.loads(run(config, "inbound", "list", "--json").stdout)
    assert [r["kind"] for r in records] == ["auto_reply"]
    assert json.loads(run(config, "tickets", "list", "--json").stdout) == []


def test_agents_add_makes_an_agent(config: Path) -> None:
    assert run(config, "agents", "add", "Alice@Example.com", "--name", "Alice").returncode == 0
    agents = json.loads(run(config, "agents", "list", "--json").stdout)
    assert [(a["address"], a["name"]) for a in agents] == [("alice@example.com", "Alice")]


@contextmanager
def serving_process(config: Path) -> Iterator[commands.Command]:
    """`mailgate serve` as its own process, its log in a file beside the config."""
    env = commands.operator_env()
    with open(config.with_suffix(".log"), "ab") as log, commands.Command(
        ["--config", str(config), "serve"], stdout=commands.PIPE, stderr=log, env=env,
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert b"listening" in line, config.with_suffix(".log").read_text()
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(20)


def test_killed_between_250_and_send_the_confirmation_goes_out_once(
    tmp_path: Path, database_url: str, engine: Engine, relay: Relay
) -> None:
    port = free_port()
    dead_relay = free_port()  # nothing listens here yet: the first sends fail
    config = write_config(tmp_path, database_url, smtp=f"port = {port}",
                          outbound=f'relay = "127.0.0.1:{dead_relay}"\nretry_base = 0.2\nlease = 2')
    assert run(config, "init").returncode == 0
    with serving_process(config) as first:
        send(port, request("[S3] Kill me", "Between the 250 and the send."))
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    outbox = json.loads(run(config, "outbox", "list", "--json").stdout)
    assert [o["status"] for o in outbox] == ["pending"]
    # Restart, now with a relay that answers.
    config.write_text(config.read_text().replace(f"127.0.0.1:{dead_relay}", relay.address))
    with serving_process(config) as second:
        relay.wait_for(1, timeout=20)
        wait_until_sent(engine)  # recorded as sent: no second copy can follow
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    assert len(relay.received) == 1
    assert relay.received[0].message["Subject"].endswith("] Kill me")
    outbox = json.loads(run(config, "outbox", "list", "--json").stdout)
    assert [o["status"] for o in outbox] == ["sent"]


def test_sigterm_stops_serve_cleanly(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    config = write_config(tmp_path, database_url, smtp=f"port = {port}")
    assert run(config, "init").returncode == 0
    with serving_process(config) as process:
        send(port, request("Before stop", "hello"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    listed = json.loads(run(config, "tickets", "list", "--json").stdout)
    assert [t["subject"] for t in listed] == ["Before stop"]


def test_deliver_hands_the_mail_to_a_running_server(tmp_path: Path, database_url: str,
                                                   relay: Relay) -> None:
    port = free_port()
    config = write_config(tmp_path, database_url, smtp=f"port = {port}",
                          outbound=f'relay = "{relay.address}"')
    assert run(config, "init").returncode == 0
    # Bare LF line ends, as Postfix pipes a mail, and a line starting with a dot.
    raw = request("[S1] Through the pipe",
                  "Postfix handed me over.\n.profile is attached.\n").as_bytes()
    assert b"\r\n" not in raw
    with serving_process(config) as process:
        result = run(config, "deliver", "--recipient", "support@example.com",
                     "--sender", "carol@customer.test", stdin=raw)
        stranger = run(config, "deliver", "--recipient", "nobody@elsewhere.test",
                       "--sender", "carol@customer.test", stdin=raw)
        again = run(config, "deliver", "--recipient", "support@example.com",
                    "--sender", "carol@customer.test", stdin=raw, trace_imports=True)
        relay.wait_for(1)
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert result.returncode == 0, result.stderr
    assert b"handed to the running server" in result.stderr
    assert stranger.returncode == 67
    # Handed over, the call loaded no database layer and not the full command line.
    assert again.returncode == 0, again.stderr
    imported = [line.rsplit(b"|", 1)[-1].strip() for line in again.stderr.splitlines()
                if line.startswith(b"import time:")]
    assert b"mailgate.handoff" in imported
    heavy = {b"sqlalchemy", b"ticketing.db", b"ticketing.settings", b"mailgate.cli", b"logging",
             b"smtplib", b"ssl", b"email", b"argparse", b"dataclasses",
             # the TOML reader, the socket module's wrapper, the IDNA codec
             b"tomllib", b"typing", b"datetime", b"socket", b"selectors", b"encodings.idna"}
    assert not heavy & set(imported)
    ours = {name for name in imported if name.split(b".")[0] in (b"mailgate", b"ticketing")}
    assert ours <= {b"mailgate", b"mailgate.__main__", b"mailgate.handoff", b"mailgate.exitcodes",
                    b"ticketing", b"ticketing.config_file"}
    shown = json.loads(run(config, "tickets", "show", "1", "--json").stdout)
    assert shown["subject"] == "Through the pipe"
    assert shown["messages"][0]["route"] == "pipe"
    assert "\n.profile is attached." in shown["messages"][0]["text"]
    assert relay.received[0].rcpt_tos == ("carol@customer.test",)


# Pieces of settings files, plain and not, valid TOML and not, to mix.
_TOML_PIECES = st.sampled_from([
    "[", "]", "[[", "]]", ".", "=", " ", "\t", "#", ",", '"', "'", "\\", "\r", "\r\n", "\x00",
    "a", "smtp", "port", "x y", "é", "0", "1", "07", "-", "+", "_", "1.5", "1e5", "inf",
    "true", "false", "[]", '"""'])
_TOML_LINES = st.one_of(
    st.lists(_TOML_PIECES, max_size=12).map("".join),
    st.sampled_from(["[a]", "[a.b]", "[ a . b ]", "[[a]]", "[[b]]", "a = 1", "a = []",
                     "b = [1, 'x', \"y\",] # c", 'b = "q#" # c', "c = -1.25", "d = true"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOML_LINES, max_size=8).map("\n".join))
def test_the_plain_settings_reader_reads_what_the_toml_reader_reads(text: str) -> None:
    plain = plain_toml(text)
    if plain is not None:
        assert repr(plain) == repr(tomllib.loads(text))  # repr tells True from 1, 1 from 1.0


def test_a_settings_file_is_read_with_or_without_the_toml_reader(tmp_path: Path) -> None:
    example = (PROJECT / "config" / "example.toml").read_text()
    assert repr(plain_toml(example)) == repr(tomllib.loads(example))
    path = tmp_path / "mailgate.toml"
    path.write_text('[smtp]\nport = 2600\n[agents]\naddresses = [\n  "a@example.com",\n]\n')
    assert plain_toml(path.read_text()) is None  # a list over several lines
    assert read_config(str(path), {}) == {"smtp": {"port": 2600},
                                          "agents": {"addresses": ["a@example.com"]}}
    path.write_text("[smtp]\nport = 2600\nport = 2601\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_config(str(path), {})


def test_serve_refuses_to_start_when_a_template_cannot_be_loaded(tmp_path: Path) -> None:
    override = tmp_path / "my-templates"
    override.mkdir()
    (override / "confirmation.txt").write_text("Hello {{ name }\n")
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}",
                          templates=f'override = "{override}"')
    assert run(config, "init").returncode == 0
    result = run(config, "serve")
    assert result.returncode == 78
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "confirmation.txt" in lines[0] and "not starting" in lines[0]
    assert b"Traceback" not in result.stderr
