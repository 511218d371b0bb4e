"""`stock-pipeline status`: what is configured and reachable, how far each group has got, the
gaps of the latest trading days, whether the daily run is overdue, and the last run's outcome.

Read-only: it starts nothing (an embedded server that is stopped is reported as stopped, and
what needs it is skipped). Overdue is judged with the trading calendar, unlike Dagster's cron
freshness, which knows no exchange holidays.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import socket
from typing import Any

from stock_pipeline.settings import Settings, redact_url

# Each group's progress: the newest trading day its table holds.
GROUP_TABLES = {
    "p0": "raw_k_daily",
    "etl": "stock_daily",
    "indicators": "technical_daily",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status", help="configuration, reachability, progress per group, gaps, the last run"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    print(f"home: {settings.home}")
    warehouse_url = _warehouse(settings)
    redis_url = _redis(settings)
    _baostock(settings)
    if warehouse_url is None:
        print("progress, gaps: unknown (the warehouse is not reachable)")
        return 1
    late = _progress(settings, warehouse_url, redis_url)
    _last_run(settings)
    return 1 if late else 0


def _warehouse(settings: Settings) -> str | None:
    from stock_pipeline.cli import _postgres_problem
    from stock_pipeline.embedded.postgres import EmbeddedPostgres
    from stock_pipeline.warehouse.engine import WAREHOUSE_DATABASE

    if settings.database_url:
        problem = _postgres_problem(settings.database_url)
        where = f"external {redact_url(settings.database_url)}"
        print(
            f"warehouse: {where}, "
            + ("reachable" if problem is None else f"UNREACHABLE: {problem}")
        )
        return settings.database_url if problem is None else None
    server = EmbeddedPostgres(settings.home / "postgres")
    if not server.is_running():
        print("warehouse: embedded PostgreSQL, stopped (stock-pipeline services start)")
        return None
    url = server.url(WAREHOUSE_DATABASE)
    print(f"warehouse: embedded PostgreSQL, running at {redact_url(url)}")
    return url


def _redis(settings: Settings) -> str | None:
    from stock_pipeline.cli import _redis_problem
    from stock_pipeline.embedded.redis import EmbeddedRedis

    if settings.redis_url:
        problem = _redis_problem(settings.redis_url)
        state = "reachable" if problem is None else f"UNREACHABLE: {problem}"
        print(f"redis cache: external {redact_url(settings.redis_url)}, {state}")
        return settings.redis_url if problem is None else None
    server = EmbeddedRedis(settings.home / "redis")
    if not server.is_running():
        print("redis cache: embedded, stopped")
        return None
    print(f"redis cache: embedded, running at {server.url()}")
    return server.url()


def _baostock(settings: Settings) -> None:
    endpoint = settings.baostock_endpoint
    host, port = (endpoint.host, endpoint.port) if endpoint else ("public-api.baostock.com", 10030)
    where = f"{host}:{port}" + ("" if endpoint else " (the real service)")
    try:
        socket.create_connection((host, port), timeout=3).close()
        state = "reachable"
    except OSError as exc:
        state = f"UNREACHABLE: {exc}"
    print(f"baostock: {where}, {state}; {settings.baostock_concurrency} sessions per run, "
          f"budget {settings.baostock_session_budget}")  # fmt: skip


def _progress(settings: Settings, url: str, redis_url: str | None) -> bool:
    """Prints each group's newest day, the gaps and whether the daily run is late."""
    import psycopg2

    from stock_pipeline.assets.partitions import latest_published_day
    from stock_pipeline.automation.integrity import checked_days, utc_now
    from stock_pipeline.calendar import load_calendar
    from stock_pipeline.warehouse.urls import asyncpg_dsn

    calendar = load_calendar(settings.home)
    published = latest_published_day(calendar, settings.daily_run_time)
    with contextlib.closing(psycopg2.connect(asyncpg_dsn(url))) as connection:
        newest = {group: _newest(connection, table) for group, table in GROUP_TABLES.items()}
        days = checked_days(calendar, settings, utc_now())
        gaps = _gaps(connection, days, settings) if days else []
    newest["cache"] = _cache_day(settings, redis_url)
    print(f"latest published trading day: {published}")
    for group, day in newest.items():
        print(f"  {group:<11} {day or '-'}")
    late = newest["etl"] is None or (published is not None and newest["etl"] < published)
    if late:
        print(f"OVERDUE: stock_daily ends {newest['etl']}, BaoStock has published {published}")
    if gaps:
        print(f"gaps in the last {len(days)} trading days ({len(gaps)}):")
        for gap in gaps[:20]:
            print(f"  {gap.asset} {gap.day}: {gap.reason}")
        print("  fill them: stock-pipeline backfill --start ... --end ... (or let the daemon's "
              "integrity_sensor do it)")  # fmt: skip
    elif days:
        print(f"gaps: none in the last {len(days)} trading days")
    return late or bool(gaps)


def _newest(connection: Any, table: str) -> dt.date | None:
    with connection.cursor() as cur:
        cur.execute(f"SELECT max(trade_date) FROM {table}")
        return cur.fetchone()[0]


def _gaps(connection: Any, days: list[dt.date], settings: Settings) -> list[Any]:
    from stock_pipeline.automation.gaps import find_gaps, read_counts

    return find_gaps(read_counts(connection, days), settings.coverage_tolerance)


def _cache_day(settings: Settings, redis_url: str | None) -> dt.date | None:
    if redis_url is None:
        return None
    import redis

    from stock_pipeline.cache.keys import CacheKeys, parse_version

    client = redis.Redis.from_url(redis_url, socket_timeout=3)
    try:
        version = client.get(CacheKeys(settings.cache_prefix).current)
    finally:
        client.close()
    if version is None:
        return None
    with contextlib.suppress(ValueError):  # not a version: the cache's own check says so
        return parse_version(version.decode())[0]
    return None


def _last_run(settings: Settings) -> None:
    """The newest run of the home's Dagster instance (skipped when its storage is down)."""
    import os

    home = settings.home / "dagster"
    if not (home / "dagster.yaml").exists():
        print("last run: none (no Dagster instance under the home yet)")
        return
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        from dagster import DagsterInstance

        with DagsterInstance.get() as instance:
            records = instance.get_run_records(limit=1)
            if not records:
                print("last run: none")
                return
            run = records[0].dagster_run
            partition = run.tags.get("dagster/partition") or run.tags.get(
                "dagster/asset_partition_range_start", ""
            )
            when = records[0].create_timestamp.strftime("%Y-%m-%d %H:%M UTC")
            print(f"last run: {run.job_name} {partition} {run.status.value} ({when}, "
                  f"{run.run_id[:8]})")  # fmt: skip
    except Exception as exc:  # status must report, not crash, on an unreachable instance
        print(f"last run: unknown ({type(exc).__name__}: {exc})")
