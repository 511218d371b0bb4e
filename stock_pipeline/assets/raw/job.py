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


# Partition kinds of raw datasets (assets/partitions.py builds each): trading days, statement
# periods (quarters), calendar years, weeks, months.
PARTITION_KINDS = ("day", "quarter", "year", "week", "month")


@dataclass(frozen=True)
class RawSync:
    """How a raw dataset is synced: the function, its partition kind (None: the whole dataset
    at once), and the assets whose tables it reads."""

    run: SyncFunction
    partitions: str | None
    deps: tuple[str, ...] = ()
    per_code: bool = True  # fetched one request per code (else per day or once)

    def __post_init__(self) -> None:
        if self.partitions is not None and self.partitions not in PARTITION_KINDS:
            raise ValueError(f"unknown partition kind {self.partitions!r}: {PARTITION_KINDS}")

    @property
    def partitioned(self) -> bool:
        return self.partitions is not None


# A range in which more keys fail than this share is failed as a whole (BaoStock is down or
# refusing us); below it, the run succeeds and lists the failed keys.
FAILED_SHARE_LIMIT = 0.5


def fail_if_mostly_failed(job: RawJob, requested: int, failures: dict[str, str]) -> None:
    """Fail the sync when most of its requests failed (BaoStock is down or refusing us)."""
    if requested and len(failures) > FAILED_SHARE_LIMIT * requested:
        import pandas as pd

        reasons = pd.Series(list(failures.values())).value_counts().head(3)
        top = "; ".join(f"{n}x {reason}" for reason, n in reasons.items())
        raise SyncError(
            f"{job.name}: {len(failures)} of {requested} requests failed ({top}); what "
            "succeeded was written. Check BaoStock's reachability and "
            "STOCK_PIPELINE_BAOSTOCK_QPS / _CONCURRENCY, then rematerialize"
        )
