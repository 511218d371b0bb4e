"""What every asset body needs around read -> compute -> write: the partition window, the open
pool and warehouse, stage timings and the materialization's metadata.

Light on purpose: Dagster imports the code location in every process (webserver, daemon, each
step), so modules that definitions import leave pandas, the writer and the pool to the bodies
that use them (store.py, the sync and build modules)."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import dagster as dg

from stock_pipeline.assets.partitions import partition_day
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.resources import BaostockResource, WarehouseResource
from stock_pipeline.warehouse.tables import SQL_TYPES, table

if TYPE_CHECKING:
    import pandas as pd

    from stock_pipeline.baostock.pool import BaostockPool
    from stock_pipeline.warehouse.engine import Warehouse
    from stock_pipeline.warehouse.writer import WriteResult

SHANGHAI = ZoneInfo("Asia/Shanghai")
# The stocks query_all_stock lists as trading on each day of [$1, $2]: what a day's bars are
# checked against. Like compute.reference.stock_universe, a code stock_basic does not know
# counts.
LISTED_TRADING_STOCKS_SQL = """
SELECT a.trade_date, a.code FROM raw_all_stock a
LEFT JOIN raw_stock_basic b ON b.code = a.code
WHERE a.trade_date BETWEEN $1 AND $2 AND a.trade_status AND coalesce(b.security_type, 1) = 1
"""
PREVIEW_ROWS = 5
FAILURES_SHOWN = 50


def today() -> dt.date:
    """Today in Shanghai, where the exchange's days are counted."""
    return dt.datetime.now(SHANGHAI).date()


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


def window_of(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, calendar: TradingCalendar
) -> Window:
    """The run's partition range as trading days (one key or a single-run range)."""
    keys = context.partition_key_range
    start, end = partition_day(keys.start), partition_day(keys.end)
    return Window(start, end, tuple(calendar.sessions_between(start, end)))


def period_window_of(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, calendar: TradingCalendar
) -> Window:
    """The run's partition range of a slower cadence (statement periods, years, weeks, months)
    as calendar days [first day, last day], with the trading days in it."""
    time_window = context.partition_time_window
    start = time_window.start.astimezone(SHANGHAI).date()
    end = time_window.end.astimezone(SHANGHAI).date() - dt.timedelta(days=1)
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
    import pandas as pd

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
    spec = table(name)
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
    server_requests: int | None = None  # every message the asset sent BaoStock (pool stats)
    stages: Stages = field(default_factory=Stages)
    preview: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def wrote(self, result: WriteResult) -> None:
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
