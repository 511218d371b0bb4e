"""Batch fetches over a BaostockPool: many codes, one request per code, typed rows out.

`fetch_many` is the generic form (any API, one request per key); `fetch_daily_bars` covers the
k-line case. Keys are processed in batches (progress, retries and the typed frame happen per
batch), but the pool is kept busy across batch boundaries: the next batch's requests are
already queued while the previous batch's last requests are in flight. The workers convert
their replies to typed frames (`BaostockPool.query_frame`); a batch's frame is their
concatenation, plus the small replies converted here all at once.

Failures never abort a fetch: each failed key ends up in `FetchResult.failures` with its
reason. Transient failures (network, timeout, rate limit, blacklist) that survive the pool's own
retries are retried once more when their batch is done; permanent ones (bad code, bad field,
malformed values) are reported at once.

Logs (logger `stock_pipeline.baostock`):
- INFO per batch: `[p0.daily_bars] batch 5/80: 98/100 ok, 2 failed, 15.2s, 41 codes/s, ...`
- INFO per run: totals and summed step timings;
- WARNING per failed key with its reason;
- DEBUG per request: rows, attempts, pool wait, rate-limit wait, API time, the worker's
  conversion, round trip.
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
from stock_pipeline.baostock.apis import api as lookup_api
from stock_pipeline.baostock.errors import (
    BaostockError,
    PermanentError,
    PoolClosedError,
    TransientError,
)
from stock_pipeline.baostock.pool import BaostockPool, FrameResult
from stock_pipeline.baostock.typed import (
    MalformedValueError,
    empty_frame,
    to_frame,
    to_frame_by_key,
    to_frame_or_reason,
)

logger = logging.getLogger("stock_pipeline.baostock")

DEFAULT_BATCH_SIZE = 100
# Receives each batch's typed frame when the caller streams results (e.g. into COPY).
BatchSink = Callable[[pd.DataFrame], Awaitable[None] | None]
# What one key's request ended with.
Outcome = FrameResult | BaostockError


@dataclass
class FetchTimings:
    """Seconds spent per step, summed over requests (pool_wait..roundtrip) or batches.

    `parse_s` is the typed conversion: the workers' (per request) plus the batches' own (small
    replies, concatenation). Summed request times exceed the wall time when requests run
    concurrently.
    """

    pool_wait_s: float = 0.0
    rate_wait_s: float = 0.0
    api_s: float = 0.0
    roundtrip_s: float = 0.0
    parse_s: float = 0.0
    wall_s: float = 0.0

    def add(self, result: FrameResult) -> None:
        self.pool_wait_s += result.pool_wait_s
        self.rate_wait_s += result.rate_wait_s
        self.api_s += result.api_s
        self.roundtrip_s += result.roundtrip_s
        self.parse_s += result.convert_s


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
    tasks: dict[str, asyncio.Task[Outcome]] = field(default_factory=dict)
    submitted: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = 0.0


def _normalize_code(code: str) -> str:
    """The code as the client sends it: lower case, "600000.sh" turned into "sh.600000"."""
    code = code.lower()
    if code.endswith(("sh", "sz")):  # same rule as baostock.security.history
        return code[7:9] + "." + code[0:6]
    return code


def _foreign_code(result: FrameResult) -> str | None:
    """A row code that differs from the requested code (defence in depth against cross-talk)."""
    code = result.params.get("code")
    if not code:
        return None
    wanted = _normalize_code(str(code))
    if result.frame is not None:
        if "code" not in result.frame.columns:
            return None
        codes = result.frame["code"]
        foreign = codes[codes != wanted]
        return None if foreign.empty else str(foreign.iloc[0])
    if "code" not in result.fields:
        return None
    index = result.fields.index("code")
    return next((row[index] for row in result.rows if row[index] != wanted), None)


async def fetch_many(
    pool: BaostockPool,
    api: str,
    requests: Mapping[str, Mapping[str, Any]],
    *,
    label: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: BatchSink | None = None,
    key_column: str | None = None,
) -> FetchResult:
    """Run `api` once per key with `requests[key]` as keyword arguments, batch by batch.

    Returns a FetchResult whose `frame` holds the typed rows of every key that succeeded (with
    the catalog's snake_case columns) and whose `failures` maps each failed key to its reason.
    With `on_batch`, each batch's typed frame is handed to it instead (sync or async, one call
    at a time) and `frame` stays empty: memory stays bounded for long histories.
    `key_column` adds each row's request key as the first column (str) under that name, for
    APIs whose rows do not say what they answer (e.g. query_all_stock's day).
    Never aborts because keys fail, not even all of them. Raises at once KeyError for an API
    the catalog (apis.py) does not describe and ValueError for a `key_column` that is already
    one of its columns; later, PoolClosedError if the pool is closed underneath, and whatever
    `on_batch` raises.
    """
    if key_column is not None and key_column in lookup_api(api).columns:
        raise ValueError(f"key_column {key_column!r} is already a column of {api}")
    run = _FetchRun(pool, api, requests, label or api, batch_size, on_batch, key_column)
    return await run.run()


class _FetchRun:
    """One `fetch_many` call: submits the keys batch by batch, finishes each batch (end-of-batch
    retry, typed frame, failures, progress line) and sums everything up."""

    def __init__(
        self,
        pool: BaostockPool,
        api: str,
        requests: Mapping[str, Mapping[str, Any]],
        label: str,
        batch_size: int,
        on_batch: BatchSink | None,
        key_column: str | None,
    ):
        self.pool, self.api, self.requests, self.label = pool, api, requests, label
        self.on_batch, self.key_column = on_batch, key_column
        keys = list(requests)
        self.batches = [
            _Batch(i + 1, keys[start : start + batch_size])
            for i, start in enumerate(range(0, len(keys), batch_size))
        ]
        self.timings = FetchTimings()
        self.failures: dict[str, str] = {}
        self.frames: list[pd.DataFrame] = []
        self.retried = 0
        self.server_requests = 0
        self.rows_delivered = 0
        self.started = time.perf_counter()
        # Twice the sessions: enough queued work to bridge batch boundaries, bounded memory.
        self._window = asyncio.Semaphore(pool.concurrency * 2)
        self._sink_lock = asyncio.Lock()
        self._debug = logger.isEnabledFor(logging.DEBUG)

    async def run(self) -> FetchResult:
        producer = asyncio.create_task(self._submit_all())
        try:
            await asyncio.gather(producer, *(self._finish(b) for b in self.batches))
        except BaseException:
            producer.cancel()
            for batch in self.batches:
                for task in batch.tasks.values():
                    task.cancel()
            raise
        return self._result()

    async def _submit_all(self) -> None:
        """Start every key's request in batch order, a window of them in flight at a time."""
        for batch in self.batches:
            batch.started = time.perf_counter()
            for key in batch.keys:
                await self._window.acquire()
                batch.tasks[key] = asyncio.create_task(self._fetch(key, self._window.release))
            batch.submitted.set()

    async def _fetch(self, key: str, done: Callable[[], None] | None = None) -> Outcome:
        """One key's request: its typed result, or the error it failed with."""
        try:
            result = await self.pool.query_frame(self.api, **self.requests[key])
        except PoolClosedError:
            raise
        except BaostockError as exc:
            return exc
        finally:
            if done is not None:
                done()
        self.timings.add(result)
        self.server_requests += result.server_requests
        foreign = _foreign_code(result)
        if foreign is not None:
            logger.error("[%s] %s: reply carried rows of %s; discarded", self.label, key, foreign)
            return TransientError(
                f"reply carried rows of {foreign}", api=self.api, params=result.params
            )
        if self._debug:
            self._log_request(key, result)
        return result

    async def _finish(self, batch: _Batch) -> None:
        """Wait for a batch, retry its transient failures once, deliver its frame, log it."""
        await batch.submitted.wait()
        outcomes = dict(zip(batch.tasks, await asyncio.gather(*batch.tasks.values()), strict=True))
        batch.tasks.clear()  # the replies live in `outcomes` until delivered, then go
        retried = await self._retry_transient(outcomes)
        parse_started = time.perf_counter()
        frame, malformed = await asyncio.to_thread(
            _batch_frame, self.api, outcomes, self.key_column
        )
        self.timings.parse_s += time.perf_counter() - parse_started
        for key, reason in malformed.items():
            outcomes[key] = PermanentError(reason, api=self.api, params=self.requests[key])
        await self._deliver(frame if frame is not None else self._empty())
        failures = {k: str(o) for k, o in outcomes.items() if isinstance(o, BaostockError)}
        self.failures.update(failures)
        self._log_batch(batch, failures, len(frame) if frame is not None else 0, retried)

    async def _retry_transient(self, outcomes: dict[str, Outcome]) -> int:
        """Once more for what still failed transiently (the pool already retried with backoff)."""
        again = [k for k, o in outcomes.items() if isinstance(o, BaostockError) and o.transient]
        if again:
            self.retried += len(again)
            retried = await asyncio.gather(*(self._fetch(k) for k in again))
            outcomes.update(zip(again, retried, strict=True))
        return len(again)

    async def _deliver(self, frame: pd.DataFrame) -> None:
        if self.on_batch is None:
            self.frames.append(frame)
            return
        async with self._sink_lock:
            delivered = self.on_batch(frame)
            if delivered is not None:
                await delivered
        self.rows_delivered += len(frame)

    def _empty(self) -> pd.DataFrame:
        frame = _empty_for(self.api, self.requests)
        if self.key_column is not None:
            frame.insert(0, self.key_column, pd.array([], dtype="str"))
        return frame

    def _log_request(self, key: str, result: FrameResult) -> None:
        logger.debug(
            "[%s] %s: %d rows, attempts=%d pool_wait=%.3fs rate_wait=%.3fs api=%.3fs "
            "convert=%.3fs roundtrip=%.3fs",
            self.label,
            key,
            result.row_count,
            result.attempts,
            result.pool_wait_s,
            result.rate_wait_s,
            result.api_s,
            result.convert_s,
            result.roundtrip_s,
        )

    def _log_batch(self, batch: _Batch, failures: dict[str, str], rows: int, retried: int) -> None:
        for key, reason in failures.items():
            logger.warning("[%s] %s failed: %s", self.label, key, reason)
        elapsed = time.perf_counter() - batch.started
        logger.info(
            "[%s] batch %d/%d: %d/%d ok, %d failed, %.1fs, %.0f codes/s, %d rows%s",
            self.label,
            batch.index,
            len(self.batches),
            len(batch.keys) - len(failures),
            len(batch.keys),
            len(failures),
            elapsed,
            len(batch.keys) / elapsed if elapsed > 0 else 0.0,
            rows,
            f", {retried} retried" if retried else "",
        )

    def _result(self) -> FetchResult:
        frames = [f for f in self.frames if len(f)] or self.frames[:1]
        if not frames:
            frame = self._empty()
        else:
            frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        self.timings.wall_s = time.perf_counter() - self.started
        result = FetchResult(
            label=self.label,
            api=self.api,
            frame=frame,
            failures=dict(sorted(self.failures.items())),
            requested=len(self.requests),
            batches=len(self.batches),
            rows=len(frame) + self.rows_delivered,
            retried=self.retried,
            server_requests=self.server_requests,
            timings=self.timings,
        )
        t = self.timings
        logger.info(
            "[%s] done: %d/%d ok, %d failed, %d rows, %d batches, %.1fs, %.0f codes/s; "
            "summed pool_wait=%.1fs rate_wait=%.1fs api=%.1fs roundtrip=%.1fs parse=%.2fs",
            self.label,
            result.succeeded,
            result.requested,
            len(result.failures),
            result.rows,
            result.batches,
            t.wall_s,
            result.codes_per_s,
            t.pool_wait_s,
            t.rate_wait_s,
            t.api_s,
            t.roundtrip_s,
            t.parse_s,
        )
        return result


def _batch_frame(
    api: str, outcomes: Mapping[str, Outcome], key_column: str | None = None
) -> tuple[pd.DataFrame | None, dict[str, str]]:
    """A batch's typed rows (None if no request returned any) and {key: reason} for keys whose
    rows are malformed. The workers' frames are concatenated; the rows of small replies are
    converted here, all at once. With `key_column`, each row's key is added under that name."""
    results = {k: o for k, o in outcomes.items() if isinstance(o, FrameResult) and o.row_count}
    parts = [(r.frame, [k] * len(r.frame)) for k, r in results.items() if r.frame is not None]
    small = {k: r for k, r in results.items() if r.frame is None}
    converted, malformed = _convert_small_replies(api, small)
    parts += converted
    if not parts:
        return None, malformed
    frames = [frame for frame, _ in parts]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if key_column is not None:
        keys = [key for _, keys in parts for key in keys]
        frame.insert(0, key_column, pd.array(keys, dtype="str"))
    return frame, malformed


def _convert_small_replies(
    api: str, results: Mapping[str, FrameResult]
) -> tuple[list[tuple[pd.DataFrame, list[str]]], dict[str, str]]:
    """Rows the workers left unconverted: one conversion per field list; a malformed value
    rejects the rows of its key only. Returns the frames with each row's key, and the reasons."""
    groups: dict[tuple[str, ...], dict[str, FrameResult]] = {}
    for key, result in results.items():
        groups.setdefault(tuple(result.fields), {})[key] = result
    parts: list[tuple[pd.DataFrame, list[str]]] = []
    malformed: dict[str, str] = {}
    for fields, group in groups.items():
        rows = [row for result in group.values() for row in result.rows]
        keys = [key for key, result in group.items() for _ in result.rows]
        try:
            frame, reasons = to_frame_by_key(api, fields, rows, keys)
            parts.append((frame, [key for key in keys if key not in reasons]))
        except MalformedValueError:  # a row of the wrong width, or an unknown field: per key
            reasons = {}
            for key, result in group.items():
                one, reason = to_frame_or_reason(api, result.fields, result.rows)
                if one is None:
                    reasons[key] = reason
                else:
                    parts.append((one, [key] * len(one)))
        malformed.update(reasons)
    return parts, malformed


def _empty_for(api: str, requests: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Typed columns for a fetch without rows: those of the requested fields the catalog knows
    (a field it does not know fails every key; it must not fail the fetch), else the API's."""
    fields = next(iter(requests.values()), {}).get("fields")
    if not isinstance(fields, str):
        return empty_frame(api)
    known = set(lookup_api(api).field_names)
    return empty_frame(api, [name for name in map(str.strip, fields.split(",")) if name in known])


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
