"""Database URL spelling: users give plain postgresql:// URLs, each driver gets its own form.

SQLAlchemy 2.1 maps a bare postgresql:// URL to psycopg 3, which we do not ship, so the driver is
always spelled out here: asyncpg for the warehouse, psycopg2 for Alembic and Dagster's storage.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy.engine import URL, make_url

Driver = Literal["asyncpg", "psycopg2"]


def _parse(url: str | URL) -> URL:
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed


def sqlalchemy_url(url: str | URL, driver: Driver = "asyncpg", database: str | None = None) -> URL:
    """The URL with its driver set, e.g. postgresql+asyncpg://... ."""
    parsed = _parse(url).set(drivername=f"postgresql+{driver}")
    return parsed.set(database=database) if database else parsed


def asyncpg_dsn(url: str | URL, database: str | None = None) -> str:
    """A libpq-style postgresql:// DSN (asyncpg.connect and psycopg2.connect accept it).

    A unix-socket directory given as ?host=/dir is kept as a query parameter, which both accept.
    """
    parsed = _parse(url).set(drivername="postgresql")
    if database:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def display_url(url: str | URL) -> str:
    """The URL with its password masked: the only form that may reach logs and errors."""
    return _parse(url).render_as_string(hide_password=True)
