"""Raw assets, generated: one per RAW_DATASETS entry (warehouse/tables.py) that has a sync.

The dataset spec gives the asset its name, group, description and columns; the sync (p0.py ..
p5.py) says how to fetch it and on which partitions (trading days, statement periods, years,
weeks, months, or none). Within a run, one raw step at a time opens a session pool
(the executor's tag limit); every raw asset is in the `baostock` concurrency pool, which an
instance limits across runs with `concurrency: pools:` in its dagster.yaml. Every partitioned
one takes a range in one run (BackfillPolicy.single_run), which `--partition-range` requires.
"""

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

import dagster as dg

from stock_pipeline.assets import runtime
from stock_pipeline.assets.partitions import NotPublishedError, require_published
from stock_pipeline.assets.raw.job import RawJob, RawSync, SyncError, SyncFunction
from stock_pipeline.calendar import TradingCalendar
from stock_pipeline.instance import BAOSTOCK_POOL
from stock_pipeline.resources import BaostockResource, WarehouseResource
from stock_pipeline.warehouse.tables import RAW_DATASETS, RawDataset

if TYPE_CHECKING:
    from stock_pipeline.baostock.pool import BaostockPool
    from stock_pipeline.settings import Settings


def _sync(module: str, function: str) -> SyncFunction:
    """A sync function imported when it first runs (the module imports pandas, the pool and the
    writer, which loading the code location does without)."""

    async def run(job: RawJob) -> runtime.Report:
        return await getattr(importlib.import_module(module), function)(job)

    run.__name__ = function
    return run


def _module(group: str) -> str:
    return f"stock_pipeline.assets.raw.{group}"


