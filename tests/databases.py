"""Empty, migrated databases for tests, without migrating or dropping one per test.

Running the migrations costs more than most tests that need the database, and dropping a
PostgreSQL database waits for a checkpoint (one to three seconds). So each test process
migrates once per backend: a SQLite test gets a copy of a migrated file, and a PostgreSQL
test gets a database of the process's pool, which is emptied once that test is over. A
database whose schema or settings the test changed (a downgrade, a trigger of its own),
or that it filled with many rows, is dropped instead, and a new copy takes its place.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from tests.servers import POSTGRES_URL, missing, postgres_url, without_waiting_for_disk

# Everything a test could change about a database besides its rows: relations and their
# columns, indexes, constraints, triggers, functions, types, rules, policies, grants,
# the schema's version, and the database's own settings.
_SHAPE = """
SELECT string_agg(item, E'\\n' ORDER BY item) FROM (
  SELECT 'rel ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' '
         || coalesce(c.reloptions::text, '') || ' ' || coalesce(c.relacl::text, '')
         || ' ' || c.relrowsecurity AS item
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  UNION ALL
  SELECT 'col ' || table_schema || '.' || table_name || '.' || column_name || ' ' || data_type
         || ' ' || is_nullable || ' ' || coalesce(column_default, '')
    FROM information_schema.columns
   WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT 'idx ' || indexdef FROM pg_indexes
   WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT 'con ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint
   WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
  UNION ALL
  SELECT 'trg ' || tgrelid::regclass::text || ' ' || tgname || ' ' || tgenabled::text
    FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL
  SELECT 'fn ' || p.oid::regprocedure::text || ' ' || md5(coalesce(p.prosrc, ''))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT 'type ' || n.nspname || '.' || t.typname
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  UNION ALL
  SELECT 'ns ' || nspname || ' ' || coalesce(nspacl::text, '') FROM pg_namespace
  UNION ALL
  SELECT 'ext ' || extname || ' ' || extversion FROM pg_extension
  UNION ALL
  SELECT 'rule ' || schemaname || '.' || tablename || ' ' || rulename FROM pg_rules
  UNION ALL
  SELECT 'policy ' || schemaname || '.' || tablename || ' ' || policyname FROM pg_policies
  UNION ALL
  SELECT 'version ' || version_num FROM alembic_version
  UNION ALL
  SELECT 'db ' || datallowconn || ' ' || datconnlimit || ' ' || coalesce(datacl::text, '')
    FROM pg_database WHERE datname = current_database()
  UNION ALL
  SELECT 'set ' || array_to_string(setconfig, ',') FROM pg_db_role_setting
   WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
) AS shape
"""

_TABLES = """
SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND tablename <> 'alembic_version'
"""

_RESTART_SEQUENCES = """
SELECT count(setval(format('%I.%I', schemaname, sequencename)::regclass, start_value, false))
  FROM pg_sequences
"""


def _delete_all(tables: list[str]) -> str:
    """One statement that deletes every row of these tables and counts them."""
    deletes = ", ".join(f"d{i} AS (DELETE FROM {table} RETURNING 1)" for i, table in enumerate(tables))
    counts = " + ".join(f"(SELECT count(*) FROM d{i})" for i in range(len(tables)))
    return f"WITH {deletes} SELECT {counts or 0}"


# A test that left more rows than this gets a new database rather than an emptied one:
# the dead rows would slow the tests after it until a vacuum.
MANY_ROWS = 5000


def copy_sqlite(template: Path, target: Path) -> None:
    """A copy of a migrated SQLite file, readable by the owner only as make_engine makes it."""
    data = template.read_bytes()
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def settle_sqlite(path: Path) -> None:
    """Move the write-ahead log into the file itself, so the file alone is the database."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class PostgresPool:
    """Databases copied from one migrated template, lent to one test at a time."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.admin = create_engine("postgresql+psycopg://" + POSTGRES_URL.removeprefix("postgresql://"),
                                   isolation_level="AUTOCOMMIT")
        self.free: list[str] = []
        self.made: set[str] = set()
        with self._engine(template) as engine, engine.begin() as connection:
            self.shape = connection.execute(text(_SHAPE)).scalar_one()
            tables = list(connection.execute(text(_TABLES)).scalars().all())
            rows = sum(connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                       for t in tables)
        # The tables are the template's as long as the shape is.
        self.delete_all = _delete_all(tables)
        # Emptying gives back the template only if the template itself has no rows.
        self.reusable = rows == 0

    def take(self, prefix: str = "mailgate_t") -> str:
        """The name of an empty, migrated database that is this caller's until give_back()."""
        if self.free:
            return self.free.pop()
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        try:
            with self.admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
                connection.execute(text(without_waiting_for_disk(name)))
        except DBAPIError as exc:
            missing(f"PostgreSQL does not answer at {POSTGRES_URL}: {exc}")
        self.made.add(name)
        return name

    def give_back(self, name: str) -> None:
        """End every connection to the database, then keep it emptied for the next test,
        under a new name so that no client of the last test can reach it; or drop it."""
        fresh = self._rename(name) if self.reusable else None
        if fresh is not None and self._empty(fresh):
            self.free.append(fresh)
            return
        self._drop(fresh or name)

    def close(self) -> None:
        for name in list(self.made):
            self._drop(name)
        self.admin.dispose()

    def _rename(self, name: str) -> str | None:
        fresh = f"{name.rsplit('_', 1)[0]}_{uuid.uuid4().hex[:10]}"
        deadline = time.monotonic() + 10
        with self.admin.connect() as connection:
            while True:
                connection.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
                try:
                    connection.execute(text(f'ALTER DATABASE "{name}" RENAME TO "{fresh}"'))
                except DBAPIError as exc:
                    # 55006: a connection not yet gone; anything else (the test dropped or
                    # renamed the database itself): nothing to keep.
                    if getattr(exc.orig, "sqlstate", None) != "55006" or time.monotonic() > deadline:
                        return None
                    time.sleep(0.02)
                    continue
                self.made.discard(name)
                self.made.add(fresh)
                return fresh

    def _empty(self, name: str) -> bool:
        """Delete every row and restart every sequence, if the test left the schema as the
        template has it and not too many rows; whether the database is now as new."""
        try:
            with self._engine(name) as engine, engine.begin() as connection:
                if connection.execute(text(_SHAPE)).scalar_one() != self.shape:
                    return False
                # Rows go regardless of foreign keys (replica mode skips their checks).
                connection.execute(text("SET LOCAL session_replication_role = replica"))
                if connection.execute(text(self.delete_all)).scalar_one() > MANY_ROWS:
                    return False
                connection.execute(text(_RESTART_SEQUENCES))
                return True
        except DBAPIError:
            return False

    def _engine(self, name: str) -> _Disposing:
        url = "postgresql+psycopg://" + postgres_url(name).removeprefix("postgresql://")
        return _Disposing(create_engine(url, poolclass=NullPool))

    def _drop(self, name: str) -> None:
        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.made.discard(name)


class _Disposing:
    """An engine for one `with` block, disposed after it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> Engine:
        return self.engine

    def __exit__(self, *exc: object) -> None:
        self.engine.dispose()
