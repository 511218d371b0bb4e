"""SQL checks of technical_daily over a run's window (imported by the definitions: light)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.assets.window_checks import check_result
from stock_pipeline.resources import WarehouseResource

# Per day: stock_daily rows, technical_daily rows, and keys in one but not the other.
ROWS_SQL = """
SELECT coalesce(s.trade_date, t.trade_date) AS trade_date,
       count(s.code) AS stock_daily_rows, count(t.code) AS technical_daily_rows,
       count(*) FILTER (WHERE t.code IS NULL) AS without_indicators,
       count(*) FILTER (WHERE s.code IS NULL) AS without_bar,
       (array_agg(coalesce(s.code, t.code) ORDER BY coalesce(s.code, t.code))
            FILTER (WHERE s.code IS NULL OR t.code IS NULL))[1:5] AS examples
FROM (SELECT code, trade_date FROM stock_daily WHERE trade_date BETWEEN $1 AND $2) s
FULL JOIN (SELECT code, trade_date FROM technical_daily WHERE trade_date BETWEEN $1 AND $2) t
    USING (code, trade_date)
GROUP BY 1 ORDER BY 1
"""


async def rows_match_stock_daily(
    window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        days = await wh.copy_pool.fetch(ROWS_SQL, window.start, window.end)
    bad = [d for d in days if d["without_indicators"] or d["without_bar"]]
    metadata: dict[str, Any] = {
        "days_checked": len(days),
        "stock_daily_rows": sum(d["stock_daily_rows"] for d in days),
        "technical_daily_rows": sum(d["technical_daily_rows"] for d in days),
        "days_with_differences": len(bad),
    }
    if bad:
        metadata["examples"] = [
            f"{d['trade_date']}: {d['without_indicators']} bars without indicators, "
            f"{d['without_bar']} indicator rows without a bar, e.g. {', '.join(d['examples'])}"
            for d in bad[:10]
        ]
    return check_result(not bad, metadata, f"{len(bad)} days where technical_daily != stock_daily")


def warm_up_sql() -> str:
    """Per indicator, the window's rows past its warm-up that lack a value; and the codes whose
    traded_bars do not follow on from the row before the window: they must rise by exactly the
    code's traded days in the window (stock_daily rows with a close). Aggregates per code, no
    sort: a five-year window takes seconds."""
    from stock_pipeline.compute.indicators import WARM_UP

    missing_per_code = ",\n".join(
        f"count(*) FILTER (WHERE traded_bars >= {n} AND {name} IS NULL) AS {name}"
        for name, n in WARM_UP.items()
    )
    missing = ",\n".join(f"sum(t.{name})::bigint AS {name}" for name in WARM_UP)
    return f"""
WITH t AS (
    SELECT code, count(*) AS rows, min(traded_bars) AS first_bars, max(traded_bars) AS last_bars,
        {missing_per_code}
    FROM technical_daily WHERE trade_date BETWEEN $1 AND $2 GROUP BY code
), s AS (
    SELECT code, count(close) AS traded FROM stock_daily WHERE trade_date BETWEEN $1 AND $2
    GROUP BY code
), p AS (
    SELECT t.code, coalesce((SELECT traded_bars FROM technical_daily b WHERE b.code = t.code
        AND b.trade_date < $1 ORDER BY b.trade_date DESC LIMIT 1), 0) AS before
    FROM t
)
SELECT coalesce(sum(t.rows), 0)::bigint AS rows_checked,
    count(*) FILTER (WHERE t.last_bars - p.before IS DISTINCT FROM coalesce(s.traded, 0)
        OR t.first_bars < p.before) AS broken_bar_counts,
    (array_agg(t.code ORDER BY t.code) FILTER (
        WHERE t.last_bars - p.before IS DISTINCT FROM coalesce(s.traded, 0)
        OR t.first_bars < p.before))[1:5] AS broken_examples,
    {missing}
FROM t JOIN p USING (code) LEFT JOIN s USING (code)
"""


async def warmed_up_values(
    window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        found = dict(await wh.copy_pool.fetchrow(warm_up_sql(), window.start, window.end))
    rows, broken = found.pop("rows_checked"), found.pop("broken_bar_counts")
    examples = found.pop("broken_examples") or []
    missing = {name: n for name, n in found.items() if n}
    metadata: dict[str, Any] = {
        "rows_checked": rows,
        "codes_with_broken_bar_counts": broken,
        "broken_examples": examples,
        "values_missing_after_warm_up": dg.MetadataValue.json(missing),
    }
    problems = []
    if missing:
        problems.append(f"{sum(missing.values())} values missing after warm-up ({missing})")
    if broken:
        problems.append(
            f"{broken} codes whose traded_bars do not rise by their traded days (e.g. "
            f"{', '.join(examples)})"
        )
    return check_result(not problems, metadata, "; ".join(problems))
