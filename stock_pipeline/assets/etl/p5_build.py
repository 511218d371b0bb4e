"""Bodies of the P5 business asset and checks (p5.py): read -> compute -> write of macro_series,
and the SQL checks of macro_series and of the weekly and monthly bars.

Imported when they run, not when definitions load (pandas, the writer).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd

from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.window_checks import check_result
from stock_pipeline.compute.macro import (
    CADENCE,
    KEY_COLUMNS,
    SOURCES,
    MacroShapeError,
    cadence_gaps,
    macro_series_rows,
    series_summary,
)
from stock_pipeline.resources import WarehouseResource
from stock_pipeline.warehouse.engine import Warehouse
from stock_pipeline.warehouse.tables import table

# macro_series is replaced whole: its window spans every date.
ALL_DATES = (dt.date.min, dt.date.max)
EXAMPLES = 20


def _raw_columns(source: str) -> list[str]:
    return [c.name for c in table(f"raw_{source}").c if c.name != "fetched_at"]


async def _read_raw(wh: Warehouse) -> dict[str, pd.DataFrame]:
    raw = {}
    for source in SOURCES:
        name = f"raw_{source}"
        raw[source] = await store.read_frame(
            wh, name, f"SELECT {', '.join(_raw_columns(source))} FROM {name}"
        )
    return raw


async def build_macro_series(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """macro_series rebuilt from the five raw macro tables, replaced whole in one transaction
    (a failure leaves it as it was)."""
    report = runtime.Report("macro_series")
    async with warehouse.open() as wh:
        with report.stages.time("read"):
            raw = await _read_raw(wh)
        empty = [f"raw_{s}" for s, frame in raw.items() if frame.empty]
        if empty:
            raise dg.Failure(
                f"macro_series: {', '.join(empty)} hold no rows: materialize them first "
                "(macro_series is rebuilt whole and would lose their series); nothing was written",
                allow_retries=False,
            )
        with report.stages.time("transform"):
            try:
                rows = macro_series_rows(raw)
            except MacroShapeError as exc:
                raise dg.Failure(
                    f"macro_series: {exc}. Check the raw rows named (BaoStock served them so); "
                    "macro_series was left as it was",
                    allow_retries=False,
                ) from None
        with report.stages.time("write"):
            report.wrote(
                await store.replace_window(
                    wh,
                    "macro_series",
                    rows,
                    start=ALL_DATES[0],
                    end=ALL_DATES[1],
                    date_column="period_date",
                )
            )
    summary = series_summary(rows)
    report.preview = rows.tail(runtime.PREVIEW_ROWS)
    report.extra.update(
        {
            "series": len(summary),
            "raw_rows": {f"raw_{s}": len(frame) for s, frame in raw.items()},
            "series_summary": runtime.markdown_table(summary, rows=len(summary)),
        }
    )
    context.log.info(
        f"[p5.macro_series] {len(rows)} rows of {len(summary)} series, {report.stages.wall_s:.1f}s"
    )
    return report.result()


async def _macro_rows(warehouse: WarehouseResource) -> pd.DataFrame:
    async with warehouse.open() as wh:
        return await store.read_frame(
            wh, "macro_series", "SELECT series, period_date, value FROM macro_series"
        )


def _period_label(series: str, day: pd.Timestamp) -> str:
    return f"{day:%Y-%m}" if CADENCE.get(series.split(".", 1)[0]) == "month" else f"{day:%Y}"


async def macro_series_cadence_check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    rows = await _macro_rows(warehouse)
    summary = series_summary(rows)
    gaps = cadence_gaps(rows)
    by_series = {
        str(series): [_period_label(str(series), d) for d in group["period_date"]]
        for series, group in gaps.groupby("series", sort=True)
    }
    metadata: dict[str, Any] = {
        "series": len(summary),
        "series_with_a_cadence": sum(1 for s in summary["series"] if s.split(".")[0] in CADENCE),
        "missing_periods": len(gaps),
        "series_summary": runtime.markdown_table(summary, rows=len(summary)),
    }
    if by_series:
        metadata["missing"] = dg.MetadataValue.json(
            {s: periods[:EXAMPLES] for s, periods in by_series.items()}
        )
    failure = "; ".join(
        f"{s} misses {', '.join(periods[:5])}" + (" ..." if len(periods) > 5 else "")
        for s, periods in list(by_series.items())[:5]
    )
    passed = not by_series and not summary.empty
    return check_result(
        passed,
        metadata,
        f"{len(gaps)} periods missing: {failure}. Rematerialize the raw money supply assets and "
        "macro_series"
        if by_series
        else "macro_series is empty: materialize it",
    )


# The SQL twin of compute.macro.period_dates, so the check does not trust the code it checks.
PERIOD_DATE_SQL = {
    "deposit_rate": "pub_date",
    "loan_rate": "pub_date",
    "required_reserve_ratio": "effective_date",
    "money_supply_month": "(make_date(stat_year::int, stat_month::int, 1) "
    "+ interval '1 month' - interval '1 day')::date",
    "money_supply_year": "make_date(stat_year::int, 12, 31)",
}


def _expected_sql() -> str:
    """Every non-empty raw value as (series, period_date, value)."""
    parts = []
    for source in SOURCES:
        for column in table(f"raw_{source}").c:
            if column.name in KEY_COLUMNS or column.name == "fetched_at":
                continue
            parts.append(
                f"SELECT '{source}.{column.name}' AS series, {PERIOD_DATE_SQL[source]} "
                f"AS period_date, {column.name}::double precision AS value FROM raw_{source} "
                f"WHERE {column.name} IS NOT NULL"
            )
    return "\nUNION ALL\n".join(parts)


RECONCILE_SQL = f"""
WITH expected AS ({_expected_sql()})
SELECT
    (SELECT count(*) FROM expected) AS raw_values,
    count(*) FILTER (WHERE e.series IS NOT NULL AND m.series IS NOT NULL
                     AND e.value = m.value) AS matched,
    count(*) FILTER (WHERE m.series IS NULL) AS missing,
    count(*) FILTER (WHERE e.series IS NOT NULL AND m.series IS NOT NULL
                     AND e.value IS DISTINCT FROM m.value) AS different,
    count(*) FILTER (WHERE e.series IS NULL) AS extra,
    (array_agg(coalesce(e.series, m.series) || ' ' || coalesce(e.period_date, m.period_date)
        ORDER BY coalesce(e.series, m.series), coalesce(e.period_date, m.period_date))
        FILTER (WHERE e.series IS NULL OR m.series IS NULL
                OR e.value IS DISTINCT FROM m.value))[1:{EXAMPLES}] AS examples
