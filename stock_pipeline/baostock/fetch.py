"""Batch fetches over a BaostockPool: many codes, one request per code, typed rows out.

`fetch_many` is the generic form (any API, one request per key); `fetch_daily_bars` covers the
k-line case. Keys are processed in batches (progress, retries and typed conversion happen per
batch), but the pool is kept busy across batch boundaries: the next batch's requests are
already queued while the previous batch's last requests are in flight.

Failures never abort a fetch: each failed key ends up in `FetchResult.failures` with its
reason. Transient failures (network, timeout, rate limit, blacklist) that survive the pool's own
retries are retried once more when their batch is done; permanent ones (bad code, bad field,
malformed values) are reported at once.

Logs (logger `stock_pipeline.baostock`):
- INFO per batch: `[p0.daily_bars] batch 5/80: 98/100 ok, 2 failed, 15.2s, 41 codes/s, ...`
- INFO per run: totals and summed step timings;
- WARNING per failed key with its reason;
- DEBUG per request: pool wait, rate-limit wait, API time, round trip, rows, attempts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from stock_pipeline.baostock.apis import K_DAILY_FIELDS, K_PERIOD_FIELDS, Field
from stock_pipeline.baostock.errors import BaostockError, PoolClosedError, TransientError
from stock_pipeline.baostock.pool import BaostockPool, QueryResult
from stock_pipeline.baostock.typed import empty_frame, to_frame, to_frame_by_key

logger = logging.getLogger("stock_pipeline.baostock")

DEFAULT_BATCH_SIZE = 100
# Receives each batch's typed frame when the caller streams results (e.g. into COPY).
BatchSink = Callable[[pd.DataFrame], Awaitable[None] | None]


@dataclass
class FetchTimings:
    """Seconds spent per step, summed over requests (pool_wait..roundtrip) or batches (parse).

    Summed request times exceed the wall time when requests run concurrently.
    """

    pool_wait_s: float = 0.0
    rate_wait_s: float = 0.0
    api_s: float = 0.0
    roundtrip_s: float = 0.0
    parse_s: float = 0.0
    wall_s: float = 0.0

    def add(self, result: QueryResult) -> None:
        self.pool_wait_s += result.pool_wait_s
        self.rate_wait_s += result.rate_wait_s
        self.api_s += result.api_s
        self.roundtrip_s += result.roundtrip_s


@dataclass
class FetchResult:
    """Outcome of a batch fetch: typed rows of every key that succeeded, and why others failed."""

    label: str
    api: str
    frame: pd.DataFrame
    failures: dict[str, str]
    requested: int
    batches: int
    rows: int = 0  # typed rows fetched (in `frame`, or handed to `on_batch`)
    retried: int = 0  # keys retried at the end of their batch
    server_requests: int = 0
    timings: FetchTimings = field(default_factory=FetchTimings)

    @property
    def succeeded(self) -> int:
        return self.requested - len(self.failures)

    @property
    def codes_per_s(self) -> float:
        return self.requested / self.timings.wall_s if self.timings.wall_s > 0 else 0.0


@dataclass
class _Batch:
    index: int
    keys: list[str]
    tasks: dict[str, asyncio.Task[QueryResult | BaostockError]] = field(default_factory=dict)
    submitted: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = 0.0


def _normalize_code(code: str) -> str:
    """The code as the client sends it: lower case, "600000.sh" turned into "sh.600000"."""
    code = code.lower()
    if code.endswith(("sh", "sz")):  # same rule as baostock.security.history
        return code[7:9] + "." + code[0:6]
    return code


def _foreign_code(result: QueryResult) -> str | None:
    """A row code that differs from the requested code (defence in depth against cross-talk)."""
    code = result.params.get("code")
    if not code or "code" not in result.fields or not result.rows:
        return None
    index = result.fields.index("code")
    wanted = _normalize_code(str(code))
    for row in result.rows:
        if row[index] != wanted:
            return row[index]
    return None


async def fetch_many(
    pool: BaostockPool,
    api: str,
    requests: Mapping[str, Mapping[str, Any]],
    *,
    label: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: BatchSink | None = None,
) -> FetchResult:
    """Run `api` once per key with `requests[key]` as keyword arguments, batch by batch.

    Returns a FetchResult whose `frame` holds the typed rows of every key that succeeded (with
    the catalog's snake_case columns) and whose `failures` maps each failed key to its reason.
    With `on_batch`, each batch's typed frame is handed to it instead (sync or async, one call
    at a time) and `frame` stays empty: memory stays bounded for long histories.
    Raises only if the pool is closed underneath (or if `on_batch` raises).
    """
    label = label or api
    keys = list(requests)
    batches = [
        _Batch(i + 1, keys[start : start + batch_size])
        for i, start in enumerate(range(0, len(keys), batch_size))
    ]
    timings = FetchTimings()
    failures: dict[str, str] = {}
    frames: list[pd.DataFrame] = []
    counters = {"retried": 0, "server_requests": 0, "rows_delivered": 0}
    debug = logger.isEnabledFor(logging.DEBUG)
    # Twice the sessions: enough queued work to bridge batch boundaries, bounded memory.
    window = asyncio.Semaphore(pool.concurrency * 2)
    sink_lock = asyncio.Lock()
    started = time.perf_counter()

    async def run_one(key: str, release: bool) -> QueryResult | BaostockError:
        try:
            result = await pool.query(api, **requests[key])
        except PoolClosedError:
            raise
        except BaostockError as exc:
            return exc
        finally:
            if release:
                window.release()
        timings.add(result)
        counters["server_requests"] += result.server_requests
        foreign = _foreign_code(result)
        if foreign is not None:
            logger.error("[%s] %s: reply carried rows of %s; discarded", label, key, foreign)
            return TransientError(f"reply carried rows of {foreign}", api=api, params=result.params)
        if debug:
            logger.debug(
                "[%s] %s: %d rows, attempts=%d pool_wait=%.3fs rate_wait=%.3fs api=%.3fs "
                "roundtrip=%.3fs",
                label,
                key,
                len(result.rows),
                result.attempts,
                result.pool_wait_s,
                result.rate_wait_s,
                result.api_s,
                result.roundtrip_s,
            )
        return result

    async def produce() -> None:
        for batch in batches:
            batch.started = time.perf_counter()
            for key in batch.keys:
                await window.acquire()
                batch.tasks[key] = asyncio.create_task(run_one(key, release=True))
            batch.submitted.set()

    async def finish(batch: _Batch) -> None:
        await batch.submitted.wait()
        outcomes = dict(zip(batch.tasks, await asyncio.gather(*batch.tasks.values()), strict=True))
        # Once more for what still failed transiently (the pool already retried with backoff).
        again = [k for k, o in outcomes.items() if isinstance(o, BaostockError) and o.transient]
        if again:
            counters["retried"] += len(again)
            retried = await asyncio.gather(*(run_one(k, release=False) for k in again))
            outcomes.update(zip(again, retried, strict=True))
        parse_started = time.perf_counter()
        frame, bad = await asyncio.to_thread(_typed_batch, api, outcomes)
        timings.parse_s += time.perf_counter() - parse_started
        if on_batch is None:
            frames.append(frame)
        else:
            async with sink_lock:
                delivered = on_batch(frame)
                if delivered is not None:
                    await delivered
            counters["rows_delivered"] += len(frame)
        batch_failures = {k: str(o) for k, o in outcomes.items() if isinstance(o, BaostockError)}
        batch_failures.update(bad)
        for key, reason in batch_failures.items():
            logger.warning("[%s] %s failed: %s", label, key, reason)
        failures.update(batch_failures)
        elapsed = time.perf_counter() - batch.started
        logger.info(
            "[%s] batch %d/%d: %d/%d ok, %d failed, %.1fs, %.0f codes/s, %d rows%s",
            label,
            batch.index,
            len(batches),
            len(batch.keys) - len(batch_failures),
            len(batch.keys),
            len(batch_failures),
            elapsed,
            len(batch.keys) / elapsed if elapsed > 0 else 0.0,
            len(frame),
            f", {len(again)} retried" if again else "",
        )

    producer = asyncio.create_task(produce())
    try:
        await asyncio.gather(producer, *(finish(b) for b in batches))
    except BaseException:
        producer.cancel()
        for batch in batches:
            for task in batch.tasks.values():
                task.cancel()
        raise

    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty and len(frame.columns) == 0:
        frame = _empty_for(api, requests)
    timings.wall_s = time.perf_counter() - started
    result = FetchResult(
        label=label,
        api=api,
        frame=frame,
        failures=dict(sorted(failures.items())),
        requested=len(keys),
        batches=len(batches),
        rows=len(frame) + counters["rows_delivered"],
        retried=counters["retried"],
        server_requests=counters["server_requests"],
        timings=timings,
    )
    logger.info(
        "[%s] done: %d/%d ok, %d failed, %d rows, %d batches, %.1fs, %.0f codes/s; "
        "summed pool_wait=%.1fs rate_wait=%.1fs api=%.1fs roundtrip=%.1fs parse=%.2fs",
        label,
        result.succeeded,
        result.requested,
        len(result.failures),
        result.rows,
        result.batches,
        timings.wall_s,
        result.codes_per_s,
        timings.pool_wait_s,
        timings.rate_wait_s,
        timings.api_s,
        timings.roundtrip_s,
        timings.parse_s,
    )
    return result


def _typed_batch(
    api: str, outcomes: Mapping[str, QueryResult | BaostockError]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """One typed frame for a batch's successful results; malformed keys become failures."""
    groups: dict[tuple[str, ...], tuple[list[list[str]], list[str]]] = {}
    for key, outcome in outcomes.items():
        if isinstance(outcome, QueryResult):
            rows, keys = groups.setdefault(tuple(outcome.fields), ([], []))
            rows.extend(outcome.rows)
            keys.extend([key] * len(outcome.rows))
    frames: list[pd.DataFrame] = []
    bad: dict[str, str] = {}
    for fields, (rows, keys) in groups.items():
        frame, reasons = to_frame_by_key(api, fields, rows, keys)
        frames.append(frame)
        bad.update(reasons)
    if not frames:
        return pd.DataFrame(), bad
    return (frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)), bad


