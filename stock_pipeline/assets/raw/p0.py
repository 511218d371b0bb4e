"""P0, the core daily data: how each raw dataset is fetched from BaoStock and written.

- raw_trade_dates: BaoStock's calendar, also stored as the file that extends the trading-day
  partitions past the bundled calendar (calendar.py);
- raw_stock_basic: every security with its type and listing dates;
- raw_all_stock: the securities listed on each trading day, one request per day;
- raw_k_daily: unadjusted daily bars, ONE request per code for the whole range, over the
  range's universe (every code listed on any of its days, delisted ones included);
- raw_adjust_factor: back-adjust factors, fetched only for codes whose factor can have changed.
"""

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from stock_pipeline import calendar as trading_calendar
from stock_pipeline.assets import runtime, store
from stock_pipeline.assets.raw.job import RawJob, SyncError, fail_if_mostly_failed
from stock_pipeline.baostock.fetch import fetch_daily_bars, fetch_many
from stock_pipeline.compute.daily import ex_right_codes, factor_corrections
from stock_pipeline.compute.reference import stock_universe

# Factor history is fetched from the first trading day on: the factor in force on any day is
# that of the latest ex-right date before it, however old.
FACTOR_HISTORY_START = trading_calendar.SSE_FIRST_SESSION


def _iso(day: dt.date) -> str:
    return day.isoformat()


async def sync_trade_dates(job: RawJob) -> runtime.Report:
    """BaoStock's trade dates from the start date to the end of next year, stored twice: in
    raw_trade_dates and as the calendar file definitions extend the partitions from."""
    report = job.report
    start = job.settings.start_date
    end = dt.date(runtime.today().year + 1, 12, 31)
    with report.stages.time("fetch"):
        result = await job.pool.query(
            "query_trade_dates", start_date=_iso(start), end_date=_iso(end)
        )
        frame = job.to_frame("query_trade_dates", result)
    report.requested = 1
    if frame.empty:
        raise SyncError(f"BaoStock returned no trade dates for {start}..{end}")
    frame = _trim_unknown_tail(job, frame)
    with report.stages.time("write"):
        report.wrote(await store.upsert(job.wh, job.name, frame))
        days = [d.date() for d in frame["calendar_date"]]
        flags = frame["is_trading_day"].fillna(False).astype(bool).tolist()
        stored = trading_calendar.store_baostock_calendar(job.settings.home, days, flags)
    bundled = trading_calendar.bundled_calendar()
    differ = trading_calendar.disagreements(bundled, days, flags)
    report.preview = frame.tail(runtime.PREVIEW_ROWS)
    report.extra.update(
        {
            "calendar_first_day": str(stored.first_day),
            "calendar_last_day": str(stored.last_day),
            "sessions": len(stored.sessions),
            "bundled_calendar_last_day": str(bundled.last_day),
            "extends_bundled_calendar": stored.last_day > bundled.last_day,
            "disagreements_with_bundled": len(differ),
        }
    )
    for d in differ[:10]:
        job.log.warning(f"[{job.name}] calendar disagreement: {d}")
    if stored.last_day > job.calendar.last_day:
        # Code locations read the calendar when they load: a running webserver or daemon shows
        # the new trading days once it reloads.
        report.extra["partitions_extended_to"] = str(stored.last_day)
        job.log.info(
            f"[{job.name}] trading days now known through {stored.last_day} (the loaded "
            f"definitions stop at {job.calendar.last_day}): reload the code location to get "
            "their partitions"
        )
    return report


def _trim_unknown_tail(job: RawJob, frame: pd.DataFrame) -> pd.DataFrame:
    """Drop closed days after the last session: a server that does not know the future yet
    may list it as closed, and no partition may appear or vanish on that guess."""
    frame = frame.sort_values("calendar_date", kind="stable").reset_index(drop=True)
    open_rows = np.flatnonzero(frame["is_trading_day"].fillna(False).to_numpy(bool))
    if len(open_rows) == 0:
        raise SyncError("BaoStock's calendar has no trading day at all")
    last = int(open_rows[-1])
    if last < len(frame) - 1:
        job.log.info(
            f"[{job.name}] calendar known through {frame['calendar_date'][last].date()}; "
            f"{len(frame) - 1 - last} closed days after it left out"
        )
    return frame.iloc[: last + 1]


