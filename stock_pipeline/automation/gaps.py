"""Integrity gaps: trading days the warehouse lacks, or holds only in part, per daily asset.

The warehouse is the truth (a day's rows can be deleted or lost whatever Dagster remembers), so
gaps are counted in its tables: one grouped count per table over the checked days, on the
(trade_date, code) indexes. A day is

- missing for an asset when its table holds no row for it;
- incomplete when it holds fewer rows than expected, less the tolerance: the stocks
  query_all_stock lists as trading that day for the raw bars and stock_daily, stock_daily's rows
  for technical_daily (one row each).

A gap in an asset is filled by rerunning it and every daily asset downstream of it for those
days (`fill_selection`): stock_daily is rebuilt from its raw tables, never re-fetched from
BaoStock when the raw rows are there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# The daily graph, upstream first; each asset's table has one row per (code, trading day).
DAILY_GRAPH: dict[str, tuple[str, ...]] = {
    "raw_all_stock": (),
    "raw_k_daily": ("raw_all_stock",),
    "raw_adjust_factor": ("raw_k_daily",),
    "stock_daily": ("raw_k_daily", "raw_adjust_factor"),
    "technical_daily": ("stock_daily",),
    "redis_cache": ("technical_daily", "stock_daily"),
}
DAILY_ASSETS = tuple(DAILY_GRAPH)
# The index bars of P3, also per trading day: they run with the daily job (not counted).
INDEX_DAILY_ASSETS = ("raw_index_daily", "index_daily")
# Unpartitioned: the calendar and listings, refreshed with every daily run.
REFERENCE_ASSETS = ("raw_trade_dates", "raw_stock_basic", "trade_calendar", "stocks")
# Assets whose tables are counted per day (raw_adjust_factor is keyed by ex-date, the cache
# lives in Redis: both are rerun as downstream of a counted gap).
COUNTED = ("raw_all_stock", "raw_k_daily", "stock_daily", "technical_daily")

COUNTS_SQL = """
WITH days AS (SELECT unnest(%(days)s::date[]) AS trade_date),
listed AS (
    SELECT a.trade_date, count(*) FILTER (
               WHERE a.trade_status AND coalesce(b.security_type, 1) = 1) AS trading,
           count(*) AS all_rows
    FROM raw_all_stock a LEFT JOIN raw_stock_basic b ON b.code = a.code
    WHERE a.trade_date = ANY(%(days)s::date[]) GROUP BY a.trade_date
),
k AS (SELECT trade_date, count(*) AS n FROM raw_k_daily
      WHERE trade_date = ANY(%(days)s::date[]) GROUP BY trade_date),
s AS (SELECT trade_date, count(*) AS n FROM stock_daily
      WHERE trade_date = ANY(%(days)s::date[]) GROUP BY trade_date),
t AS (SELECT trade_date, count(*) AS n FROM technical_daily
      WHERE trade_date = ANY(%(days)s::date[]) GROUP BY trade_date)
SELECT d.trade_date, coalesce(l.trading, 0), coalesce(l.all_rows, 0), coalesce(k.n, 0),
       coalesce(s.n, 0), coalesce(t.n, 0)
FROM days d LEFT JOIN listed l USING (trade_date) LEFT JOIN k USING (trade_date)
LEFT JOIN s USING (trade_date) LEFT JOIN t USING (trade_date)
ORDER BY d.trade_date
"""


@dataclass(frozen=True)
class DayCounts:
    """What the warehouse holds for one trading day."""

    day: dt.date
    listed_trading: int  # stocks query_all_stock lists as trading
    all_stock_rows: int
    k_daily_rows: int
    stock_daily_rows: int
    technical_rows: int


@dataclass(frozen=True)
class Gap:
    asset: str
    day: dt.date
    reason: str  # "missing" or "incomplete: 4,100 of 4,900 rows"


def read_counts(connection, days: Sequence[dt.date]) -> list[DayCounts]:
    """One query over the warehouse (a psycopg2 connection) for `days`."""
    with connection.cursor() as cur:
        cur.execute(COUNTS_SQL, {"days": list(days)})
        return [DayCounts(*row) for row in cur.fetchall()]


def find_gaps(counts: Iterable[DayCounts], tolerance: float) -> list[Gap]:
    """Every (asset, day) the warehouse lacks or holds in part, upstream assets first."""
    gaps: list[Gap] = []
    for day in counts:
        expected = {
            "raw_all_stock": 1,  # one query_all_stock reply per day: some rows, or none
            "raw_k_daily": day.listed_trading,
            "stock_daily": day.listed_trading,
            "technical_daily": day.stock_daily_rows,
        }
        held = {
            "raw_all_stock": day.all_stock_rows,
            "raw_k_daily": day.k_daily_rows,
            "stock_daily": day.stock_daily_rows,
            "technical_daily": day.technical_rows,
        }
        for asset in COUNTED:
            reason = _shortfall(held[asset], expected[asset], tolerance)
            if reason:
                gaps.append(Gap(asset, day.day, reason))
    return gaps


def _shortfall(held: int, expected: int, tolerance: float) -> str | None:
    if held == 0 and expected > 0:
        return "missing"
    if held < expected * (1.0 - tolerance):
        return f"incomplete: {held:,} of {expected:,} rows"
    return None


def fill_selection(assets: Iterable[str]) -> tuple[str, ...]:
    """The gapped assets and every daily asset downstream of them, in graph order."""
    chosen = set(assets)
    for asset, upstream in DAILY_GRAPH.items():  # upstream first: one pass closes the set
        if chosen.intersection(upstream):
            chosen.add(asset)
    return tuple(a for a in DAILY_GRAPH if a in chosen)


def group_runs(
    days_by_asset: Mapping[str, Iterable[dt.date]], sessions: Sequence[dt.date]
) -> list[tuple[tuple[str, ...], dt.date, dt.date]]:
    """Runs that fill the gaps: per day, the selection its gaps need; consecutive trading days
    (in `sessions`) with the same selection share one ranged run. (selection, first, last)."""
    assets_by_day: dict[dt.date, set[str]] = {}
    for asset, days in days_by_asset.items():
        for day in days:
            assets_by_day.setdefault(day, set()).add(asset)
    position = {day: i for i, day in enumerate(sessions)}
    runs: list[tuple[tuple[str, ...], dt.date, dt.date]] = []
    previous: dt.date | None = None
    for day in sorted(assets_by_day):
        selection = fill_selection(assets_by_day[day])
        adjacent = previous is not None and position.get(day, -2) == position.get(previous, -9) + 1
        if runs and adjacent and runs[-1][0] == selection:
            runs[-1] = (selection, runs[-1][1], day)
        else:
            runs.append((selection, day, day))
        previous = day
    return runs
