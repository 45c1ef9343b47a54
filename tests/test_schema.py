"""The schema: migrations create what the models say, and start-up knows the newest one."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine
from sqlmodel import SQLModel

import ticketing.models  # noqa: F401  (registers the tables)
from ticketing.db import SCHEMA_REVISION, head_revision, schema_state
from ticketing.search import not_search_object


def test_start_up_knows_the_newest_migration() -> None:
    assert SCHEMA_REVISION == head_revision()


def test_migrations_create_exactly_the_models(engine: Engine) -> None:
    assert schema_state(engine) == "current"
    with engine.connect() as connection:
        # The search indexes are no model's: their own tests search.
        context = MigrationContext.configure(connection, opts={"include_name": not_search_object})
        differences = compare_metadata(context, SQLModel.metadata)
    assert differences == []


def test_an_older_database_is_refused_then_upgraded_keeping_its_rows(
    tmp_path: Path, database_url: str
) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from tests.test_cli import run, write_config
    from ticketing.db import MIGRATIONS, make_engine

    engine = make_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    command.downgrade(config, "0001")  # as the first release left it
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO mailboxstate (key, uidvalidity, last_uid, updated_at) "
            "VALUES ('support@imap.example.com:993/INBOX', 7, 42, '2026-01-01 00:00:00')"))
    assert schema_state(engine) == "old"
    path = write_config(tmp_path, database_url)
    refused = run(path, "serve")
    assert refused.returncode == 78 and b"mailgate init" in refused.stderr
    assert run(path, "init").returncode == 0
    assert schema_state(engine) == "current"
    with engine.connect() as connection:
        row = connection.execute(text(
            "SELECT uidvalidity, last_uid, held_by, held_until FROM mailboxstate")).one()
    engine.dispose()
    assert tuple(row) == (7, 42, "", None)  # where it stood, and held by nobody
