"""The schema: migrations create what the models say, and start-up knows the newest one."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine
from sqlmodel import SQLModel

import ticketing.models  # noqa: F401  (registers the tables)
from ticketing.db import SCHEMA_REVISION, head_revision, schema_state


def test_start_up_knows_the_newest_migration() -> None:
    assert SCHEMA_REVISION == head_revision()


def test_migrations_create_exactly_the_models(engine: Engine) -> None:
    assert schema_state(engine) == "current"
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []
