"""The P1-P5 stages of backfill.py: each slower group over the same years, one
`dagster asset materialize` run per partition kind, and the P1 fetch alone at 50 ms latency.

A run covers one partitions definition, so the whole graph is several runs: the trading-day run
(P0, the index bars of P3, ETL, indicators, cache: backfill.py's first stage), then these.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import emit

from stock_pipeline.assets.partitions import period_key
from stock_pipeline.automation import cadence
from stock_pipeline.baostock.fetch import fetch_many
from stock_pipeline.baostock.pool import BaostockPool, PoolConfig
from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorProcess
from stock_pipeline.periods import quarter_end

FINANCE_APIS = ("profit", "operation", "growth", "balance", "cash_flow", "dupont")
DAY_EXTRA = cadence.INDEX_DAILY_SELECTION


def periods(first: dt.date, last: dt.date) -> list[tuple[int, int]]:
    """Statement periods ending inside [first, last]."""
    return [
        (y, q)
        for y in range(first.year, last.year + 1)
        for q in (1, 2, 3, 4)
        if first <= quarter_end(y, q) <= last
    ]


def group_runs(first: dt.date, last: dt.date) -> list[tuple[str, str, list[str]]]:
    """(stage, selection, partition arguments) of each slower group's run over [first, last]."""
    quarters = periods(first, last)
    monday = first + dt.timedelta(days=(7 - first.weekday()) % 7)
    last_week = last - dt.timedelta(days=last.weekday() + 1)  # Monday of the last whole week
    last_week -= dt.timedelta(days=6)
    first_month = dt.date(first.year, first.month, 1)
    last_month = dt.date(last.year, last.month, 1)
    if (last + dt.timedelta(days=1)).month == last.month:  # the month has not ended
        last_month = (last_month - dt.timedelta(days=1)).replace(day=1)
    years = f"{first.year}-01-01...{last.year}-01-01"
    return [
        (
            "p1_financials",
            cadence.FINANCIALS_SELECTION,
            ["--partition-range", f"{period_key(*quarters[0])}...{period_key(*quarters[-1])}"],
        ),
        ("p2_corporate", cadence.CORPORATE_SELECTION, ["--partition-range", years]),
        ("p5_weekly", cadence.WEEKLY_SELECTION, ["--partition-range", f"{monday}...{last_week}"]),
        ("p5_monthly", cadence.MONTHLY_SELECTION,
         ["--partition-range", f"{first_month}...{last_month}"]),
        ("p3_p4_p5_unpartitioned", cadence.UNPARTITIONED_SELECTION, []),
    ]  # fmt: skip


def run_groups(
    first: dt.date,
    last: dt.date,
    run: Callable[..., dict[str, Any]],
    report: Callable[[], dict[str, Any]],
    home: Path,
) -> dict[str, dict[str, Any]]:
    """Each group's run, one after another: wall, peak memory, rows, BaoStock messages."""
    out = {}
    for stage, select, args in group_runs(first, last):
        measured = run(*args, select=select, log=home / f"{stage}.log")
        metadata = report()["metadata"]
        measured["rows"] = {a: m.get("dagster/row_count", 0) for a, m in metadata.items()}
        measured["baostock_messages"] = sum(
            m.get("baostock_requests", 0) + m.get("baostock_logins", 0) for m in metadata.values()
        )
        measured["extra"] = {
            a: {
                k: v
                for k, v in m.items()
                if k.startswith(("requests_", "codes_", "saved")) and isinstance(v, int | float)
            }
            for a, m in metadata.items()
        }
        emit({"stage": stage, **measured})
        out[stage] = measured
    return out


def listed_in_period(url: str, year: int, quarter: int) -> tuple[list[str], int]:
    """Stocks listed during the period (the P1 rule) and how many stocks stock_basic knows."""
    import psycopg2

    start, end = dt.date(year, 3 * quarter - 2, 1), quarter_end(year, quarter)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT code, ipo_date, out_date FROM raw_stock_basic WHERE security_type = 1")
        rows = cur.fetchall()
    listed = [c for c, ipo, out in rows if ipo and ipo <= end and (out is None or out >= start)]
    return sorted(listed), len(rows)


async def _fetch_quarter(
    endpoint: tuple[str, int], codes: list[str], year: int, quarter: int, sessions: int
) -> dict[str, Any]:
    """The six quarterly APIs for `codes`, profit first and the five others for the codes that
    have a profit row (as the P1 assets ask)."""
    config = PoolConfig(endpoint=endpoint, concurrency=sessions, qps=100_000, request_timeout_s=60)
    params = {"year": str(year), "quarter": str(quarter)}
    async with BaostockPool(config) as pool:
        began = time.perf_counter()
        profit = await fetch_many(
            pool, "query_profit_data", {c: {"code": c, **params} for c in codes}
        )
        with_profit = sorted(set(profit.frame["code"])) if len(profit.frame) else []
        requests, failed = profit.server_requests, len(profit.failures)
        for name in FINANCE_APIS[1:]:
            result = await fetch_many(
                pool, f"query_{name}_data", {c: {"code": c, **params} for c in with_profit}
            )
            requests += result.server_requests
            failed += len(result.failures)
        seconds = time.perf_counter() - began
    return {
        "codes": len(codes),
        "codes_with_statement": len(with_profit),
        "requests": requests,
        "failed": failed,
        "seconds": round(seconds, 2),
    }


def p1_latency_stage(
    market: SimulatorConfig, url: str, year: int, quarter: int, sessions: int = 8
) -> dict[str, Any]:
    """One quarter of P1 against the same market with 50 ms added to every request."""
    listed, known = listed_in_period(url, year, quarter)
    with SimulatorProcess(replace(market, latency_ms=50)) as sim:
        measured = asyncio.run(
            _fetch_quarter((sim.host, sim.port), listed, year, quarter, sessions)
        )
    rate = measured["requests"] / measured["seconds"]
    out = {
        "period": f"{year}Q{quarter}",
        "sessions": sessions,
        "latency_ms": 50,
        **measured,
        "requests_per_s": round(rate, 1),
        "bound_per_s": sessions / 0.050,
        "bound_ratio": round(rate / (sessions / 0.050), 3),
        "stocks_known": known,
        # An unlisted stock costs a profit request, and five more when BaoStock has a
        # (pre-listing) statement for it.
        "requests_saved_unlisted_min": known - len(listed),
        "requests_saved_unlisted_max": 6 * (known - len(listed)),
    }
    emit({"stage": "p1_quarter_c8_50ms", **out})
    return out
