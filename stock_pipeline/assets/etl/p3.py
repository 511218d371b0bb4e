"""ETL of the indexes: raw_index_daily -> index_daily; the constituent snapshots ->
index_constituents (membership intervals); their checks.

Bodies are read -> compute -> write, in p3_build.py (imported when they run).
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.assets.partitions import Partitions
from stock_pipeline.assets.window_checks import WindowCheck, check_result, window_check
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.pointintime import INDEX_ALIASES
from stock_pipeline.resources import WarehouseResource

GROUP = "p3"
SINGLE_RUN = dg.BackfillPolicy.single_run()
# The raw snapshot table of each index BaoStock lists the constituents of.
CONSTITUENT_TABLES = {f"raw_{alias}_stocks": code for alias, code in INDEX_ALIASES.items()}
# Members every snapshot of an index has.
INDEX_SIZES = {"sh.000300": 300, "sh.000016": 50, "sh.000905": 500}


def _asset_args(name: str, deps: Sequence[str]) -> dict[str, Any]:
    return {
        "name": name,
        "group_name": GROUP,
        "deps": [dg.AssetKey(d) for d in deps],
        "kinds": {"postgres"},
        "metadata": runtime.definition_metadata(name),
    }


def build_index_daily(
    calendar: TradingCalendar, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        description="Daily bars of the indexes in STOCK_PIPELINE_INDEX_CODES, from "
        "raw_index_daily (each run replaces its trading days).",
        partitions_def=partitions,
        backfill_policy=SINGLE_RUN,
        **_asset_args("index_daily", ["raw_index_daily"]),
    )
    async def index_daily(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        from stock_pipeline.assets.etl import p3_build

        window = runtime.window_of(context, calendar)
        return await p3_build.build_index_daily(context, warehouse, window)

    return index_daily


@dg.asset(
    description="Membership history of CSI 300 (sh.000300), SSE 50 (sh.000016) and CSI 500 "
    "(sh.000905): [valid_from, valid_to) per member, from BaoStock's dated snapshots (rebuilt "
    "whole each run).",
    **_asset_args("index_constituents", list(CONSTITUENT_TABLES)),
)
async def index_constituents(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    from stock_pipeline.assets.etl import p3_build

    return await p3_build.build_index_constituents(context, warehouse)


INDEX_OHLC_SQL = """
SELECT
    count(*) AS rows,
    count(*) FILTER (WHERE low > least(open, close) OR high < greatest(open, close)
        OR low > high) AS outside_high_low,
    count(*) FILTER (WHERE open <= 0 OR high <= 0 OR low <= 0 OR close <= 0) AS non_positive,
    count(*) FILTER (WHERE num_nulls(open, high, low, close) > 0) AS missing_prices,
    count(*) FILTER (WHERE volume < 0 OR amount < 0) AS negative_volume
FROM index_daily WHERE trade_date BETWEEN $1 AND $2
"""
INDEX_OHLC_EXAMPLES_SQL = """
SELECT code, trade_date, open, high, low, close, volume, amount FROM index_daily
WHERE trade_date BETWEEN $1 AND $2 AND (low > least(open, close)
    OR high < greatest(open, close) OR low > high OR open <= 0 OR high <= 0 OR low <= 0
    OR close <= 0 OR num_nulls(open, high, low, close) > 0 OR volume < 0 OR amount < 0)
ORDER BY trade_date, code LIMIT 20
"""
# The primary key makes duplicates impossible while it stands: check it does, and count them.
INDEX_KEYS_SQL = """
SELECT
    (SELECT count(*) FROM pg_index WHERE indrelid = 'index_daily'::regclass
        AND indisprimary AND indisvalid) AS valid_primary_keys,
    (SELECT count(*) FROM (SELECT 1 FROM index_daily WHERE trade_date BETWEEN $1 AND $2
        GROUP BY code, trade_date HAVING count(*) > 1) d) AS duplicated_keys,
    (SELECT count(*) FROM index_daily WHERE trade_date BETWEEN $1 AND $2
        AND code !~ '^(sh|sz|bj)\\.[0-9]{6}$') AS malformed_codes
