"""Read -> compute -> write of the P3 business tables: the bodies of the assets in p3.py.

Imported when an asset runs, not when definitions load (pandas, the writer).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd

from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.etl.p3 import CONSTITUENT_TABLES
from stock_pipeline.compute.membership import (
    KEY,
    MEMBER,
    SNAPSHOT_DATE,
    intervals_from_snapshots,
)
from stock_pipeline.resources import WarehouseResource
from stock_pipeline.warehouse.engine import Warehouse
from stock_pipeline.warehouse.tables import table

INDEX_DAILY_COLUMNS = [c.name for c in table("index_daily").c if c.name != "updated_at"]
RAW_INDEX_SQL = f"""
SELECT {", ".join(INDEX_DAILY_COLUMNS)} FROM raw_index_daily
WHERE trade_date BETWEEN $1 AND $2 ORDER BY code, trade_date
"""
# index_constituents is small (a few thousand intervals): each run rebuilds it whole, in one
# transaction, as a replace over every possible valid_from.
ALL_DAYS = (dt.date(1, 1, 1), dt.date(9999, 12, 31))


async def build_index_daily(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, window: runtime.Window
) -> dg.MaterializeResult:
    """index_daily for the window: raw_index_daily's bars, the window replaced whole (an index
    no longer synced leaves it)."""
    report = runtime.Report("index_daily", window)
    async with warehouse.open() as wh:
        with report.stages.time("read"):
            raw = await store.read_frame(
                wh, "raw_index_daily", RAW_INDEX_SQL, window.start, window.end
            )
        with report.stages.time("transform"):
            rows = raw[INDEX_DAILY_COLUMNS]
        with report.stages.time("write"):
            report.wrote(
                await store.replace_window(
                    wh, "index_daily", rows, start=window.start, end=window.end
                )
            )
    per_code = rows.groupby("code")["trade_date"].count()
    report.preview = rows.tail(runtime.PREVIEW_ROWS)
    report.extra["rows_per_index"] = {str(c): int(n) for c, n in per_code.items()}
    if rows.empty:
        context.log.warning(
            f"[p3.index_daily] {window}: raw_index_daily holds no bar: materialize "
            "raw_index_daily for these partitions first"
        )
    context.log.info(
        f"[p3.index_daily] {window}: {len(rows)} rows of {len(per_code)} indexes, "
        f"{report.stages.wall_s:.1f}s"
    )
    return report.result()


async def build_index_constituents(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """index_constituents rebuilt from every stored snapshot of the three indexes."""
    report = runtime.Report("index_constituents")
    async with warehouse.open() as wh:
        with report.stages.time("read"):
            snapshots = await _read_snapshots(wh)
        with report.stages.time("transform"):
            intervals = intervals_from_snapshots(snapshots).rename(
                columns={KEY: "index_code", MEMBER: "code"}
            )
        with report.stages.time("write"):
            first, last = ALL_DAYS
            report.wrote(
                await store.replace_window(
                    wh,
                    "index_constituents",
                    intervals,
                    start=first,
                    end=last,
                    date_column="valid_from",
                )
            )
    report.preview = intervals.head(runtime.PREVIEW_ROWS)
    report.extra.update(_constituents_summary(snapshots, intervals))
    context.log.info(
        f"[p3.index_constituents] {len(intervals)} intervals from "
        f"{snapshots[[KEY, SNAPSHOT_DATE]].drop_duplicates().shape[0]} snapshots, "
        f"{report.stages.wall_s:.1f}s"
    )
    return report.result()


async def _read_snapshots(wh: Warehouse) -> pd.DataFrame:
    """Every raw snapshot row as (key: the index code, member: the code, snapshot_date)."""
    frames = []
    for name, index_code in CONSTITUENT_TABLES.items():
        rows = await store.read_frame(
            wh, name, f"SELECT update_date, code FROM {name} ORDER BY update_date, code"
        )
        frames.append(
            pd.DataFrame(
                {
                    KEY: index_code,
                    MEMBER: rows["code"].astype(object),
                    SNAPSHOT_DATE: rows["update_date"],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _constituents_summary(snapshots: pd.DataFrame, intervals: pd.DataFrame) -> dict[str, Any]:
    """Per index: snapshots, intervals, the latest snapshot's day and its members."""
    summary: dict[str, dict[str, object]] = {}
    for index_code in CONSTITUENT_TABLES.values():
        days = snapshots.loc[snapshots[KEY] == index_code, SNAPSHOT_DATE]
        mine = intervals[intervals["index_code"] == index_code]
        summary[index_code] = {
            "snapshots": int(days.nunique()),
            "intervals": len(mine),
            "latest_snapshot": days.max().date().isoformat() if len(days) else "",
            "current_members": int(mine["valid_to"].isna().sum()),
        }
    return {"indexes": summary}
