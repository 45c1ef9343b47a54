"""Which commits wait for the disk: mail taken in always; a sender's bookkeeping need not."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session

from ticketing.db import transaction


def _setting(session: Session, engine: Engine) -> str:
    connection = session.connection()
    if engine.dialect.name == "sqlite":
        level = connection.exec_driver_sql("PRAGMA synchronous").scalar_one()
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[int(level)]
    return str(connection.exec_driver_sql("SHOW synchronous_commit").scalar_one())


def _connection_id(session: Session) -> int:
    return id(session.connection().connection.dbapi_connection)


def test_a_commit_that_need_not_wait_leaves_the_next_one_waiting(engine: Engine) -> None:
    with transaction(engine) as session:
        usual = _setting(session, engine)
        first = _connection_id(session)
    with transaction(engine, durable=False) as session:
        relaxed = _setting(session, engine)
        assert _connection_id(session) == first  # the pool hands the same connection back
    with transaction(engine) as session:
        again = _setting(session, engine)
        assert _connection_id(session) == first
    if engine.dialect.name == "sqlite":
        assert (usual, relaxed, again) == ("FULL", "NORMAL", "FULL")
    else:
        # SET LOCAL ends with its transaction. (The test databases themselves are made
        # with synchronous_commit off, for speed: "usual" is what the database says.)
        assert relaxed == "off"
        assert again == usual
