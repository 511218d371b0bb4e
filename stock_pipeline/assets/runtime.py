"""What every asset body needs around read -> compute -> write: the partition window, the open
pool and warehouse, stage timings, the materialization's metadata, and the bookkeeping tables
(fetch_log, sync_state)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd
from sqlalchemy import Table

from stock_pipeline.assets.partitions import partition_day
from stock_pipeline.baostock.pool import BaostockPool
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import BaostockResource, WarehouseResource
from stock_pipeline.warehouse import indexes, reader, writer
from stock_pipeline.warehouse.engine import Warehouse
from stock_pipeline.warehouse.tables import SQL_TYPES, table

PREVIEW_ROWS = 5
FAILURES_SHOWN = 50


@dataclass(frozen=True)
class Window:
    """The trading days a run covers: [start, end] and the sessions in it."""

    start: dt.date
    end: dt.date
    sessions: tuple[dt.date, ...]

    @property
    def days(self) -> int:
        return len(self.sessions)

    def __str__(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}..{self.end}"


def window_of(context: dg.AssetExecutionContext, calendar: TradingCalendar) -> Window:
    """The run's partition range as trading days (one key or a single-run range)."""
    keys = context.partition_key_range
    start, end = partition_day(keys.start), partition_day(keys.end)
    return Window(start, end, tuple(calendar.sessions_between(start, end)))


@contextlib.asynccontextmanager
async def open_pool_and_warehouse(
    baostock: BaostockResource, warehouse: WarehouseResource
) -> AsyncIterator[tuple[BaostockPool, Warehouse]]:
    """Both sources for one asset body, closed on every path (errors and cancellation too)."""
    async with warehouse.open() as wh, baostock.pool() as pool:
        yield pool, wh


class Stages:
    """Seconds spent per stage of an asset (fetch, transform, write, ...), summed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def time(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - began)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._started

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"seconds_{k}": round(v, 3) for k, v in self.seconds.items()}
        out["seconds_wall"] = round(self.wall_s, 3)
        return out


def markdown_table(frame: pd.DataFrame, rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    """A small preview of rows for the UI (dates as dates, floats as BaoStock shows them)."""
    head = frame.head(rows).copy()
    for name in head.columns:
        if pd.api.types.is_datetime64_any_dtype(head[name]):
            head[name] = head[name].dt.strftime("%Y-%m-%d")
    columns = [str(c) for c in head.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in head.itertuples(index=False):
        cells = ["" if pd.isna(v) else str(v) for v in record]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def failures_markdown(failures: Mapping[str, str], what: str = "code") -> dg.MetadataValue:
    """Failed keys with their reasons (the first FAILURES_SHOWN, then how many more)."""
    lines = [f"| {what} | reason |", "|---|---|"]
    for key, reason in list(failures.items())[:FAILURES_SHOWN]:
        lines.append(f"| {key} | {reason.replace('|', '/')} |")
    if len(failures) > FAILURES_SHOWN:
        lines.append(f"| ... | and {len(failures) - FAILURES_SHOWN} more |")
    return dg.MetadataValue.md("\n".join(lines) if failures else "none")


def table_schema(name: str) -> dg.TableSchema:
    """Dagster's column metadata for a warehouse table, from its one declaration in tables.py."""
    spec: Table = table(name)
    names = {v: k for k, v in SQL_TYPES.items()}
    columns = []
    for column in spec.c:
        kind = names.get(type(column.type), type(column.type).__name__.lower())
        constraints = dg.TableColumnConstraints(nullable=column.nullable)
        columns.append(
            dg.TableColumn(
                column.name,
                kind,
                description=column.comment or None,
                constraints=constraints,
            )
        )
    return dg.TableSchema(columns=columns)


def definition_metadata(name: str) -> dict[str, Any]:
    """Static metadata of an asset stored in warehouse table `name`."""
    return {
        "dagster/column_schema": table_schema(name),
        "dagster/table_name": f"public.{name}",
    }


@dataclass
class Report:
    """What one materialization did, turned into Dagster metadata."""

    table: str
    window: Window | None = None
    rows_written: dict[str, int] = field(default_factory=dict)
    requested: int | None = None  # keys (codes, days) asked of BaoStock
    failures: dict[str, str] = field(default_factory=dict)
    server_requests: int | None = None
    stages: Stages = field(default_factory=Stages)
    preview: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def wrote(self, result: writer.WriteResult) -> None:
        self.rows_written[result.table] = self.rows_written.get(result.table, 0) + result.rows

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dagster/row_count": self.rows_written.get(self.table, 0)}
        if self.window is not None:
            out["window"] = str(self.window)
            out["trading_days"] = self.window.days
        out["rows_written"] = dg.MetadataValue.json(self.rows_written)
        if self.requested is not None:
            out["keys_requested"] = self.requested
            out["keys_failed"] = len(self.failures)
            out["failures"] = failures_markdown(self.failures)
        if self.server_requests is not None:
            out["baostock_requests"] = self.server_requests
        out.update(self.stages.metadata())
        if self.preview is not None and not self.preview.empty:
            out["preview"] = markdown_table(self.preview)
        out.update(self.extra)
        return out

    def result(self, **kwargs: Any) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=self.metadata(), **kwargs)


# -- writes with the configured chunking -----------------------------------------------------