"""
# index_daily is raw_index_daily's bars as they are: every row matches one raw row.
INDEX_RECONCILE_SQL = """
SELECT
    (SELECT count(*) FROM raw_index_daily WHERE trade_date BETWEEN $1 AND $2) AS raw_rows,
    (SELECT count(*) FROM index_daily WHERE trade_date BETWEEN $1 AND $2) AS business_rows,
    (SELECT count(*) FROM index_daily b JOIN raw_index_daily r USING (code, trade_date)
     WHERE b.trade_date BETWEEN $1 AND $2
       AND (b.open, b.high, b.low, b.close, b.pre_close, b.pct_chg, b.volume, b.amount)
           IS NOT DISTINCT FROM
           (r.open, r.high, r.low, r.close, r.pre_close, r.pct_chg, r.volume, r.amount)
    ) AS matched
"""


async def _index_ohlc(window: runtime.Window, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        counts = dict(await wh.copy_pool.fetchrow(INDEX_OHLC_SQL, window.start, window.end))
        bad = sum(v for k, v in counts.items() if k != "rows")
        metadata: dict[str, Any] = dict(counts)
        if bad:
            from stock_pipeline.assets import store

            examples = await store.read_frame(
                wh, "index_daily", INDEX_OHLC_EXAMPLES_SQL, window.start, window.end
            )
            metadata["examples"] = runtime.markdown_table(examples, rows=20)
    return check_result(bad == 0, metadata, f"{bad} index bars break OHLC sanity")


async def _index_keys(window: runtime.Window, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        found = dict(await wh.copy_pool.fetchrow(INDEX_KEYS_SQL, window.start, window.end))
    passed = found["valid_primary_keys"] == 1 and not found["duplicated_keys"]
    passed = passed and not found["malformed_codes"]
    return check_result(
        passed,
        found,
        f"index_daily: {found['valid_primary_keys']} valid primary keys, "
        f"{found['duplicated_keys']} duplicated (code, trade_date), "
        f"{found['malformed_codes']} malformed codes",
    )


async def _index_reconcile(
    window: runtime.Window, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        found = dict(await wh.copy_pool.fetchrow(INDEX_RECONCILE_SQL, window.start, window.end))
    passed = found["raw_rows"] == found["business_rows"] == found["matched"]
    return check_result(
        passed,
        found,
        f"{found['raw_rows'] - found['matched']} raw index bars missing or different in "
        f"index_daily, which holds {found['business_rows']} rows",
    )


INDEX_DAILY_CHECKS = (
    WindowCheck(
        "index_daily_ohlc_sanity_check",
        "low <= open, close <= high; prices present and > 0; volume, amount >= 0.",
        True,
        _index_ohlc,
    ),
    WindowCheck(
        "index_daily_key_uniqueness_check",
        "One row per (code, trade_date) (a valid primary key), codes in BaoStock's form.",
        True,
        _index_keys,
    ),
    WindowCheck(
        "index_daily_raw_reconciliation_check",
        "index_daily holds exactly raw_index_daily's bars of the window, values equal.",
        True,
        _index_reconcile,
    ),
)


def _snapshot_rows_sql() -> str:
    """(index_code, day, code) of every raw snapshot row."""
    return " UNION ALL ".join(
        f"SELECT '{code}'::text AS index_code, update_date AS day, code FROM {table}"
        for table, code in CONSTITUENT_TABLES.items()
    )


# Members per index on each raw snapshot day, from the intervals, beside the snapshot's own.
MEMBER_COUNTS_SQL = f"""
WITH raw AS ({_snapshot_rows_sql()}),
days AS (SELECT index_code, day, count(*) AS in_snapshot FROM raw GROUP BY 1, 2)
SELECT d.index_code, d.day, d.in_snapshot, count(c.code) AS members
FROM days d LEFT JOIN index_constituents c ON c.index_code = d.index_code
    AND c.valid_from <= d.day AND (c.valid_to IS NULL OR c.valid_to > d.day)
GROUP BY 1, 2, 3 ORDER BY 1, 2
"""
OVERLAPS_SQL = """
SELECT a.index_code, a.code, a.valid_from, a.valid_to, b.valid_from AS next_from
FROM index_constituents a JOIN index_constituents b
    ON b.index_code = a.index_code AND b.code = a.code AND b.valid_from > a.valid_from
    AND (a.valid_to IS NULL OR a.valid_to > b.valid_from)
