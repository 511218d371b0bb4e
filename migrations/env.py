"""Alembic environment: migrations are generated from stock_pipeline.warehouse.tables.metadata.

The URL comes from the `sqlalchemy.url` option when the CLI sets it, else from the settings
(STOCK_PIPELINE_DATABASE_URL, or the embedded server under STOCK_PIPELINE_HOME).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from stock_pipeline.settings import Settings
from stock_pipeline.warehouse.engine import warehouse_url
from stock_pipeline.warehouse.tables import metadata
from stock_pipeline.warehouse.urls import sqlalchemy_url

config = context.config


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or warehouse_url(Settings.from_env())


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    # Yearly partitions (created on demand by the writer) and TimescaleDB's internal tables are
    # not in the metadata: never let autogenerate propose dropping them.
    return not (type_ == "table" and reflected and compare_to is None)


def run_migrations_offline() -> None:
    context.configure(
        url=sqlalchemy_url(_url(), "psycopg2"),
        target_metadata=metadata,
        literal_binds=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(sqlalchemy_url(_url(), "psycopg2"), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=metadata,
                include_object=include_object,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
