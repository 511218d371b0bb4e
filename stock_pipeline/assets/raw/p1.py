"""P1, financial statements: the six quarterly BaoStock APIs, by statement period.

A run covers one or more statement periods (quarter partitions); each period is fetched and
written on its own:
- only the stocks listed during the period are asked (raw_stock_basic: type 1, IPO on or before
  its end, not delisted before its start): no other code can have reported for it;
- raw_profit is asked first; the five others (operation, growth, balance, cash flow, DuPont)
  come from the same report and are asked only for the (code, period) raw_profit holds a
  statement for: a stock that has not published yet costs one request, not six;
- an empty answer means "not published yet" (normal for recent periods);
- rows replace what was stored for (the codes whose request succeeded, the period's stat_date):
  a failed code keeps what it had.
"""

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.raw.job import RawJob, SyncError, fail_if_mostly_failed
from stock_pipeline.baostock.fetch import fetch_many
from stock_pipeline.compute.finance import (
    ANCHOR,
    STOCK_TYPE,
    Period,
    listed_codes,
    period_label,
    periods_between,
    quarter_end,
    quarter_start,
)

ANCHOR_TABLE = f"raw_{ANCHOR}"


async def sync_profit(job: RawJob) -> runtime.Report:
    """query_profit_data for the stocks listed in each period of the window."""
    return await _sync_statements(job, "profit")


async def sync_operation(job: RawJob) -> runtime.Report:
    """query_operation_data where raw_profit holds a statement."""
    return await _sync_statements(job, "operation")


async def sync_growth(job: RawJob) -> runtime.Report:
    """query_growth_data where raw_profit holds a statement."""
    return await _sync_statements(job, "growth")


async def sync_balance(job: RawJob) -> runtime.Report:
    """query_balance_data where raw_profit holds a statement."""
    return await _sync_statements(job, "balance")


async def sync_cash_flow(job: RawJob) -> runtime.Report:
    """query_cash_flow_data where raw_profit holds a statement."""
    return await _sync_statements(job, "cash_flow")


async def sync_dupont(job: RawJob) -> runtime.Report:
    """query_dupont_data where raw_profit holds a statement."""
    return await _sync_statements(job, "dupont")


@dataclass
class _PeriodPlan:
    """Who is asked for one period, and the requests each rule saved."""

    period: Period
    codes: list[str]
    saved_unlisted: int  # stocks of raw_stock_basic not listed in the period
    saved_without_profit: int = 0  # listed, but raw_profit holds no statement of theirs
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def stat_date(self) -> dt.date:
        return quarter_end(*self.period)


async def _sync_statements(job: RawJob, name: str) -> runtime.Report:
    """One quarterly API over the window's periods, period by period (see the module doc)."""
    report, window = job.report, job.window_required
    periods = periods_between(window.start, window.end)
    if not periods:
        raise SyncError(f"{job.name}: {window} holds no statement period (quarter)")
    plans, stocks = await _plan(job, name, periods)
    failures: dict[str, str] = {}
    ok_codes: set[str] = set()
    for plan in plans:
        ok = await _fetch_period(job, f"query_{name}_data", plan, failures)
        ok_codes.update(ok)
    report.requested = sum(len(p.codes) for p in plans)
    report.failures = failures
    failed_codes = {key.split()[0]: reason for key, reason in failures.items()}
    await job.record_state(
        ok=sorted(ok_codes - set(failed_codes)), failures=failed_codes, through=window.end
    )
    report.extra.update(_metadata(plans, stocks, anchored=name != ANCHOR))
    fail_if_mostly_failed(job, report.requested, failures)
    return report


async def _plan(job: RawJob, name: str, periods: list[Period]) -> tuple[list[_PeriodPlan], int]:
    """The codes to ask per period (listed in it; for the five, with a statement in
    raw_profit), and how many stocks raw_stock_basic knows."""
    basic = await job.read_frame(
        "raw_stock_basic",
        "SELECT code, security_type, ipo_date, out_date FROM raw_stock_basic ORDER BY code",
    )
    stocks = int(basic["security_type"].astype("Int64").eq(STOCK_TYPE).fillna(False).sum())
    if stocks == 0:
        raise SyncError(
            f"{job.name}: raw_stock_basic holds no stock: materialize raw_stock_basic first "
            "(it tells which stocks were listed in each period)"
        )
    plans = []
    for period in periods:
        listed = listed_codes(basic, *period)
        plans.append(_PeriodPlan(period, listed, saved_unlisted=stocks - len(listed)))
    if name != ANCHOR:
        await _keep_codes_with_profit(job, plans)
    return plans, stocks