FROM expected e FULL JOIN macro_series m USING (series, period_date)
"""


async def macro_series_raw_reconciliation_check(
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        found = dict(await wh.copy_pool.fetchrow(RECONCILE_SQL))
    examples = found.pop("examples") or []
    bad = found["missing"] + found["different"] + found["extra"]
    return check_result(
        bad == 0 and found["raw_values"] > 0,
        {**found, "examples": examples},
        f"{found['missing']} raw values missing from macro_series, {found['different']} "
        f"different, {found['extra']} rows without a raw value, e.g. {', '.join(examples)}: "
        "rematerialize macro_series"
        if bad
        else "the raw macro tables are empty: materialize them and macro_series",
    )


RATE_DATES = (
    ("raw_deposit_rate", "pub_date"),
    ("raw_loan_rate", "pub_date"),
    ("raw_required_reserve_ratio", "pub_date"),
    ("raw_required_reserve_ratio", "effective_date"),
)
REPEATED_DATES_SQL = """
SELECT {column} AS day, count(*) AS changes FROM {table}
GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT {limit}
"""


async def macro_series_rate_dates_check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {}
    problems = []
    async with warehouse.open() as wh:
        for name, column in RATE_DATES:
            sql = REPEATED_DATES_SQL.format(column=column, table=name, limit=EXAMPLES)
            repeated = await wh.copy_pool.fetch(sql)
            counts = await wh.copy_pool.fetchrow(
                f"SELECT count(*) AS changes, min({column}) AS first, max({column}) AS last "
                f"FROM {name}"
            )
            metadata[f"{name}.{column}"] = (
                f"{counts['changes']} changes, {counts['first']}..{counts['last']}, "
                f"{len(repeated)} repeated dates"
            )
            if repeated:
                days = ", ".join(f"{r['day']} x{r['changes']}" for r in repeated[:5])
                problems.append(f"{name} repeats {column} {days}")
    return check_result(
        not problems,
        metadata,
        "; ".join(problems) + ": BaoStock served two changes on one date; macro_series "
        "cannot date them apart",
    )


# Period-bar checks (raw_k_weekly, raw_k_monthly) over a run's weeks or months.
PRIMARY_KEY_SQL = """
SELECT coalesce(bool_and(i.indisvalid), false) FROM pg_index i
WHERE i.indrelid = $1::regclass AND i.indisprimary
"""
SHARED_PERIOD_SQL = """
SELECT code, date_trunc('{unit}', trade_date)::date AS period, count(*) AS bars,
       array_agg(trade_date ORDER BY trade_date) AS dates
FROM {table} WHERE trade_date BETWEEN $1 AND $2
GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 2, 1
"""
OFF_DAY_SQL = """
SELECT code, trade_date FROM {table}
WHERE trade_date BETWEEN $1 AND $2 AND NOT (trade_date = ANY($3::date[]))
ORDER BY trade_date, code
"""


async def period_bars_key_uniqueness(
    name: str, kind: str, window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        keyed = await wh.copy_pool.fetchval(PRIMARY_KEY_SQL, name)
        shared = await wh.copy_pool.fetch(
            SHARED_PERIOD_SQL.format(unit=kind, table=name), window.start, window.end
        )
        bars = await wh.copy_pool.fetchval(
            f"SELECT count(*) FROM {name} WHERE trade_date BETWEEN $1 AND $2",
            window.start,
            window.end,
        )
    examples = [
        f"{r['code']} {kind} of {r['period']}: {', '.join(map(str, r['dates']))}"
        for r in shared[:EXAMPLES]
    ]
    return check_result(
        keyed and not shared,
        {
            "window": str(window),
            "bars": bars,
            "has_valid_primary_key": keyed,
            f"codes_with_several_bars_in_a_{kind}": len(shared),
            "examples": examples,
        },
        f"{name}: "
        + ("no valid primary key; " if not keyed else "")
        + f"{len(shared)} (code, {kind}) with several bars, e.g. {'; '.join(examples[:5])}: "
        f"rematerialize {name} for {window}",
    )


async def period_bars_trade_date(
    name: str, kind: str, window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        off = await wh.copy_pool.fetch(
            OFF_DAY_SQL.format(table=name), window.start, window.end, list(window.sessions)
        )
    examples = [f"{r['code']} {r['trade_date']}" for r in off[:EXAMPLES]]
    return check_result(
        not off,
        {"window": str(window), "trading_days": window.days, "bars_off_trading_days": len(off),
         "examples": examples},
        f"{name}: {len(off)} bars dated on days that are not trading days, e.g. "
        f"{', '.join(examples[:5])}: BaoStock's calendar and ours disagree, or the bars are wrong",
    )  # fmt: skip
