"""Regressions in `mailgate deliver` as an MTA runs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import request
from tests.servers import postgres_url, scratch_database
from tests.test_cli import run, write_config

PASSWORD = "hunter2"


@pytest.fixture(params=["sqlite", "postgresql"])
def never_initialised(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL (with a password on PostgreSQL) whose schema was never created."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'never-initialised.sqlite3'}"
        return
    # The test server trusts loopback: the password is never checked, only carried.
    with scratch_database("mailgate_fresh") as name:
        yield postgres_url(name, password=PASSWORD)


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
