"""Regressions in `mailgate deliver` as an MTA runs it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.harness import request
from tests.servers import POSTGRES_URL, missing
from tests.test_cli import run, write_config

PASSWORD = "hunter2"


@pytest.fixture(params=["sqlite", "postgresql"])
def never_initialised(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL (with a password on PostgreSQL) whose schema was never created."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'never-initialised.sqlite3'}"
        return
    admin = create_engine("postgresql+psycopg://" + POSTGRES_URL.removeprefix("postgresql://"),
                          isolation_level="AUTOCOMMIT")
    name = f"mailgate_fresh_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        missing(f"PostgreSQL does not answer at {POSTGRES_URL}: {exc}")
    # The test server trusts loopback: the password is never checked, only carried.
    url = make_url(POSTGRES_URL).set(password=PASSWORD, database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_deliver_to_a_database_without_schema_defers_the_mail_without_the_password(
    tmp_path: Path, never_initialised: str
) -> None:
    config = write_config(tmp_path, never_initialised)
    mail = request("Printer offline", "Since noon.").as_bytes()
    result = run(config, "deliver", "--recipient", "support@example.com",
                 "--sender", "carol@customer.test", stdin=mail)
    assert result.returncode == 75, result.stderr
    assert b"mailgate init" in result.stderr
    assert PASSWORD.encode() not in result.stderr
    assert PASSWORD.encode() not in result.stdout
    # Once the operator creates the schema, the MTA's next try is stored.
    init = run(config, "init")
    assert init.returncode == 0, init.stderr
    assert PASSWORD.encode() not in init.stdout + init.stderr
    again = run(config, "deliver", "--recipient", "support@example.com",
                "--sender", "carol@customer.test", stdin=mail)
    assert again.returncode == 0, again.stderr
    assert PASSWORD.encode() not in again.stderr
