"""The engine, the one transaction() that commits, and the schema's migrations."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StorageError(RuntimeError):
    """The database or the data folder could not take a write: a temporary failure.

    `mail_fault` when the mail itself caused it (a statement it made too large), not
    the database: trying that mail again fails again, so it must not stay in front.
    """

    def __init__(self, message: str, *, mail_fault: bool = False) -> None:
        super().__init__(message)
        self.mail_fault = mail_fault


# Faults of the database, not of what was asked of it. PostgreSQL SQLSTATE classes:
# 08 connection, 40 rollback (deadlock, serialization), 53 resources (disk full),
# 55 object state (lock not available), 57 operator intervention (shutdown, timeout),
# 58 system error, XX internal error.
_DATABASE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
_SQLITE_DATABASE_ERRORS = frozenset({
    "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN",
    "SQLITE_READONLY", "SQLITE_NOMEM", "SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_PROTOCOL",
    "SQLITE_INTERRUPT", "SQLITE_PERM", "SQLITE_AUTH", "SQLITE_NOLFS",
})
_CONNECTION_WORDS = ("connect", "server closed", "terminat", "timeout", "timed out", "ssl",
                     "closed the connection", "the connection is closed")


def mail_fault(exc: DBAPIError) -> bool:
    """Whether the statement failed for what it asked (too many parameters, a limit of
    the database), not because the database was away, busy or out of room."""
    if getattr(exc, "connection_invalidated", False):
        return False
    original = exc.orig
    state = getattr(original, "sqlstate", None)
    if state:
        return str(state)[:2] not in _DATABASE_CLASSES
    name = getattr(original, "sqlite_errorname", None)
    if name:
        return str(name) not in _SQLITE_DATABASE_ERRORS
    # psycopg's own refusal before the server saw the statement carries no SQLSTATE
    # ("number of parameters must be between 0 and 65535"); so does a lost connection.
    text = str(original).lower()
    return not any(word in text for word in _CONNECTION_WORDS)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            # Customers' mail: readable by the owner only (its -wal and -shm files
            # take the database file's mode).
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not Path(path).exists():
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:
                    pass
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets readers run beside the writer; FULL makes each commit durable
            # before we answer 250: an accepted mail is never lost.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            _record.info["synchronous"] = "FULL"

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # A database that does not answer is a temporary failure after ten seconds (451 to
    # the sender, 75 to the MTA), not after the system's TCP timeout of minutes.
    # (A connect_timeout in the URL's query wins.)
    given = "connect_timeout" in make_url(url).query
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10,
                         connect_args={} if given else {"connect_timeout": 10})


_WRITERS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()


@contextmanager
def _one_writer(engine: Engine) -> Iterator[None]:
    """SQLite takes one writer at a time, and a waiting writer sleeps in steps of up to
    100 ms: queue this process's transactions on a lock instead, which wakes at once."""
    if engine.dialect.name != "sqlite":
        yield
        return
    lock = _WRITERS.setdefault(engine, threading.Lock())
    with lock:
        yield


# Told, after each commit on an engine, the names of the tables it wrote (see on_commit).
_LISTENERS: weakref.WeakKeyDictionary[Engine, list[Callable[[frozenset[str]], None]]] = (
    weakref.WeakKeyDictionary())
_open = threading.local()  # this thread's transaction: its engine, and the tables written


def on_commit(engine: Engine, listener: Callable[[frozenset[str]], None]) -> Callable[[], None]:
    """Call `listener` with the names of the tables each transaction on `engine` inserted
    rows into or changed rows of, once it has committed, whatever part of the desk it
    came from. Returns the function that stops it."""
    listeners = _LISTENERS.setdefault(engine, [])
    listeners.append(listener)
    if not event.contains(engine, "after_cursor_execute", _note_written):
        event.listen(engine, "after_cursor_execute", _note_written)

    def stop() -> None:
        if listener in listeners:
            listeners.remove(listener)

    return stop


def _note_written(connection: Any, cursor: Any, statement: str, parameters: Any,
                  context: Any, executemany: bool) -> None:
    current = getattr(_open, "transaction", None)
    if current is None or current[0] is not connection.engine or context is None:
        return
    # An UPDATE that changed no row wrote nothing: a worker's claim that found no due
    # row must not wake that worker again. (SQLite counts the rows of an UPDATE with
    # RETURNING only as they are read: such an UPDATE is not seen here.)
    if context.compiled is not None and (
            context.isinsert or (context.isupdate and cursor.rowcount != 0)):
        table = getattr(context.compiled.statement, "table", None)
        if table is not None:
            current[1].add(table.name)


@contextmanager
def transaction(engine: Engine, *, durable: bool = True) -> Iterator[Session]:
    """The only place that commits: everything done in the block lands together or not at all.

    `durable=False`: the commit does not wait for the disk. It can be lost to a power cut
    (never half of it), until the next durable commit or checkpoint carries it there
    (SQLite in WAL mode: synchronous=NORMAL; PostgreSQL: synchronous_commit off, which
    its WAL writer flushes within a fraction of a second). For bookkeeping that is done
    again when lost, such as the record that a mail went out: never for mail taken in."""
    written: set[str] = set()
    outer = getattr(_open, "transaction", None)
    _open.transaction = (engine, written)
    try:
        with _one_writer(engine), _session(engine, durable) as session:
            yield session
    finally:
        _open.transaction = outer
    if written:
        for listener in list(_LISTENERS.get(engine, ())):
            try:
                listener(frozenset(written))
            except Exception:  # what committed stays committed
                log.exception("a listener of commits failed")


@contextmanager
def _session(engine: Engine, durable: bool = True) -> Iterator[Session]:
    session = Session(engine, expire_on_commit=False)
    try:
        if engine.dialect.name == "sqlite":
            connection = session.connection()
            # SQLite sets how a commit reaches the disk for the connection, and not
            # inside a transaction: set before it opens, whenever it is not as wanted.
            level = "FULL" if durable else "NORMAL"
            if connection.info.get("synchronous") != level:
                connection.exec_driver_sql(f"PRAGMA synchronous={level}")
                connection.info["synchronous"] = level
            # The write lock from the start: SQLite's driver would open the transaction
            # only at the first write, and a transaction that has read before another
            # process wrote cannot write at all (SQLITE_BUSY, no waiting). Opened now,
            # a writer waits its turn, and a SAVEPOINT inside it stays inside it.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif not durable and engine.dialect.name == "postgresql":
            session.connection().exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        yield session
        session.commit()
    except (OperationalError, DBAPIError) as exc:
        session.rollback()
        if getattr(exc, "connection_invalidated", False) or isinstance(exc, OperationalError):
            raise StorageError(str(exc).splitlines()[0], mail_fault=mail_fault(exc)) from exc
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# The newest migration. `serve` and `deliver` compare the database with this instead of
# loading Alembic at every start (a test checks it is Alembic's head).
SCHEMA_REVISION = "0015"


def head_revision() -> str | None:
    """Alembic's newest revision, read from the migration scripts."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        value = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return str(value) if value is not None else None


def schema_state(engine: Engine) -> str:
    """"current", "empty" (nothing yet) or "old" (an earlier revision: run mailgate init)."""
    current = current_revision(engine)
    if current is None:
        return "empty"
    return "current" if current == SCHEMA_REVISION else "old"


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    command.upgrade(config, "head")


def one_at_a_time(session: Session, lock: int) -> None:
    """Transactions that pass the same lock number go on from here one after another, each
    waiting for the one before to end: so what one counted (asks in the last hour, say)
    still holds when it writes. SQLite has one writer at a time already."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": lock})
