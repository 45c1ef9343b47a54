"""Alembic environment: runs migrations on the engine mailgate hands in."""

from alembic import context
from sqlmodel import SQLModel

import ticketing.models  # noqa: F401  (registers the tables)
from ticketing.search import not_search_object

engine = context.config.attributes.get("engine")
if engine is None:
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=not_search_object,  # written by hand in their migration
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