UNION ALL
SELECT index_code, code, valid_from, valid_to, NULL FROM index_constituents
WHERE valid_to <= valid_from
ORDER BY 1, 2, 3 LIMIT 50
"""
# Members on each raw snapshot day, from the intervals, against the snapshot itself; and
# intervals that start on no snapshot day.
CONSTITUENTS_RECONCILE_SQL = f"""
WITH raw AS ({_snapshot_rows_sql()}),
days AS (SELECT DISTINCT index_code, day FROM raw),
built AS (
    SELECT d.index_code, d.day, c.code FROM days d JOIN index_constituents c
        ON c.index_code = d.index_code AND c.valid_from <= d.day
        AND (c.valid_to IS NULL OR c.valid_to > d.day)
)
SELECT
    (SELECT count(*) FROM raw) AS raw_rows,
    count(*) FILTER (WHERE raw.code IS NOT NULL AND built.code IS NOT NULL) AS matched,
    count(*) FILTER (WHERE built.code IS NULL) AS in_snapshot_not_member,
    count(*) FILTER (WHERE raw.code IS NULL) AS member_not_in_snapshot,
    (SELECT count(*) FROM index_constituents c WHERE NOT EXISTS (
        SELECT 1 FROM days d WHERE d.index_code = c.index_code AND d.day = c.valid_from))
        AS intervals_not_starting_on_a_snapshot,
    (array_agg(index_code || ' ' || day::text || ' ' || code ORDER BY index_code, day, code)
        FILTER (WHERE raw.code IS NULL OR built.code IS NULL))[1:10] AS examples
FROM raw FULL JOIN built USING (index_code, day, code)
"""


@dg.asset_check(
    asset="index_constituents",
    description="Each index has snapshots, and exactly its size in members (CSI 300: 300, "
    "SSE 50: 50, CSI 500: 500) on every snapshot day.",
)
async def index_constituents_member_count_check(
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        rows = await wh.copy_pool.fetch(MEMBER_COUNTS_SQL)
    seen = {r["index_code"] for r in rows}
    without = [code for code in INDEX_SIZES if code not in seen]
    wrong = [r for r in rows if r["members"] != INDEX_SIZES[r["index_code"]]]
    metadata: dict[str, Any] = {
        "snapshot_days": {code: sum(r["index_code"] == code for r in rows) for code in INDEX_SIZES},
        "indexes_without_snapshots": without,
        "days_with_other_counts": len(wrong),
        "other_counts": [
            f"{r['index_code']} {r['day']}: {r['members']} members (snapshot {r['in_snapshot']})"
            for r in wrong[:30]
        ],
    }
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} snapshot days where an index has not its size in members")
    if without:
        problems.append(f"no snapshot of {', '.join(without)}: materialize its raw table")
    return check_result(not problems, metadata, "; ".join(problems))


@dg.asset_check(
    asset="index_constituents",
    blocking=True,
    description="A code's intervals in one index never overlap, and each ends after it starts.",
)
async def index_constituents_no_overlap_check(
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        rows = await wh.copy_pool.fetch(OVERLAPS_SQL)
    examples = [
        f"{r['index_code']} {r['code']} [{r['valid_from']}, {r['valid_to']})"
        + (f" overlaps the one from {r['next_from']}" if r["next_from"] else " is empty")
        for r in rows
    ]
    return check_result(
        not rows,
        {"overlapping_or_empty_intervals": len(rows), "examples": examples[:20]},
        f"{len(rows)} intervals overlap another of the same code or are empty",
    )


@dg.asset_check(
    asset="index_constituents",
    blocking=True,
    description="On every raw snapshot day, the members the intervals give are exactly the "
    "snapshot's; every interval starts on a snapshot day.",
)
async def index_constituents_raw_reconciliation_check(
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    async with warehouse.open() as wh:
        found = dict(await wh.copy_pool.fetchrow(CONSTITUENTS_RECONCILE_SQL))
    found["examples"] = found["examples"] or []
    bad = (
        found["in_snapshot_not_member"]
        + found["member_not_in_snapshot"]
        + found["intervals_not_starting_on_a_snapshot"]
    )
    return check_result(
        bad == 0,
        found,
        f"{bad} differences between index_constituents and the raw snapshots, e.g. "
        + ", ".join(found["examples"]),
    )


def group_assets(
    calendar: TradingCalendar, partitions: Partitions
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """The group's business assets and the checks of its business tables."""
    assets = [build_index_daily(calendar, partitions.day), index_constituents]
    checks = [
        *(
            window_check("index_daily", spec, calendar, partitions.day)
            for spec in INDEX_DAILY_CHECKS
        ),
        index_constituents_member_count_check,
        index_constituents_no_overlap_check,
        index_constituents_raw_reconciliation_check,
    ]
    return assets, checks
