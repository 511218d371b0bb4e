"""One raw sync's working set (window, pool, warehouse, report) and how a dataset declares it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

    from stock_pipeline.baostock.pool import BaostockPool, QueryResult
    from stock_pipeline.warehouse.engine import Warehouse


class SyncError(Exception):
    """A raw sync cannot go on; the message says why and what to do."""


@dataclass
class RawJob:
    """Everything a sync function uses: it reads, fetches, writes and fills `report`."""

    name: str  # the raw table (= the asset's name)
    context: dg.AssetExecutionContext
    window: runtime.Window | None
    pool: BaostockPool
    wh: Warehouse
    calendar: TradingCalendar
    settings: Settings
    report: runtime.Report

    @property
    def log(self) -> Any:
        return self.context.log

    @property
    def batch_size(self) -> int:
        return self.settings.baostock_batch_size

    @property
    def window_required(self) -> runtime.Window:
        if self.window is None:
            raise SyncError(f"{self.name} needs a partition (a trading day or a range)")
        return self.window

    def to_frame(self, api: str, result: QueryResult) -> pd.DataFrame:
        from stock_pipeline.baostock.typed import to_frame

        return to_frame(api, result.fields, result.rows)

    async def read_frame(self, table: str, sql: str, *args: Any) -> pd.DataFrame:
        from stock_pipeline.assets import store

        return await store.read_frame(self.wh, table, sql, *args)

    async def record_state(
        self, *, ok: Sequence[str], failures: Mapping[str, str], through: dt.date | None = None
    ) -> None:
        """sync_state for this dataset's codes, through the window's end by default."""
        from stock_pipeline.assets import store

        end = through or (self.window.end if self.window else None)
        await store.record_sync_state(self.wh, self.name, through=end, ok=ok, failures=failures)


SyncFunction = Callable[[RawJob], Awaitable[runtime.Report]]


@dataclass(frozen=True)
class RawSync:
    """How a raw dataset is synced: the function, whether it is partitioned by trading day,
    and the assets whose tables it reads."""

    run: SyncFunction
    partitioned: bool
    deps: tuple[str, ...] = ()
    per_code: bool = True  # fetched one request per code (else per day or once)
