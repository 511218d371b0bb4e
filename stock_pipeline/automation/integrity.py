"""The integrity sensor: finds the gaps of the latest trading days and requests runs that fill
them (seed 002: after downtime, missing days are filled without re-syncing what exists).

Each tick:
1. the last `integrity_days` published trading days (from the calendar, never a future day);
2. the warehouse's counts for them -> gaps (automation/gaps.py);
3. minus what runs and backfills in flight already cover, minus what this sensor requested
   less than the cooldown ago and is still missing (a run that failed is not retried at once);
4. one ranged run per stretch of consecutive days needing the same assets.

The cursor remembers when each (asset, day) was last requested and forgets it once the gap is
filled, so a gap filled once and lost again is requested again at once. Run keys carry the
tick's time: a fixed key would be deduplicated forever.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Iterable

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from stock_pipeline.assets.partitions import DATE_FORMAT, latest_published_day, partition_day
from stock_pipeline.automation import gaps as gap_rules
from stock_pipeline.automation.gaps import REFERENCE_ASSETS
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import WarehouseResource
from stock_pipeline.settings import Settings

SENSOR_NAME = "integrity_sensor"
SOURCE_TAG = "stock_pipeline/requested_by"
GAP_TAG = "stock_pipeline/gaps"


def checked_days(calendar: TradingCalendar, settings: Settings, now: dt.datetime) -> list[dt.date]:
    """The latest `integrity_days` published trading days, from the start date on."""
    last = latest_published_day(calendar, settings.daily_run_time, now)
    if last is None or last < settings.start_date:
        return []
    days: list[dt.date] = []
    day: dt.date | None = last
    while day is not None and day >= settings.start_date and len(days) < settings.integrity_days:
        days.append(day)
        day = calendar.previous_session(day)
    return days[::-1]


def in_flight(instance: dg.DagsterInstance, calendar: TradingCalendar) -> set[tuple[str, dt.date]]:
    """(asset, day) pairs that queued or running runs, or running backfills, will write."""
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    pairs: set[tuple[str, dt.date]] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=NOT_FINISHED_STATUSES)):
        days = _run_days(run.tags, calendar)
        assets = [key.to_user_string() for key in run.asset_selection or ()]
        pairs.update((asset, day) for asset in assets for day in days)
    requested = BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED])
    for backfill in instance.get_backfills(filters=requested):
        target = backfill.asset_backfill_data and backfill.asset_backfill_data.target_subset
        for item in target.iterate_asset_partitions() if target else ():
            if item.partition_key:
                pairs.add((item.asset_key.to_user_string(), partition_day(item.partition_key)))
    return pairs


def _run_days(tags: dict[str, str], calendar: TradingCalendar) -> list[dt.date]:
    if PARTITION_NAME_TAG in tags:
        return [partition_day(tags[PARTITION_NAME_TAG])]
    if ASSET_PARTITION_RANGE_START_TAG in tags:
        start = partition_day(tags[ASSET_PARTITION_RANGE_START_TAG])
        end = partition_day(tags[ASSET_PARTITION_RANGE_END_TAG])
        return calendar.sessions_between(start, end)
    return []


def _pair_key(asset: str, day: dt.date) -> str:
    return f"{asset}@{day:{DATE_FORMAT}}"


def plan(
    gaps: list[gap_rules.Gap],
    busy: set[tuple[str, dt.date]],
    requested: dict[str, float],
    now_ts: float,
    cooldown_s: float,
) -> tuple[dict[str, list[dt.date]], dict[str, float], list[str]]:
    """What to request now: (days by asset, the new cursor, notes on what was held back)."""
    current = {_pair_key(g.asset, g.day) for g in gaps}
    cursor = {key: ts for key, ts in requested.items() if key in current}  # filled: forgotten
    wanted: dict[str, list[dt.date]] = {}
    held_in_flight = held_cooling = 0
    for gap in gaps:
        key = _pair_key(gap.asset, gap.day)
        if (gap.asset, gap.day) in busy:
            held_in_flight += 1
        elif now_ts - cursor.get(key, -1e18) < cooldown_s:
            held_cooling += 1
        else:
            wanted.setdefault(gap.asset, []).append(gap.day)
            cursor[key] = now_ts
    notes = []
    if held_in_flight:
        notes.append(f"{held_in_flight} already in flight")
    if held_cooling:
        notes.append(f"{held_cooling} requested less than {cooldown_s:.0f}s ago, still missing")
    return wanted, cursor, notes


def run_requests(
    runs: Iterable[tuple[tuple[str, ...], dt.date, dt.date]], job_name: str, now_ts: float
) -> list[dg.RunRequest]:
    """One RunRequest per (selection, first, last): a single partition or a ranged run."""
    requests = []
    for selection, first, last in runs:
        start, end = first.strftime(DATE_FORMAT), last.strftime(DATE_FORMAT)
        identity = f"{','.join(selection)}|{start}|{end}|{now_ts:.0f}"
        tags = {SOURCE_TAG: SENSOR_NAME, GAP_TAG: f"{start}..{end}"}
        kwargs = {}
        if first == last:
            kwargs["partition_key"] = start
        else:
            tags |= {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}
        requests.append(
            dg.RunRequest(
                run_key="integrity-" + hashlib.sha1(identity.encode()).hexdigest()[:16],
                job_name=job_name,
                asset_selection=[dg.AssetKey(a) for a in selection],
                tags=tags,
                **kwargs,
            )
        )
    return requests


def describe(gaps: list[gap_rules.Gap], days: list[dt.date]) -> str:
    if not gaps:
        return f"no gaps in {len(days)} trading days ({days[0]}..{days[-1]})" if days else ""
    by_asset: dict[str, list[str]] = {}
    for gap in gaps:
        by_asset.setdefault(gap.asset, []).append(f"{gap.day} {gap.reason}")
    parts = [
        f"{asset}: " + "; ".join(items[:5]) + (" ..." if len(items) > 5 else "")
        for asset, items in by_asset.items()
    ]
    return f"{len(gaps)} gaps in {len(days)} trading days ({days[0]}..{days[-1]}): " + " | ".join(
        parts
    )


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def build_integrity_sensor(
    calendar: TradingCalendar,
    settings: Settings,
    job_name: str,
    clock: Callable[[], dt.datetime] = utc_now,
) -> dg.SensorDefinition:
    """The sensor; `clock` gives "now" (tests replay a past day with their own)."""

    @dg.sensor(
        name=SENSOR_NAME,
        job_name=job_name,
        minimum_interval_seconds=settings.integrity_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every {settings.integrity_interval_s}s (and when the daemon starts): the last "
            f"{settings.integrity_days} trading days per daily asset; requests runs for missing "
            "and incomplete days, never for one in flight."
        ),
    )
    def integrity_sensor(
        context: dg.SensorEvaluationContext, warehouse: WarehouseResource
    ) -> dg.SensorResult:
        began = time.perf_counter()
        now = clock()
        days = checked_days(calendar, settings, now)
        if not days:
            return dg.SensorResult(skip_reason="no published trading day to check yet")
        gaps, listings = read_warehouse(warehouse, days, settings.coverage_tolerance)
        requested = json.loads(context.cursor) if context.cursor else {}
        busy = in_flight(context.instance, calendar) if gaps else set()
        wanted, cursor, notes = plan(
            gaps, busy, requested, now.timestamp(), settings.integrity_retry_cooldown_s
        )
        runs = gap_rules.group_runs(wanted, days)
        if runs and not listings:  # a new warehouse: its listings first
            runs = [(REFERENCE_ASSETS + selection, a, b) for selection, a, b in runs]
        requests = run_requests(runs, job_name, now.timestamp())
        summary = describe(gaps, days) + (f"; held back: {', '.join(notes)}" if notes else "")
        context.log.info(
            f"[integrity] {summary}; {len(requests)} runs requested "
            f"({time.perf_counter() - began:.2f}s)"
        )
        if not requests:
            return dg.SensorResult(skip_reason=summary, cursor=json.dumps(cursor))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))

    return integrity_sensor


def read_warehouse(
    warehouse: WarehouseResource, days: list[dt.date], tolerance: float
) -> tuple[list[gap_rules.Gap], bool]:
    """The gaps of `days`, and whether raw_stock_basic holds the listings (the raw bars need
    them): one connection, two queries (psycopg2: a tick needs no event loop)."""
    import psycopg2

    from stock_pipeline.warehouse.engine import warehouse_url
    from stock_pipeline.warehouse.urls import asyncpg_dsn

    connection = psycopg2.connect(asyncpg_dsn(warehouse_url(warehouse.settings())))
    try:
        counts = gap_rules.read_counts(connection, days)
        with connection.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM raw_stock_basic)")
            listings = bool(cur.fetchone()[0])
    finally:
        connection.close()
    return gap_rules.find_gaps(counts, tolerance), listings