def _empty_for(api: str, requests: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    fields = next(iter(requests.values()), {}).get("fields")
    names = [f.strip() for f in fields.split(",")] if isinstance(fields, str) else None
    return empty_frame(api, names)


def _iso(day: dt.date | str) -> str:
    return day.isoformat() if isinstance(day, dt.date) else str(day)


def kline_fields(frequency: str = "d") -> tuple[Field, ...]:
    """The catalog fields of stock k-lines at `frequency` ("d", "w" or "m")."""
    return K_DAILY_FIELDS if frequency == "d" else K_PERIOD_FIELDS


async def fetch_daily_bars(
    pool: BaostockPool,
    codes: Sequence[str],
    start: dt.date | str,
    end: dt.date | str,
    *,
    adjustflag: str = "3",
    frequency: str = "d",
    fields: Sequence[Field] | None = None,
    label: str = "p0.daily_bars",
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: BatchSink | None = None,
) -> FetchResult:
    """K-lines of `codes` from `start` to `end` (inclusive), one request per code.

    `adjustflag`: "3" unadjusted (default), "1" back-adjusted, "2" forward-adjusted.
    `fields` defaults to all daily fields (K_DAILY_FIELDS) or, for "w"/"m", K_PERIOD_FIELDS;
    pass apis.K_INDEX_FIELDS for index codes. `on_batch` streams frames (see `fetch_many`).
    """
    names = ",".join(f.name for f in (fields or kline_fields(frequency)))
    requests = {
        code: {
            "code": code,
            "fields": names,
            "start_date": _iso(start),
            "end_date": _iso(end),
            "frequency": frequency,
            "adjustflag": adjustflag,
        }
        for code in dict.fromkeys(codes)  # unique, order kept
    }
    return await fetch_many(
        pool,
        "query_history_k_data_plus",
        requests,
        label=label,
        batch_size=batch_size,
        on_batch=on_batch,
    )


async def fetch_table(pool: BaostockPool, api: str, /, **params: Any) -> pd.DataFrame:
    """Typed rows of one request (e.g. query_trade_dates, query_all_stock); raises on failure."""
    result = await pool.query(api, **params)
    return to_frame(api, result.fields, result.rows)