async def _keep_codes_with_profit(job: RawJob, plans: list[_PeriodPlan]) -> None:
    """Narrow each period's codes to those raw_profit holds a statement of; refuse periods
    raw_profit was never fetched for (an empty raw_profit would silently ask nobody)."""
    never = []
    for plan in plans:
        fetched = await job.wh.copy_pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM fetch_log WHERE dataset = $1 AND status <> 'failed' "
            "AND window_start <= $2 AND window_end >= $3)",
            ANCHOR_TABLE,
            quarter_start(*plan.period),
            plan.stat_date,
        )
        if not fetched:
            never.append(period_label(plan.period))
    if never:
        raise SyncError(
            f"{job.name}: {ANCHOR_TABLE} was never fetched for {', '.join(never)}; the other "
            f"quarterly APIs are asked only where it holds a statement: materialize "
            f"{ANCHOR_TABLE} for these partitions first (or with them, in one run)"
        )
    rows = await job.wh.copy_pool.fetch(
        f"SELECT stat_date, array_agg(code) AS codes FROM {ANCHOR_TABLE} "
        "WHERE stat_date = ANY($1::date[]) GROUP BY stat_date",
        [plan.stat_date for plan in plans],
    )
    published = {r["stat_date"]: set(r["codes"]) for r in rows}
    for plan in plans:
        with_profit = published.get(plan.stat_date, set())
        kept = [c for c in plan.codes if c in with_profit]
        plan.saved_without_profit = len(plan.codes) - len(kept)
        plan.codes = kept


async def _fetch_period(
    job: RawJob, api: str, plan: _PeriodPlan, failures: dict[str, str]
) -> list[str]:
    """Fetch one period for its codes and replace their rows of its stat_date; returns the
    codes whose request succeeded (failed ones are added to `failures`, keyed "code 2024Q1")."""
    report, label = job.report, period_label(plan.period)
    year, quarter = plan.period
    if not plan.codes:  # nobody listed, or (for the five) nothing published yet
        plan.outcome = {"requested": 0, "failed": 0, "published": 0, "baostock_messages": 0}
        return []
    requests = {code: {"code": code, "year": year, "quarter": quarter} for code in plan.codes}
    with report.stages.time("fetch"):
        result = await fetch_many(
            job.pool, api, requests, label=f"p1.{job.name} {label}", batch_size=job.batch_size
        )
    ok = [c for c in plan.codes if c not in result.failures]
    failures.update({f"{code} {label}": reason for code, reason in result.failures.items()})
    frame = _rows_of_period(job, result.frame, plan)
    if ok:
        with report.stages.time("write"):
            report.wrote(
                await store.replace_window(
                    job.wh,
                    job.name,
                    frame,
                    start=plan.stat_date,
                    end=plan.stat_date,
                    codes=ok,
                    date_column="stat_date",
                )
            )
    if report.preview is None and not frame.empty:
        report.preview = frame.head(runtime.PREVIEW_ROWS)
    plan.outcome = {
        "requested": len(plan.codes),
        "failed": len(result.failures),
        "published": int(frame["code"].nunique()) if len(frame) else 0,
        "baostock_messages": result.server_requests,
    }
    return ok


def _rows_of_period(job: RawJob, frame: pd.DataFrame, plan: _PeriodPlan) -> pd.DataFrame:
    """The rows answering for the period's stat_date (another stat_date would lie outside the
    replaced key range: dropped, with a warning)."""
    if frame.empty:
        return frame
    stat_dates = pd.to_datetime(frame["stat_date"])
    inside = (stat_dates == pd.Timestamp(plan.stat_date)).to_numpy(bool)
    if not inside.all():
        odd = frame.loc[~inside, ["code", "stat_date"]].head(5)
        job.log.warning(
            f"[p1.{job.name}] {period_label(plan.period)}: {int((~inside).sum())} rows carry "
            f"another stat_date than {plan.stat_date} (dropped), e.g. "
            + ", ".join(f"{r.code} {r.stat_date}" for r in odd.itertuples())
        )
    return frame.loc[inside].reset_index(drop=True)


def _metadata(plans: list[_PeriodPlan], stocks: int, anchored: bool) -> dict[str, Any]:
    """Requests per period and what the listing (and profit-first) rule saved."""
    table = pd.DataFrame(
        [
            {
                "period": period_label(p.period),
                "listed": len(p.codes) + p.saved_without_profit,
                **p.outcome,
                "saved_unlisted": p.saved_unlisted,
                **({"saved_without_profit": p.saved_without_profit} if anchored else {}),
            }
            for p in plans
        ]
    )
    out: dict[str, Any] = {
        "periods": [period_label(p.period) for p in plans],
        "stocks_in_stock_basic": stocks,
        "requests_by_period": runtime.markdown_table(table, rows=len(table)),
        "requests_saved_unlisted": sum(p.saved_unlisted for p in plans),
        "statements_published": int(table["published"].sum()),
    }
    if anchored:
        out["requests_saved_without_profit"] = sum(p.saved_without_profit for p in plans)
    return out
