"""The local stack the commands run on: the servers the settings name or the embedded ones, an
optional BaoStock simulator, a migrated warehouse, and the Dagster instance of the home.

`stock-pipeline demo`, `dev`, `backfill` and `status` all start from here. What a stack
started, it stops (an ExitStack holds the callbacks); servers already running are left running.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.settings import Settings

# Stocks of the simulated market by default: enough for full indexes (the CSI 500's members
# rank 300-800 by size, and its check wants exactly 500).
SIMULATED_STOCKS = 1000
SIMULATOR_QPS = "2000"  # the simulator is local: BaoStock's politeness limit does not apply


class LocalStackError(Exception):
    """The stack cannot come up; the message says why and what to do."""


@dataclass
class Services:
    """URLs the runs use (as environment variables), and what was started here (and so is
    stopped here)."""

    env: dict[str, str]
    dagster_storage_url: str | None = None
    started: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def start_services(settings: Settings, stack: contextlib.ExitStack) -> Services:
    """The warehouse PostgreSQL, Dagster's storage database and Redis: configured ones as they
    are, embedded ones started if not running (and stopped when `stack` closes)."""
    from stock_pipeline.embedded.postgres import EmbeddedPostgres
    from stock_pipeline.embedded.redis import EmbeddedRedis
    from stock_pipeline.instance import embedded_storage_url, external_storage_url
    from stock_pipeline.warehouse.engine import WAREHOUSE_DATABASE
    from stock_pipeline.warehouse.urls import display_url

    env = dict(os.environ)
    env["STOCK_PIPELINE_HOME"] = str(settings.home)
    services = Services(env)
    if settings.database_url:
        url = settings.database_url
        services.dagster_storage_url = external_storage_url(settings, url)
        services.notes.append(f"warehouse: {display_url(url)} (configured)")
    else:
        postgres = EmbeddedPostgres(settings.home / "postgres")
        start_embedded(postgres, services, stack)
        url = postgres.ensure_database(WAREHOUSE_DATABASE)
        services.dagster_storage_url = (
            external_storage_url(settings, url)
            if settings.dagster_database_url
            else embedded_storage_url(postgres)
        )
        services.notes.append(f"warehouse: embedded PostgreSQL at {display_url(url)}")
    env["STOCK_PIPELINE_DATABASE_URL"] = url
    if settings.redis_url:
        services.notes.append(f"Redis cache: {display_url(settings.redis_url)} (configured)")
    else:
        redis = EmbeddedRedis(settings.home / "redis")
        start_embedded(redis, services, stack)
        env["STOCK_PIPELINE_REDIS_URL"] = redis.url()
        services.notes.append(f"Redis cache: embedded at {redis.url()}")
    return services


def start_embedded(server: Any, services: Services, stack: contextlib.ExitStack) -> None:
    if server.is_running():
        return
    server.start()
    services.started.append(server)
    stack.callback(server.stop)


def start_simulator(
    services: Services, stack: contextlib.ExitStack, codes: int, seed: int, end: dt.date
) -> str:
    """A BaoStock simulator process (`codes` stocks, data through `end`) that the services'
    environment points at; returns its endpoint."""
    from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorProcess

    if codes < 2:
        raise LocalStackError("a simulated market needs at least 2 stocks (--codes)")
    config = SimulatorConfig(seed=seed, n_codes=codes, end=end)
    simulator = stack.enter_context(SimulatorProcess(config))
    services.env["STOCK_PIPELINE_BAOSTOCK_ENDPOINT"] = simulator.endpoint
    services.env.setdefault("STOCK_PIPELINE_BAOSTOCK_QPS", SIMULATOR_QPS)
    services.notes.append(
        f"BaoStock: simulator at {simulator.endpoint} ({codes} stocks, seed {seed}, "
        f"data through {end})"
    )
    return simulator.endpoint


def latest_published_end(calendar: TradingCalendar, settings: Settings) -> dt.date:
    """The latest trading day BaoStock has published (Shanghai time): where a simulated
    market and a default range end."""
    from stock_pipeline.assets.partitions import latest_published_day

    last = latest_published_day(calendar, settings.daily_run_time)
    if last is None or last < settings.start_date:
        raise LocalStackError(
            "no trading day has been published yet since STOCK_PIPELINE_START_DATE"
        )
    return last


def migrate_warehouse(url: str) -> None:
    from stock_pipeline.warehouse import migrate

    migrate.upgrade(url)


def prepare_dagster_home(settings: Settings, services: Services) -> Path:
    """`<home>/dagster` with its dagster.yaml written from the settings; the services'
    environment points DAGSTER_HOME at it."""
    from stock_pipeline.instance import prepare_instance

    folder = prepare_instance(settings.home, services.dagster_storage_url, settings)
    services.env["DAGSTER_HOME"] = str(folder)
    return folder


@contextlib.contextmanager
def open_instance(dagster_home: Path) -> Iterator[Any]:
    """A handle on the instance (schema and the `baostock` pool created now, connections
    closed at the end)."""
    from dagster import DagsterInstance

    from stock_pipeline.instance import initialize_pools

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    instance = DagsterInstance.get()
    try:
        initialize_pools(instance)
        yield instance
    finally:
        instance.dispose()
