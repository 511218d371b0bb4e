"""Read -> compute -> write of the P1 business table `finance`: the body of the asset in p1.py.

One row per (code, stat_date), joined from the six quarterly raw tables. BaoStock serves only
the latest values of a statement, so a rebuild that finds other values than the stored ones
(a company's correction) keeps the stored version in finance_revisions (superseded_on = today)
and writes the new one with revised_on = today; unchanged rows are not rewritten. Reading the
stored rows, the revisions and the new rows happen in one transaction per run.

Imported when the asset runs, not when definitions load (pandas, the writer).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd

from stock_pipeline.assets import runtime
from stock_pipeline.compute.finance import (
    KEY,
    Revisions,
    diff_revisions,
    join_statements,
    period_label,
    periods_between,
    quarter_end,
)
from stock_pipeline.resources import WarehouseResource
from stock_pipeline.warehouse import reader, writer
from stock_pipeline.warehouse.catalog import lock_until_commit
from stock_pipeline.warehouse.engine import Warehouse
from stock_pipeline.warehouse.tables import table

STATEMENT_APIS = ("profit", "operation", "growth", "balance", "cash_flow", "dupont")
FINANCE_VALUES = tuple(
    c.name
    for c in table("finance").c
    if c.name not in (*KEY, "pub_date", "revised_on", "updated_at")
)
# Finance rebuilds take turns: each compares with what the previous one stored.
BUILD_LOCK = "stock_pipeline.build:finance"


def _raw_sql(name: str) -> str:
    columns = [c.name for c in table(f"raw_{name}").c if c.name != "fetched_at"]
    return (
        f"SELECT {', '.join(columns)} FROM raw_{name} "
        "WHERE stat_date = ANY($1::date[]) ORDER BY code, stat_date"
    )


STORED_SQL = (
    f"SELECT code, stat_date, pub_date, revised_on, {', '.join(FINANCE_VALUES)} FROM finance "
    "WHERE stat_date = ANY($1::date[]) ORDER BY code, stat_date"
)


async def build_finance(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    window: runtime.Window,
    today: dt.date | None = None,
) -> dg.MaterializeResult:
    """finance for the statement periods of the window, with its revisions."""
    day = today or runtime.today()
    report = runtime.Report("finance", window)
    periods = periods_between(window.start, window.end)
    stat_dates = [quarter_end(*p) for p in periods]
    async with warehouse.open() as wh:
        with report.stages.time("read"):
            raw = {
                name: await reader.read_frame(
                    wh.copy_pool, f"raw_{name}", _raw_sql(name), stat_dates
                )
                for name in STATEMENT_APIS
            }
        with report.stages.time("transform"):
            built, incomplete = join_statements(raw)
        changes = await _store(wh, built, stat_dates, day, report)
    report.extra.update(_metadata(periods, built, incomplete, changes, day))
    report.preview = _preview(changes)
    _log(context, window, changes, incomplete)
    return report.result()


async def _store(
    wh: Warehouse,
    built: pd.DataFrame,
    stat_dates: list[dt.date],
    day: dt.date,
    report: runtime.Report,
) -> Revisions:
    """Compare with the stored rows and write the differences, in one transaction."""
    chunk_rows = wh.settings.copy_chunk_rows
    async with wh.copy_pool.acquire() as conn, conn.transaction():
        await lock_until_commit(conn, BUILD_LOCK)
        with report.stages.time("read"):
            stored = await reader.read_frame(conn, "finance", STORED_SQL, stat_dates)
        with report.stages.time("transform"):
            changes = diff_revisions(stored, built, day, FINANCE_VALUES)
        with report.stages.time("write"):
            if len(changes.superseded):
                report.wrote(
                    await writer.upsert(
                        conn, "finance_revisions", changes.superseded, chunk_rows=chunk_rows
                    )
                )
            if len(changes.rows):
                report.wrote(
                    await writer.upsert(conn, "finance", changes.rows, chunk_rows=chunk_rows)
                )
    return changes


def _metadata(
    periods: list[tuple[int, int]],
    built: pd.DataFrame,
    incomplete: pd.DataFrame,
    changes: Revisions,
    day: dt.date,
) -> dict[str, Any]:
    per_period = pd.DataFrame(
        {
            "period": [period_label(p) for p in periods],
            "statements": [
                int((built["stat_date"] == pd.Timestamp(quarter_end(*p))).sum()) for p in periods
            ],
            "waiting": [
                int((incomplete["stat_date"] == pd.Timestamp(quarter_end(*p))).sum())
                for p in periods
            ],
        }
    )
    out: dict[str, Any] = {
        "periods": [period_label(p) for p in periods],
        "statements": len(built),
        "rows_new": changes.new,
        "rows_revised": changes.revised,
        "rows_unchanged": changes.unchanged,
        "versions_superseded": len(changes.superseded),
        "revision_day": day.isoformat(),
        "stored_without_raw_statement": changes.stored_only,
        "statements_waiting_for_parts": len(incomplete),
        "statements_by_period": runtime.markdown_table(per_period, rows=len(per_period)),
    }
    if len(incomplete):
        out["waiting"] = runtime.markdown_table(incomplete, rows=20)
    if changes.revised:
        revised = changes.rows[changes.rows["revised_on"].notna()]
        out["revised"] = runtime.markdown_table(revised[[*KEY, "pub_date", "revised_on"]], rows=20)
    return out


def _preview(changes: Revisions) -> pd.DataFrame | None:
    """Revised rows first (the news of the run), else new ones."""
    rows = changes.rows.sort_values("revised_on", na_position="last", kind="stable")
    return rows.head(runtime.PREVIEW_ROWS) if len(rows) else None


def _log(
    context: dg.AssetExecutionContext,
    window: runtime.Window,
    changes: Revisions,
    incomplete: pd.DataFrame,
) -> None:
    context.log.info(
        f"[p1.finance] {window}: {changes.new} new, {changes.revised} revised, "
        f"{changes.unchanged} unchanged, {len(incomplete)} waiting for parts"
    )
    if changes.revised:
        revised = changes.rows[changes.rows["revised_on"].notna()].head(5)
        context.log.warning(
            f"[p1.finance] BaoStock changed {changes.revised} stored statements (kept in "
            "finance_revisions), e.g. "
            + ", ".join(f"{r.code} {r.stat_date:%Y-%m-%d}" for r in revised.itertuples())
        )
    if len(incomplete):
        context.log.warning(
            f"[p1.finance] {len(incomplete)} statements lack some APIs' rows (their requests "
            "failed or BaoStock does not serve them yet) and wait, e.g. "
            + ", ".join(
                f"{r.code} {r.stat_date:%Y-%m-%d} ({r.missing})"
                for r in incomplete.head(5).itertuples()
            )
            + ": rematerialize the p1 raw assets for these periods"
        )
