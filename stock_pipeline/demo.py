"""`stock-pipeline demo`: every group end to end on this machine (the daily graph: raw -> business
tables -> indicators -> cache, with the index bars; then financial statements, corporate actions,
weekly and monthly bars, index members, industries and macro series), and a read of the result
through stock_pipeline.read, point-in-time reads included.

Starts what is missing (a BaoStock simulator, the embedded PostgreSQL and Redis), migrates the
warehouse, keeps a Dagster instance under STOCK_PIPELINE_HOME/dagster (so `stock-pipeline dev` shows
these runs later), and materializes the graph through Dagster's own `dagster asset materialize`
in runs: the calendar and listings first (the stored calendar may extend the partitions),
then the trading-day range, then one run per slower group over the partitions covering the
range (automation/cadence.py: covering_runs). Progress comes from the run's event log; a
summary ends it. What the demo started, it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

from stock_pipeline.automation.gaps import DAILY_ASSETS, INDEX_DAILY_ASSETS, REFERENCE_ASSETS
from stock_pipeline.calendar import NotATradingDayError, TradingCalendar, load_calendar
from stock_pipeline.local import (
    SIMULATED_STOCKS,
    LocalStackError,
    Services,
    latest_published_end,
    migrate_warehouse,
    open_instance,
    prepare_dagster_home,
    start_services,
    start_simulator,
)
from stock_pipeline.runs import Outcome, RunFailed, materialize
from stock_pipeline.settings import Settings

DEFAULT_MONTHS = 3
TABLES = (
    *REFERENCE_ASSETS[:2],
    *DAILY_ASSETS[:3],
    "trade_calendar",
    "stocks",
    "stock_daily",
    "technical_daily",
    "index_daily",
    "finance",
    "corporate_actions",
    "raw_k_weekly",
    "raw_k_monthly",
    "index_constituents",
    "industry_membership",
    "macro_series",
)


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="materialize the daily graph for a range, offline on a simulator",
        description=(
            "Run the daily graph (P0 raw -> business tables -> indicators -> Redis cache, with "
            "checks) through Dagster "
            "for a range of trading days. By default against a local BaoStock simulator with "
            f"{SIMULATED_STOCKS} stocks and the last {DEFAULT_MONTHS} months of its calendar."
        ),
    )
    parser.add_argument("--start", type=dt.date.fromisoformat, help="first trading day")
    parser.add_argument("--end", type=dt.date.fromisoformat, help="last trading day")
    parser.add_argument(
        "--codes", type=int, default=SIMULATED_STOCKS, help="stocks in the simulator's market"
    )
    parser.add_argument("--seed", type=int, default=7, help="the simulator's market")
    parser.add_argument(
        "--source",
        choices=("simulator", "baostock"),
        default="simulator",
        help="baostock: the real service (or STOCK_PIPELINE_BAOSTOCK_ENDPOINT), every stock",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _demo(args)
    except (DemoError, NotATradingDayError, LocalStackError, RunFailed) as exc:
        print(f"stock-pipeline demo: error: {exc}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    began = time.monotonic()
    settings = Settings.from_env()
    home = settings.home
    calendar = load_calendar(home)
    for day, what in ((args.start, "--start"), (args.end, "--end")):
        if day is not None and day <= calendar.last_day:
            calendar.require_session(day, what)  # fail before starting anything
    end = latest_published_end(calendar, settings) if args.end is None else args.end
    with contextlib.ExitStack() as stack:
        services = start_services(settings, stack)
        if args.source == "simulator":
            start_simulator(services, stack, args.codes, args.seed, end)
        else:
            where = os.environ.get("STOCK_PIPELINE_BAOSTOCK_ENDPOINT") or "the real service"
            services.notes.append(f"BaoStock: {where}, every listed stock")
        migrate_warehouse(services.env["STOCK_PIPELINE_DATABASE_URL"])
        instance = prepare_dagster_home(settings, services)
        dagster = stack.enter_context(open_instance(instance))  # storage ready before any run
        for note in services.notes:
            print(f"demo: {note}")
        outcome = Outcome()
        materialize(dagster, services.env, REFERENCE_ASSETS, None, "calendar and listings", outcome)
        calendar = load_calendar(home)  # the stored BaoStock calendar may extend it now
        start = args.start or _months_before(calendar, end, DEFAULT_MONTHS)
        sessions = calendar.require_range(start, end)
        materialize(
            dagster,
            services.env,
            (*DAILY_ASSETS, *INDEX_DAILY_ASSETS),
            (start, end),
            f"{start}..{end}, {len(sessions)} trading days",
            outcome,
        )
        for group in _slower_groups(calendar, settings, start, end):
            materialize(dagster, services.env, (group.selection,), group.keys, group.title, outcome)
        try:
            _read_example(services.env)
        except Exception as exc:  # the runs succeeded: report the read, keep the summary
            print(f"\ndemo: reading the result back failed: {exc}")
        _summary(services, outcome, time.monotonic() - began, home)
    return 0 if outcome.failed == 0 else 1


def _slower_groups(
    calendar: TradingCalendar, settings: Settings, start: dt.date, end: dt.date
) -> list[Any]:
    # Imported here: the CLI starts without Dagster.
    from stock_pipeline.assets.partitions import build_partitions
    from stock_pipeline.automation.cadence import covering_runs

    return covering_runs(build_partitions(calendar, settings.start_date), start, end)


def _months_before(calendar: TradingCalendar, end: dt.date, months: int) -> dt.date:
    """The first trading day after the same day `months` months before `end`."""
    year, month = divmod(end.year * 12 + end.month - 1 - months, 12)
    first_of_month = dt.date(year, month + 1, 1)
    days_in_month = (
        dt.date(year + (month + 1) // 12, (month + 1) % 12 + 1, 1) - first_of_month
    ).days
    same_day = first_of_month + dt.timedelta(days=min(end.day, days_in_month) - 1)
    first = calendar.first_session_on_or_after(same_day + dt.timedelta(days=1))
    assert first is not None
    return first


def _read_example(env: dict[str, str]) -> None:
    """What a strategy sees: a screen on the cached cross-section, one code's latest values and
    its forward-adjusted bars (the code in the README's "Reading the data")."""
    import pandas as pd

    from stock_pipeline.read import MarketReader

    with MarketReader(Settings.from_env(env)) as reader:
        day = reader.cross_section(columns=["close", "pct_chg", "close_hfq", "ma20", "rsi6"])
        if day.empty:
            return
        top = day.sort_values("pct_chg", ascending=False).head(5)
        code = str(top.index[0])
        latest = reader.latest(code)
        week = (latest["trade_date"].iloc[0] - pd.Timedelta(days=7)).date()
        bars = reader.bars(code, start=week, adjust="qfq")
        as_of = _point_in_time(reader, code, latest["trade_date"].iloc[0].date())
        served = reader.served
    with pd.option_context("display.width", 100, "display.max_columns", 8):
        print("\nRead it back (stock_pipeline.read; indicators are on back-adjusted prices,")
        print("compare them with close_hfq):")
        print("  read.cross_section(columns=[...]): the day's top gainers")
        print(_indent(top.round(2).to_string()))
        shown = ["close_hfq", "ma5", "macd_hist", "kdj_k", "boll_upper"]
        print(f"  read.latest({code!r})[{shown}]")
        print(_indent(latest[shown].round(3).to_string()))
        print(f'  read.bars({code!r}, start="{week}", adjust="qfq")')
        print(_indent(bars[["open", "high", "low", "close", "volume"]].round(3).to_string()))
        for call, shown_value in as_of:
            print(f"  {call}")
            print(_indent(shown_value))
    print(f"  (reads served: {served['redis']} by Redis, {served['postgres']} by PostgreSQL)")


def _point_in_time(reader: Any, code: str, day: dt.date) -> list[tuple[str, str]]:
    """The point-in-time reads on `day`, shown as (call, result); a group the run could not
    fill shows its error instead."""
    month_ago = day - dt.timedelta(days=30)
    reads = (
        (f'read.universe("{day}")', lambda: f"{len(reader.universe(day))} stocks trading"),
        (
            f'read.index_members("hs300", "{month_ago}")',
            lambda: _members(reader.index_members("hs300", month_ago)),
        ),
        (
            f'read.finance_as_of("{day}", codes=[{code!r}])',
            lambda: reader.finance_as_of(day, [code])[
                ["stat_date", "pub_date", "roe_avg", "net_profit", "eps_ttm"]
            ].to_string(),
        ),
        (
            f'read.industry_as_of("{day}", codes=[{code!r}])',
            lambda: reader.industry_as_of(day, [code]).to_string(),
        ),
    )
    out = []
    for call, read in reads:
        try:
            out.append((call, read()))
        except ValueError as exc:
            out.append((call, f"not available: {exc}"))
    return out


def _members(codes: list[str]) -> str:
    return f"{len(codes)} members: {', '.join(codes[:6])}{', ...' if len(codes) > 6 else ''}"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _summary(services: Services, outcome: Outcome, seconds: float, home: Path) -> None:
    import psycopg2

    from stock_pipeline.warehouse.urls import asyncpg_dsn, display_url

    url = services.env["STOCK_PIPELINE_DATABASE_URL"]
    with psycopg2.connect(asyncpg_dsn(url)) as conn, conn.cursor() as cur:
        for name in TABLES:
            cur.execute(f'SELECT count(*) FROM "{name}"')
            outcome.rows[name] = cur.fetchone()[0]
    print(f"\ndemo: done in {seconds:.0f}s")
    width = max(len(n) for n in outcome.rows)
    for name, count in outcome.rows.items():
        print(f"  {name:<{width}}  {count:>12,} rows")
    checks = outcome.passed_checks + outcome.failed
    print(f"  checks: {outcome.passed_checks}/{checks} passed")
    for name in outcome.failed_checks:
        print(f"    failed: {name} (details in the Dagster UI)")
    print("\nWhere to look next:")
    if services.started:
        print("  the demo stopped the embedded servers it started; bring them back with")
        print("    uv run stock-pipeline services start")
    print(f"  psql {display_url(url)}")
    print("  uv run stock-pipeline dev --simulator   # these runs in the UI, with the daemon")