P0, P1, P2, P3, P4, P5 = (_module(f"p{n}") for n in range(6))
_FINANCE = ("profit", "operation", "growth", "balance", "cash_flow", "dupont")
SYNCS: dict[str, RawSync] = {
    # P0 core daily
    "raw_trade_dates": RawSync(_sync(P0, "sync_trade_dates"), partitions=None),
    "raw_stock_basic": RawSync(_sync(P0, "sync_stock_basic"), partitions=None),
    "raw_all_stock": RawSync(_sync(P0, "sync_all_stock"), partitions="day", per_code=False),
    "raw_k_daily": RawSync(
        _sync(P0, "sync_k_daily"), partitions="day", deps=("raw_all_stock", "raw_stock_basic")
    ),
    "raw_adjust_factor": RawSync(
        _sync(P0, "sync_adjust_factor"), partitions="day", deps=("raw_k_daily",)
    ),
    # P1 financials: by statement period, for the stocks listed in it; the five APIs after
    # profit only where raw_profit holds a statement (the same report)
    **{
        f"raw_{name}": RawSync(
            _sync(P1, f"sync_{name}"),
            partitions="quarter",
            deps=("raw_stock_basic",) if name == "profit" else ("raw_stock_basic", "raw_profit"),
        )
        for name in _FINANCE
    },
    # P2 corporate actions and reports: by year
    **{
        name: RawSync(_sync(P2, f"sync_{name.removeprefix('raw_')}"), partitions="year",
                      deps=("raw_stock_basic",))
        for name in ("raw_dividend", "raw_performance_express", "raw_forecast")
    },
    # P3 indexes: daily bars of the configured indexes; constituents' snapshots
    "raw_index_daily": RawSync(_sync(P3, "sync_index_daily"), partitions="day", per_code=False),
    **{
        f"raw_{name}_stocks": RawSync(
            _sync(P3, f"sync_{name}_stocks"), partitions=None, per_code=False
        )
        for name in ("hs300", "sz50", "zz500")
    },
    # P4 industry snapshots
    "raw_stock_industry": RawSync(
        _sync(P4, "sync_stock_industry"), partitions=None, per_code=False
    ),
    # P5 weekly and monthly bars; macro series
    "raw_k_weekly": RawSync(_sync(P5, "sync_k_weekly"), partitions="week",
                            deps=("raw_stock_basic",)),
    "raw_k_monthly": RawSync(_sync(P5, "sync_k_monthly"), partitions="month",
                             deps=("raw_stock_basic",)),
    **{
        name: RawSync(_sync(P5, f"sync_{name.removeprefix('raw_')}"), partitions=None,
                      per_code=False)
        for name in ("raw_deposit_rate", "raw_loan_rate", "raw_required_reserve_ratio",
                     "raw_money_supply_month", "raw_money_supply_year")
    },
}  # fmt: skip
# Op tag of every step that opens a BaoStock session pool (the executor runs one at a time).
BAOSTOCK_STEP_TAG = "stock_pipeline/baostock_sessions"
# A failed raw step is tried again once, a little later (a BaoStock hiccup); its writes are
# idempotent, so a retry redoes nothing wrong.
RETRY = dg.RetryPolicy(
    max_retries=1, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def build_raw_asset(
    spec: RawDataset,
    sync: RawSync,
    calendar: TradingCalendar,
    partitions: Mapping[str, dg.PartitionsDefinition],
) -> dg.AssetsDefinition:
    """The asset that syncs one raw dataset with `sync`."""

    @dg.asset(
        name=spec.table,
        group_name=spec.group.lower(),
        description=f"BaoStock {spec.api} -> {spec.table}. {spec.description}".strip(),
        deps=[dg.AssetKey(name) for name in sync.deps],
        partitions_def=partitions[sync.partitions] if sync.partitions else None,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=BAOSTOCK_POOL,
        retry_policy=RETRY,
        kinds={"baostock", "postgres"},
        metadata=runtime.definition_metadata(spec.table),
        tags={"cadence": spec.cadence},
        op_tags={BAOSTOCK_STEP_TAG: "pool"},
    )
    async def raw_asset(
        context: dg.AssetExecutionContext,
        baostock: BaostockResource,
        warehouse: WarehouseResource,
    ) -> dg.MaterializeResult:
        window = _window(context, calendar, sync.partitions)
        report = runtime.Report(spec.table, window)
        settings = baostock.settings()
        if window is not None and sync.partitions == "day":
            _require_published(calendar, window, settings)
        async with runtime.open_pool_and_warehouse(baostock, warehouse) as (pool, wh):
            job = RawJob(spec.table, context, window, pool, wh, calendar, settings, report)
            try:
                await _sync_and_count(job, sync, pool)
            except SyncError as exc:
                await _record_outcome(job, error=str(exc))
                # Retrying cannot help: the message says what to do first.
                raise dg.Failure(
                    str(exc), metadata=report.metadata(), allow_retries=False
                ) from None
            except Exception as exc:
                await _record_outcome(job, error=f"{type(exc).__name__}: {exc}")
                raise
            await _record_outcome(job)
        context.log.info(
            f"[{spec.group.lower()}.{spec.table}] {window or 'all'}: "
            f"{report.rows_written.get(spec.table, 0)} rows, "
            f"{len(report.failures)} failed, {report.stages.wall_s:.1f}s"
        )
        return report.result()

    return raw_asset


def _window(
    context: dg.AssetExecutionContext, calendar: TradingCalendar, kind: str | None
) -> runtime.Window | None:
    if kind is None:
        return None
    if kind == "day":
        return runtime.window_of(context, calendar)
    return runtime.period_window_of(context, calendar)


def _require_published(
    calendar: TradingCalendar, window: runtime.Window, settings: "Settings"
) -> None:
    try:
        require_published(calendar, window.end, settings.daily_run_time)
    except NotPublishedError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None


async def _sync_and_count(job: RawJob, sync: RawSync, pool: "BaostockPool") -> None:
    try:
        await sync.run(job)
    finally:
        # Every message this asset sent BaoStock: queries with their pages, logins.
        job.report.server_requests = pool.stats.server_requests
        job.report.extra["baostock_logins"] = pool.stats.logins


async def _record_outcome(job: RawJob, error: str | None = None) -> None:
    """fetch_log (and, for datasets not fetched per code, sync_state) for this sync; `error`
    when it failed as a whole."""
    from stock_pipeline.assets import store

    report = job.report
    await store.record_fetch(
        job.wh,
        run_id=job.context.run.run_id,
        dataset=job.name,
        window=job.window,
        requested=report.requested or 0,
        failures=report.failures,
        rows=report.rows_written.get(job.name, 0),
        seconds=report.stages.wall_s,
        error=error,
    )
    if not (job.window and SYNCS[job.name].per_code):
        # Datasets fetched once or per day have one sync_state row (code '').
        failed = {"": error} if error else {}
        if report.failures and not error:
            failed = {"": f"{len(report.failures)} requests failed"}
        through = job.window.end if job.window else runtime.today()
        await job.record_state(ok=[] if failed else [""], failures=failed, through=through)


def raw_assets(
    calendar: TradingCalendar, partitions: Mapping[str, dg.PartitionsDefinition]
) -> list[dg.AssetsDefinition]:
    """Every raw asset that has a sync, in RAW_DATASETS order."""
    return [
        build_raw_asset(spec, SYNCS[spec.table], calendar, partitions)
        for spec in RAW_DATASETS
        if spec.table in SYNCS
    ]