async def replace_window(
    wh: Warehouse,
    name: str,
    rows: pd.DataFrame,
    *,
    start: dt.date,
    end: dt.date,
    codes: Sequence[str] | None = None,
) -> writer.WriteResult:
    return await writer.replace_window(
        wh.copy_pool,
        name,
        rows,
        start=start,
        end=end,
        codes=codes,
        chunk_rows=wh.settings.copy_chunk_rows,
        streams=wh.settings.copy_streams,
    )


async def upsert(wh: Warehouse, name: str, rows: pd.DataFrame) -> writer.WriteResult:
    return await writer.upsert(wh.copy_pool, name, rows, chunk_rows=wh.settings.copy_chunk_rows)


@contextlib.asynccontextmanager
async def bulk_load_if_large(
    wh: Warehouse, name: str, window: Window, expected_rows: int
) -> AsyncIterator[bool]:
    """Index management around a big range: secondary indexes are dropped for the load and
    rebuilt once after it, when the range has at least STOCK_PIPELINE_BULK_LOAD_MIN_DAYS days
    and would at least double the table (rebuilding a big table's indexes for a small addition
    costs more than maintaining them)."""
    stored = await wh.copy_pool.fetchval(
        "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c "
        "WHERE c.oid = $1::regclass OR c.oid IN "
        "(SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::regclass)",
        name,
    )
    large = window.days >= wh.settings.bulk_load_min_days and expected_rows >= stored
    # Indexes an interrupted bulk load dropped come back first, whatever this write's size.
    await indexes.repair_indexes(wh.copy_pool)
    if not large:
        yield False
        return
    async with indexes.bulk_load(wh.copy_pool, name):
        yield True


# -- bookkeeping -----------------------------------------------------------------------------


async def record_fetch(
    wh: Warehouse,
    *,
    run_id: str,
    dataset: str,
    window: Window | None,
    requested: int,
    failures: Mapping[str, str],
    rows: int,
    seconds: float,
) -> None:
    """One fetch_log row: what was fetched, when, and how it went."""
    status = "ok" if not failures else ("failed" if len(failures) >= requested else "partial")
    await wh.copy_pool.execute(
        "INSERT INTO fetch_log (run_id, dataset, window_start, window_end, codes_requested, "
        "codes_failed, rows, seconds, status, failures) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        run_id,
        dataset,
        window.start if window else None,
        window.end if window else None,
        requested,
        len(failures),
        rows,
        seconds,
        status,
        json.dumps(dict(failures), ensure_ascii=False) if failures else None,
    )


async def record_sync_state(
    wh: Warehouse,
    dataset: str,
    *,
    through: dt.date | None,
    ok: Iterable[str] = ("",),
    failures: Mapping[str, str] | None = None,
) -> None:
    """Where `dataset` stands per code ('' for datasets not fetched per code).

    Codes in `ok` were fetched (or verified) through `through`; last_fetched_date only ever
    moves forward, so a backfill of older days never hides newer ones. Failed codes keep
    their date and count consecutive failures.
    """
    failures = failures or {}
    codes = [*ok, *failures]
    if not codes:
        return
    statuses = ["ok"] * (len(codes) - len(failures)) + ["failed"] * len(failures)
    errors = [None] * (len(codes) - len(failures)) + list(failures.values())
    await wh.copy_pool.execute(
        """
        INSERT INTO sync_state AS s (dataset, code, last_fetched_date, last_success_at,
            last_attempt_at, last_status, last_error, consecutive_failures)
        SELECT $1, c.code, CASE WHEN c.status = 'ok' THEN $4::date END,
            CASE WHEN c.status = 'ok' THEN now() END, now(), c.status, c.error,
            CASE WHEN c.status = 'ok' THEN 0 ELSE 1 END
        FROM unnest($2::text[], $3::text[], $5::text[]) AS c(code, status, error)
        ON CONFLICT (dataset, code) DO UPDATE SET
            last_fetched_date = CASE WHEN excluded.last_status = 'ok'
                THEN greatest(s.last_fetched_date, excluded.last_fetched_date)
                ELSE s.last_fetched_date END,
            last_success_at = coalesce(excluded.last_success_at, s.last_success_at),
            last_attempt_at = excluded.last_attempt_at,
            last_status = excluded.last_status,
            last_error = excluded.last_error,
            consecutive_failures = CASE WHEN excluded.last_status = 'ok' THEN 0
                ELSE s.consecutive_failures + 1 END
        """,
        dataset,
        codes,
        statuses,
        through,
        errors,
    )


async def read_sync_dates(
    wh: Warehouse, dataset: str, codes: Sequence[str]
) -> dict[str, dt.date | None]:
    """last_fetched_date per code of `dataset` (codes never fetched are absent)."""
    rows = await wh.copy_pool.fetch(
        "SELECT code, last_fetched_date FROM sync_state WHERE dataset = $1 "
        "AND code = ANY($2::text[])",
        dataset,
        list(codes),
    )
    return {r["code"]: r["last_fetched_date"] for r in rows}


# -- reads ----------------------------------------------------------------------------------


async def read_frame(wh: Warehouse, name: str, sql: str, *args: Any) -> pd.DataFrame:
    """Rows of `sql` as a DataFrame typed by the columns of warehouse table `name`."""
    return await reader.read_frame(wh.copy_pool, name, sql, *args)
