"""Shared fixtures: a migrated database on each backend, settings, a desk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.databases import PostgresPool, copy_sqlite, settle_sqlite
from tests.harness import Relay
from tests.servers import free_port, postgres_url, scratch_database
from ticketing.clock import Clock, FixedClock
from ticketing.db import make_engine, migrate
from ticketing.desk import Desk
from ticketing.dkimcheck import TxtLookup
from ticketing.settings import Settings, settings_from_mapping

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A database migrated once per run; each test gets a copy of it."""
    with scratch_database("mailgate_tpl", migrated=True) as name:
        yield name


@pytest.fixture(scope="session")
def postgres_pool(postgres_template: str) -> Iterator[PostgresPool]:
    """This process's copies of the template, each emptied after the test that had it."""
    pool = PostgresPool(postgres_template)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per run; each test gets a copy of it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "mailgate.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    settle_sqlite(path)
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        path = tmp_path / "mailgate.sqlite3"
        copy_sqlite(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    pool: PostgresPool = request.getfixturevalue("postgres_pool")
    name = pool.take()
    try:
        yield postgres_url(name)
    finally:
        pool.give_back(name)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FixedClock:
    # A Tuesday, 10:00 in Los Angeles: inside business hours.
    return FixedClock(datetime(2026, 3, 3, 18, 0, tzinfo=UTC))


def make_settings(tmp_path: Path, database_url: str, **sections: dict[str, object]) -> Settings:
    """Settings as an operator's TOML would give them, with the data folder in tmp_path."""
    data: dict[str, object] = {
        "support": {
            "address": "support@example.com",
            "name": "Example Support",
            "status_page": "https://status.example.com",
            "secret": "test-secret-not-for-production",
        },
        "database": {"url": database_url},
        "storage": {"path": str(tmp_path / "data")},
        # A port of its own for the Help Desk, so tests running at once never share one.
        "web": {"port": free_port()},
        "monitoring": {"port": free_port()},
    }
    for key, value in sections.items():
        merged = dict(data.get(key, {}))  # type: ignore[call-overload]
        merged.update(value)
        data[key] = merged
    return settings_from_mapping(data)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def desks(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Desk]]:
    """Make desks on this test's database with settings sections as in TOML; closed after."""
    made: list[Desk] = []

    def make(clock: Clock | None = None, txt_lookup: TxtLookup | None = None,
             **sections: dict[str, object]) -> Desk:
        desk = Desk.create(make_settings(tmp_path, database_url, **sections), clock=clock,
                           txt_lookup=txt_lookup)
        made.append(desk)
        return desk

    yield make
    for desk in made:
        desk.engine.dispose()


from tests.dovecot import dovecot_server  # noqa: E402, F401  (the `dovecot` fixture)


@pytest.fixture
def relay() -> Iterator[Relay]:
    """A real SMTP relay on loopback that keeps every mail it is handed."""
    with Relay() as relay:
        yield relay


from tests.browser import chromium, person  # noqa: E402, F401  (the browser fixtures)
