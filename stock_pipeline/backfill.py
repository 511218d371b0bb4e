"""`stock-pipeline backfill --start D1 --end D2 [--select ...] [--force]`: fill a range of
trading days.

Only what is missing or incomplete (the integrity sensor's gap rules, automation/gaps.py) is
run, each gap with the daily assets downstream of it, unless --force reruns every day of the
range. With a Dagster daemon running on the instance the work goes in as ONE Dagster backfill,
visible in the UI, and this command follows it; without one, it runs here through `dagster asset
materialize` (one ranged run per stretch of days needing the same assets). Either way a
progress bar shows what is done.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import time
from typing import Any

from stock_pipeline.automation.gaps import (
    DAILY_ASSETS,
    fill_selection,
    find_gaps,
    group_runs,
    read_counts,
)
from stock_pipeline.calendar import NotATradingDayError, TradingCalendar, load_calendar
from stock_pipeline.local import (
    LocalStackError,
    migrate_warehouse,
    open_instance,
    prepare_dagster_home,
    start_services,
)
from stock_pipeline.runs import Outcome, RunFailed, materialize
from stock_pipeline.settings import Settings

DAEMON_FRESH_S = 120  # a daemon heartbeat newer than this: the daemon is running
BAR_WIDTH = 30

Run = tuple[tuple[str, ...], dt.date, dt.date]


class BackfillError(Exception):
    """The backfill cannot go on; the message says why and what to do."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "backfill",
        help="fill missing or incomplete trading days of a range",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--start", type=dt.date.fromisoformat, required=True, help="first day")
    parser.add_argument("--end", type=dt.date.fromisoformat, required=True, help="last day")
    parser.add_argument(
        "--select",
        default=",".join(DAILY_ASSETS),
        help="comma-separated daily assets (default: the whole daily graph); downstream assets "
        "of a gap are always included",
    )
    parser.add_argument("--force", action="store_true", help="rerun every day, not only gaps")
    parser.add_argument(
        "--in-process", action="store_true", help="run here even when a daemon is running"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _backfill(args)
    except (BackfillError, NotATradingDayError, LocalStackError, RunFailed) as exc:
        print(f"stock-pipeline backfill: error: {exc}", file=sys.stderr)
        return 2


def _backfill(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    calendar = load_calendar(settings.home)
    sessions = _sessions(calendar, settings, args.start, args.end)
    selection = _selection(args.select)
    with contextlib.ExitStack() as stack:
        services = start_services(settings, stack)
        migrate_warehouse(services.env["STOCK_PIPELINE_DATABASE_URL"])
        runs = _plan(
            services.env["STOCK_PIPELINE_DATABASE_URL"], sessions, selection, args, settings
        )
        if not runs:
            print(f"backfill: nothing to do: {sessions[0]}..{sessions[-1]} is complete "
                  "(--force reruns it)")  # fmt: skip
            return 0
        _describe(runs)
        home = prepare_dagster_home(settings, services)
        instance = stack.enter_context(open_instance(home))
        if _daemon_running(instance) and not args.in_process:
            return _launch_backfill(instance, runs, settings)
        return _run_here(instance, services.env, runs)


def _sessions(
    calendar: TradingCalendar, settings: Settings, start: dt.date, end: dt.date
) -> list[dt.date]:
    from stock_pipeline.assets.partitions import latest_published_day

    if start < settings.start_date:
        raise BackfillError(
            f"--start {start} is before STOCK_PIPELINE_START_DATE ({settings.start_date}), "
            "the first partition: lower that setting to go further back"
        )
    published = latest_published_day(calendar, settings.daily_run_time)
    if published is None or end > published:
        raise BackfillError(
            f"--end {end} is not published yet: the latest published trading day is {published}"
        )
    sessions = calendar.sessions_between(start, end)
    if not sessions:
        raise BackfillError(f"no trading day between {start} and {end}")
    return sessions


def _selection(text: str) -> tuple[str, ...]:
    chosen = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(chosen) - set(DAILY_ASSETS))
    if unknown or not chosen:
        raise BackfillError(
            f"--select: unknown daily asset(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(DAILY_ASSETS)}"
        )
    return fill_selection(chosen)


def _plan(
    url: str,
    sessions: list[dt.date],
    selection: tuple[str, ...],
    args: argparse.Namespace,
    settings: Settings,
) -> list[Run]:
    """Ranged runs over the gaps of `sessions` (every day with --force)."""
    if args.force:
        return [(selection, sessions[0], sessions[-1])]
    import psycopg2

    from stock_pipeline.warehouse.urls import asyncpg_dsn

    with contextlib.closing(psycopg2.connect(asyncpg_dsn(url))) as connection:
        gaps = find_gaps(read_counts(connection, sessions), settings.coverage_tolerance)
    days_by_asset: dict[str, list[dt.date]] = {}
    for gap in gaps:
        days_by_asset.setdefault(gap.asset, []).append(gap.day)
    runs = group_runs(days_by_asset, sessions)
    # Only what was asked for (and downstream of it): an upstream gap outside it is left.
    narrowed = [(tuple(a for a in s if a in selection), first, last) for s, first, last in runs]
    return [run for run in narrowed if run[0]]


def _describe(runs: list[Run]) -> None:
    print(f"backfill: {len(runs)} run(s) to fill:")
    for selection, first, last in runs:
        span = str(first) if first == last else f"{first}..{last}"
        print(f"  {span}: {', '.join(selection)}")


def _daemon_running(instance: Any) -> bool:
    heartbeats = instance.get_daemon_heartbeats()
    beat = heartbeats.get("BACKFILL")
    return beat is not None and time.time() - beat.timestamp < DAEMON_FRESH_S


def _run_here(instance: Any, env: dict[str, str], runs: list[Run]) -> int:
    outcome = Outcome()
    began = time.monotonic()
    for done, (selection, first, last) in enumerate(runs):
        _bar(done, len(runs), f"{first}..{last}")
        materialize(
            instance, env, selection, (first, last), f"{first}..{last}", outcome, "backfill"
        )
    _bar(len(runs), len(runs), f"done in {time.monotonic() - began:.0f}s")
    print(f"backfill: {len(outcome.runs)} run(s), checks {outcome.passed_checks} passed, "
          f"{outcome.failed} failed")  # fmt: skip
    return 0 if outcome.failed == 0 else 1


def _launch_backfill(instance: Any, runs: list[Run], settings: Settings) -> int:
    """One Dagster backfill for every (asset, day) of `runs`; followed until it ends."""
    import dagster as dg
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.events import AssetKeyPartitionKey
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from stock_pipeline.definitions import build_definitions

    graph = build_definitions(settings).resolve_asset_graph()
    calendar = load_calendar(settings.home)
    wanted = {
        AssetKeyPartitionKey(dg.AssetKey(asset), day.isoformat())
        for selection, first, last in runs
        for day in calendar.sessions_between(first, last)
        for asset in selection
    }
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=make_new_backfill_id(),
        backfill_timestamp=time.time(),
        tags={"stock_pipeline/requested_by": "stock-pipeline backfill"},
        dynamic_partitions_store=instance,
        asset_graph_subset=AssetGraphSubset.from_asset_partition_set(wanted, graph),
        title="stock-pipeline backfill",
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    print(f"backfill: launched Dagster backfill {backfill.backfill_id} "
          f"({len(wanted)} asset partitions); the daemon runs it, the UI shows it")  # fmt: skip
    return _follow_backfill(instance, backfill.backfill_id, len(wanted))


def _follow_backfill(instance: Any, backfill_id: str, total: int) -> int:
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus

    while True:
        backfill = instance.get_backfill(backfill_id)
        runs = instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill_id))
        done = sum(1 for r in runs if r.is_finished)
        status = backfill.status
        _bar(done, max(len(runs), 1), f"{len(runs)} run(s), {status.value.lower()}")
        if status not in (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING,
                          BulkActionStatus.FAILING):  # fmt: skip
            print()
            failed = [r.run_id for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
            for run_id in failed:
                print(f"backfill: run {run_id} failed (see the UI)")
            return 0 if status == BulkActionStatus.COMPLETED_SUCCESS and not failed else 1
        time.sleep(2)


def _bar(done: int, total: int, note: str) -> None:
    """A progress line: redrawn in place on a terminal, one line per update otherwise."""
    filled = BAR_WIDTH * done // max(total, 1)
    line = f"backfill: [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} {note}"
    if sys.stdout.isatty():
        print("\r" + line.ljust(100), end="\n" if done >= total else "", flush=True)
    else:
        print(line, flush=True)