async def sync_stock_basic(job: RawJob) -> runtime.Report:
    """Every security BaoStock knows (stocks, indexes, funds), with listing dates and type."""
    report = job.report
    with report.stages.time("fetch"):
        result = await job.pool.query("query_stock_basic")
        frame = job.to_frame("query_stock_basic", result)
    report.requested = 1
    if frame.empty:
        raise SyncError("BaoStock returned no securities from query_stock_basic")
    with report.stages.time("write"):
        report.wrote(await store.upsert(job.wh, job.name, frame))
    report.preview = frame
    kinds = frame["security_type"].value_counts().sort_index()
    report.extra["securities_by_type"] = {str(k): int(v) for k, v in kinds.items()}
    return report


async def sync_all_stock(job: RawJob) -> runtime.Report:
    """query_all_stock for each trading day of the window (one request per day)."""
    report, window = job.report, job.window_required
    sessions = list(window.sessions)
    position = {day: i for i, day in enumerate(sessions)}

    async def write(frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        frame["trade_date"] = pd.to_datetime(frame["trade_date"])
        for first, last in _contiguous_runs(frame["trade_date"], position, sessions):
            rows = frame[(frame["trade_date"] >= first) & (frame["trade_date"] <= last)]
            with report.stages.time("write"):
                report.wrote(
                    await store.replace_window(
                        job.wh, job.name, rows, start=first.date(), end=last.date()
                    )
                )

    requests = {_iso(day): {"day": _iso(day)} for day in sessions}
    with report.stages.time("fetch"):
        result = await fetch_many(
            job.pool,
            "query_all_stock",
            requests,
            label=f"p0.{job.name}",
            batch_size=job.batch_size,
            on_batch=write,
            key_column="trade_date",
        )
    # Batches were written while the fetch went on (on_batch): the fetch's own time is the rest.
    report.stages.add("fetch", -report.stages.seconds.get("write", 0.0))
    report.requested = result.requested
    report.failures = result.failures
    if result.rows == 0 and len(result.failures) < result.requested:
        raise SyncError(
            f"BaoStock listed no securities on any day of {window}: is the server's data "
            "behind (the day not published yet)?"
        )
    fail_if_mostly_failed(job, result.requested, result.failures)
    return report


def _contiguous_runs(
    days: pd.Series, position: dict[dt.date, int], sessions: Sequence[dt.date]
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Runs of consecutive sessions present in `days` (days missing from a batch failed and
    keep what the warehouse has)."""
    present = sorted(position[d] for d in {t.date() for t in days.unique()})
    runs, begin = [], present[0]
    for previous, current in zip(present, present[1:], strict=False):
        if current != previous + 1:
            runs.append((begin, previous))
            begin = current
    runs.append((begin, present[-1]))
    return [(pd.Timestamp(sessions[a]), pd.Timestamp(sessions[b])) for a, b in runs]


async def range_universe(job: RawJob) -> list[str]:
    """The stocks listed on any day of the window (raw_all_stock), delisted ones included."""
    window = job.window_required
    basic = await job.wh.copy_pool.fetch("SELECT code, security_type FROM raw_stock_basic")
    if not basic:
        raise SyncError(
            "raw_stock_basic is empty: materialize it first (it tells stocks from indexes)"
        )
    listed = await job.wh.copy_pool.fetch(
        "SELECT DISTINCT code FROM raw_all_stock WHERE trade_date BETWEEN $1 AND $2",
        window.start,
        window.end,
    )
    if not listed:
        raise SyncError(
            f"raw_all_stock holds no listing for {window}: materialize raw_all_stock for "
            "these partitions first"
        )
    basic_frame = pd.DataFrame(
        {"code": [r["code"] for r in basic], "security_type": [r["security_type"] for r in basic]}
    )
    return stock_universe(pd.Series([r["code"] for r in listed]), basic_frame)


async def sync_k_daily(job: RawJob) -> runtime.Report:
    """Unadjusted daily bars of the window's universe: one request per code for the whole
    window, written batch by batch as they arrive (memory stays bounded for any range)."""
    report, window = job.report, job.window_required
    universe = await range_universe(job)

    async def write(frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        codes = frame["code"].unique().tolist()
        with report.stages.time("write"):
            report.wrote(
                await store.replace_window(
                    job.wh, job.name, frame, start=window.start, end=window.end, codes=codes
                )
            )
        if report.preview is None:
            report.preview = frame.head(runtime.PREVIEW_ROWS)

    expected = len(universe) * window.days
    async with store.bulk_load_if_large(job.wh, job.name, window, expected) as bulk:
        with report.stages.time("fetch"):
            result = await fetch_daily_bars(
                job.pool,
                universe,
                window.start,
                window.end,
                label=f"p0.{job.name}",
                batch_size=job.batch_size,
                on_batch=write,
            )
    # Batches were written while the fetch went on (on_batch): the fetch's own time is the rest.
    report.stages.add("fetch", -report.stages.seconds.get("write", 0.0))
    report.requested = result.requested
    report.failures = result.failures
    report.extra["index_management"] = bulk
    report.extra["kline_requests_per_code"] = round(
        result.server_requests / max(1, result.requested), 3
    )
    await job.record_state(
        ok=[c for c in universe if c not in result.failures], failures=result.failures
    )
    missing = await missing_bars(job, "raw_k_daily")
    report.extra["listed_codes_missing_bars"] = len(missing)
    report.extra["missing_bars"] = runtime.markdown_table(missing, rows=20)
    if len(missing):
        job.log.warning(
            f"[{job.name}] {len(missing)} (code, day) listed as trading have no bar, e.g. "
            + ", ".join(f"{r.code} {r.trade_date:%Y-%m-%d}" for r in missing.head(5).itertuples())
        )
    fail_if_mostly_failed(job, result.requested, result.failures)
    return report


MISSING_BARS_SQL = f"""
WITH listed AS ({runtime.LISTED_TRADING_STOCKS_SQL})
SELECT l.trade_date, l.code FROM listed l
LEFT JOIN {{bars}} k ON k.code = l.code AND k.trade_date = l.trade_date
WHERE k.code IS NULL
ORDER BY l.trade_date, l.code
"""


async def missing_bars(job: RawJob, bars_table: str) -> pd.DataFrame:
    """(trade_date, code) of stocks query_all_stock listed as trading without a bar."""
    window = job.window_required
    rows = await job.wh.copy_pool.fetch(
        MISSING_BARS_SQL.format(bars=bars_table), window.start, window.end
    )
    return pd.DataFrame(
        {
            "trade_date": pd.to_datetime([r["trade_date"] for r in rows]),
            "code": [r["code"] for r in rows],
        }
    )


LAST_CLOSE_SQL = """
SELECT c.code, k.close
FROM unnest($1::text[]) AS c(code)
CROSS JOIN LATERAL (
    SELECT close FROM raw_k_daily
    WHERE code = c.code AND trade_date < $2 AND close IS NOT NULL
    ORDER BY trade_date DESC LIMIT 1
) k
"""


async def sync_adjust_factor(job: RawJob) -> runtime.Report:
    """Back-adjust factors, fetched only for codes whose factor can have changed.

    A code's factor list is known complete through its sync_state date. A window that follows
    on from that date needs no request for the code unless its bars show an ex-right (pre_close
    differs from the previous close; see compute.daily.ex_right_codes); codes never fetched, or
    with a gap between their state and the window, get their whole factor history (one
    request, a few dozen rows), which replaces what was stored for them.
    """
    report, window = job.report, job.window_required
    universe = [
        r["code"]
        for r in await job.wh.copy_pool.fetch(
            "SELECT DISTINCT code FROM raw_k_daily WHERE trade_date BETWEEN $1 AND $2 ORDER BY 1",
            window.start,
            window.end,
        )
    ]
    if not universe:
        raise SyncError(
            f"raw_k_daily holds no bar for {window}: materialize raw_k_daily for these "
            "partitions first (factors are fetched for the codes that have bars)"
        )
    plan = await _plan_factor_fetch(job, universe)
    with report.stages.time("fetch"):
        result = await fetch_many(
            job.pool,
            "query_adjust_factor",
            {code: _history_request(code, window.end) for code in plan.fetch},
            label=f"p0.{job.name}",
            batch_size=job.batch_size,
        )
    report.requested, report.failures = result.requested, dict(result.failures)
    fetched = [c for c in plan.fetch if c not in result.failures]
    report.failures.update(_ex_rights_without_a_factor(plan, result.frame))
    with report.stages.time("write"):
        corrections = await _corrections(job, plan, result.frame, fetched)
        if fetched:
            report.wrote(
                await store.replace_window(
                    job.wh,
                    job.name,
                    result.frame,
                    start=FACTOR_HISTORY_START,
                    end=window.end,
                    codes=fetched,
                    date_column="divid_operate_date",
                )
            )
        ok = [c for c in [*fetched, *plan.verified] if c not in report.failures]
        await job.record_state(ok=ok, failures=report.failures)
    report.preview = result.frame
    report.extra.update(plan.metadata(len(universe), result.server_requests))
    _report_corrections(job, corrections)
    fail_if_mostly_failed(job, result.requested, result.failures)
    return report


def _history_request(code: str, end: dt.date) -> dict[str, str]:
    return {"code": code, "start_date": _iso(FACTOR_HISTORY_START), "end_date": _iso(end)}


@dataclass
class _FactorPlan:
    """Which codes need their factor history fetched, and why; the others are verified."""

    known: dict[str, dt.date | None]  # sync_state date per code
    unknown: list[str]  # never fetched, or a gap since
    ex_right: list[str]  # their bars show an ex-right since
    verified: list[str]  # follow on from their state without an ex-right: no request

    @property
    def fetch(self) -> list[str]:
        return sorted({*self.unknown, *self.ex_right})

    def metadata(self, codes: int, requests: int) -> dict[str, Any]:
        return {
            "codes_in_window": codes,
            "codes_verified_without_request": len(self.verified),
            "codes_fetched_first_time_or_after_gap": len(self.unknown),
            "codes_fetched_for_ex_right": len(self.ex_right),
            "requests_per_code": round(requests / max(1, codes), 4),
        }


async def _plan_factor_fetch(job: RawJob, universe: list[str]) -> _FactorPlan:
    window = job.window_required
    known = await store.read_sync_dates(job.wh, job.name, universe)
    day_before = job.calendar.previous_session(window.start) or window.start

    def state(code: str) -> dt.date | None:
        return known.get(code)

    done = {c for c in universe if (state(c) or dt.date.min) >= window.end}
    follows = [c for c in universe if c not in done and (state(c) or dt.date.min) >= day_before]
    unknown = [c for c in universe if c not in done and c not in set(follows)]
    if not follows:
        return _FactorPlan(known, unknown, [], [])
    bars = await job.read_frame(
        "raw_k_daily",
        "SELECT code, trade_date, pre_close, close FROM raw_k_daily "
        "WHERE code = ANY($1::text[]) AND trade_date BETWEEN $2 AND $3",
        follows,
        window.start,
        window.end,
    )
    last_close = {
        r["code"]: r["close"]
        for r in await job.wh.copy_pool.fetch(LAST_CLOSE_SQL, follows, window.start)
    }
    changed = ex_right_codes(bars, last_close)
    ex_right = sorted(c for c in follows if c in changed)
    verified = sorted(c for c in follows if c not in changed)
    return _FactorPlan(known, unknown, ex_right, verified)


def _ex_rights_without_a_factor(plan: _FactorPlan, frame: pd.DataFrame) -> dict[str, str]:
    """Codes fetched for an ex-right whose history has no factor after their state: BaoStock has
    not published it yet. They stay unverified (fetched again next run) instead of keeping
    their old factor for good."""
    if not plan.ex_right:
        return {}
    newest = frame.groupby("code")["divid_operate_date"].max() if len(frame) else pd.Series()
    missing = {}
    for code in plan.ex_right:
        latest = newest.get(code)
        since = plan.known.get(code)
        if latest is None or pd.isna(latest) or (since and latest.date() <= since):
            missing[code] = (
                f"bars show an ex-right after {since}, but BaoStock has no factor for it yet"
            )
    return missing


async def _corrections(
    job: RawJob, plan: _FactorPlan, frame: pd.DataFrame, fetched: list[str]
) -> dict[str, dt.date]:
    """Earliest date per code whose stored factors (up to the code's state) BaoStock now
    serves differently: the stock_daily days from there on carry an old factor."""
    verified = [c for c in fetched if plan.known.get(c) is not None]
    if not verified:
        return {}
    stored = await job.read_frame(
        "raw_adjust_factor",
        "SELECT code, divid_operate_date, back_adjust_factor FROM raw_adjust_factor "
        "WHERE code = ANY($1::text[])",
        verified,
    )
    served = frame.loc[frame["code"].isin(verified), list(stored.columns)]
    return factor_corrections(stored, served, {c: plan.known[c] for c in verified})


def _report_corrections(job: RawJob, corrections: dict[str, dt.date]) -> None:
    if not corrections:
        return
    earliest = min(corrections.values())
    job.report.extra["factor_corrections"] = {c: str(d) for c, d in sorted(corrections.items())}
    job.log.warning(
        f"[{job.name}] BaoStock changed past factors of {len(corrections)} codes (earliest "
        f"{earliest}, e.g. {', '.join(sorted(corrections)[:5])}): rematerialize stock_daily "
        f"from {earliest} to carry them"
    )
