"""Refreshing the cache: one new version written from the warehouse, then switched to.

    read    PostgreSQL -> every code's last `bars` stock_daily rows up to the day of
            technical_daily's latest rows, and each code's latest indicators (two queries)
    write   per code a bars blob and a latest hash, the day's cross-section, the meta hash,
            in pipelines of `batch_codes` codes; nothing a reader uses yet
    switch  {prefix}:current is set to the new version (atomically, returning the old one);
            keys of older versions then expire after `grace_s`, so a reader that read the old
            pointer just before the switch still finds its keys
Every key, the pointer included, expires after `ttl_s`: a cache nobody refreshes goes away
rather than serving stale data for ever. Key layout: keys.py; value forms: frames.py, codec.py.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from redis.exceptions import LockError

from stock_pipeline.cache import codec
from stock_pipeline.cache.columns import Columns, from_frame
from stock_pipeline.cache.connection import CONNECTION_ERRORS, CacheConnection, connect
from stock_pipeline.cache.frames import (
    BARS,
    CROSS_SECTION,
    INDICATOR_DATE,
    INDICATOR_VALUES,
    LATEST,
    PACKED_FIELD,
    Layout,
    hash_fields,
)
from stock_pipeline.cache.keys import CacheKeys, make_version, parse_version
from stock_pipeline.warehouse.engine import Warehouse
from stock_pipeline.warehouse.reader import read_frame
from stock_pipeline.warehouse.tables import stock_daily, technical_daily

log = logging.getLogger("stock_pipeline.cache")

# How long a replaced version stays readable after the switch: far longer than any read takes.
GRACE_S = 60
BATCH_CODES = 500
LOCK_S = 600  # far longer than a refresh of the whole market takes (seconds)


class NothingToCache(RuntimeError):
    """technical_daily holds no rows: there is no day to cache."""


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh wrote (for the asset's metadata)."""

    day: dt.date
    version: str
    previous_version: str | None
    codes: int
    cross_section_codes: int
    keys_written: int
    bytes_written: int
    expired_keys: int  # keys of replaced versions given the grace expiry
    read_seconds: float
    write_seconds: float
    seconds: float

    def metadata(self) -> dict[str, Any]:
        """Plain values (dates as ISO text) for Dagster metadata."""
        return {k: v.isoformat() if isinstance(v, dt.date) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Snapshot:
    """What one version holds, assembled from the warehouse's rows (see `assemble`).

    `codes` sorted; code i's bars are rows starts[i]:starts[i + 1] of `bars`; row i of
    `latest` is its latest bar and indicators.
    """

    day: dt.date
    codes: np.ndarray
    bars: Columns
    starts: np.ndarray
    latest: Columns
    cross_section: Columns

    def bars_of(self, i: int) -> Columns:
        return self.bars.take(slice(int(self.starts[i]), int(self.starts[i + 1])))


async def latest_indicator_day(wh: Warehouse) -> dt.date | None:
    """The day of technical_daily's latest rows: the day a fresh cache holds."""
    return await wh.copy_pool.fetchval("SELECT max(trade_date) FROM technical_daily")


async def current_version(redis: CacheConnection, prefix: str) -> str | None:
    """The version readers use now (None: no cache under `prefix`)."""
    try:
        value = await redis.client.get(CacheKeys(prefix).current)
    except CONNECTION_ERRORS as exc:
        raise redis.unreachable(exc) from None
    return None if value is None else value.decode()


async def current_cache_day(redis: CacheConnection, prefix: str) -> dt.date | None:
    """The technical_daily day the current cache holds (None: no cache). ValueError if the
    pointer holds something that is not a version."""
    version = await current_version(redis, prefix)
    if version is None:
        return None
    try:
        return parse_version(version)[0]
    except ValueError as exc:
        raise ValueError(f"{CacheKeys(prefix).current}: {exc}; refresh the cache") from None


def lookback_days(bars: int) -> int:
    """Calendar days that hold `bars` trading days with room to spare (about 1.5 calendar days
    a trading day, plus the longest holiday)."""
    return bars * 2 + 30


async def read_snapshot(wh: Warehouse, day: dt.date, bars: int) -> Snapshot:
    """Every code's last `bars` rows up to `day` and its latest indicators, assembled."""
    start = day - dt.timedelta(days=lookback_days(bars))
    values = ", ".join(BARS.names[1:])
    # count - row_number instead of row_number() DESC: the rows arrive in (code, trade_date)
    # index order, so PostgreSQL sorts nothing.
    recent = await read_frame(
        wh.copy_pool,
        stock_daily,
        f"""
        SELECT code, trade_date, {values} FROM (
            SELECT code, trade_date, {values},
                   count(*) OVER (PARTITION BY code)
                   - row_number() OVER (PARTITION BY code ORDER BY trade_date) AS newer
            FROM stock_daily WHERE trade_date BETWEEN $1 AND $2
        ) AS recent WHERE newer < $3 ORDER BY code, trade_date
        """,
        start,
        day,
        bars,
    )
    indicators = await read_frame(
        wh.copy_pool,
        technical_daily,
        f"""
        SELECT DISTINCT ON (code) code, trade_date, {", ".join(INDICATOR_VALUES)}
        FROM technical_daily WHERE trade_date BETWEEN $1 AND $2
        ORDER BY code DESC, trade_date DESC
        """,
        start,
        day,
    )
    return assemble(recent, indicators, day)


def assemble(recent: pd.DataFrame, indicators: pd.DataFrame, day: dt.date) -> Snapshot:
    """A version's content from the rows read: `recent` (code, BARS columns; sorted by code
    and trade_date) and `indicators` (code, trade_date, INDICATOR_COLUMNS; one row per code)."""
    codes = recent["code"].to_numpy(str)
    starts = np.zeros(1, np.int64)
    if len(codes):
        changes = np.flatnonzero(codes[1:] != codes[:-1]) + 1
        starts = np.concatenate([[0], changes, [len(codes)]]).astype(np.int64)
    last_rows = recent.iloc[starts[1:] - 1]
    indicators = indicators.rename(columns={"trade_date": INDICATOR_DATE})
    latest = last_rows.merge(indicators, on="code", how="left", sort=False)
    today = recent[recent["trade_date"] == pd.Timestamp(day)]
    of_day = indicators[indicators[INDICATOR_DATE] == pd.Timestamp(day)]
    cross_section = today.merge(of_day.drop(columns=INDICATOR_DATE), on="code", how="left")
    return Snapshot(
        day=day,
        codes=codes[starts[:-1]],
        bars=_columns(recent, BARS),
        starts=starts,
        latest=_columns(latest, LATEST),
        cross_section=_columns(cross_section, CROSS_SECTION),
    )


def _columns(frame: pd.DataFrame, layout: Layout) -> Columns:
    columns = from_frame(frame[list(layout.names)])
    if columns.kinds != layout.kinds:
        raise TypeError(f"columns {layout.names} read as {columns.kinds}, expected {layout.kinds}")
    return columns


async def refresh_cache(
    wh: Warehouse,
    redis: CacheConnection | str,
    *,
    prefix: str,
    bars: int,
    ttl_s: int,
    grace_s: int = GRACE_S,
    batch_codes: int = BATCH_CODES,
) -> RefreshResult:
    """Write a new version of the cache from the warehouse and switch readers to it.

    `redis` is a connection (CacheResource.connect) or a URL. Raises CacheUnreachable if
    Redis does not answer (before anything is read, or during the writes: then readers keep
    the previous version), NothingToCache if technical_daily is empty.
    """
    if isinstance(redis, str):
        options = {"bars": bars, "ttl_s": ttl_s, "grace_s": grace_s, "batch_codes": batch_codes}
        async with connect(redis) as connection:
            return await refresh_cache(wh, connection, prefix=prefix, **options)
    if bars < 1 or ttl_s <= grace_s or batch_codes < 1:
        raise ValueError(
            f"refresh_cache: bars ({bars}) and batch_codes ({batch_codes}) must be >= 1 and "
            f"ttl_s ({ttl_s}) longer than grace_s ({grace_s})"
        )
    keys = CacheKeys(prefix)
    began = time.perf_counter()
    try:
        await redis.client.ping()  # fail before the warehouse is read
    except CONNECTION_ERRORS as exc:
        raise redis.unreachable(exc) from None
    # Refreshes take turns: two at once could each expire the other's version after its switch.
    lock = redis.client.lock(f"{prefix}:refresh_lock", timeout=LOCK_S, blocking_timeout=LOCK_S)
    try:
        async with lock:
            day = await latest_indicator_day(wh)
            if day is None:
                raise NothingToCache("technical_daily is empty: materialize the indicators first")
            snapshot = await read_snapshot(wh, day, bars)
            read_s = time.perf_counter() - began
            version = make_version(day, dt.datetime.now(dt.UTC))
            written, size = await _write_version(
                redis, keys, version, snapshot, bars, ttl_s, batch_codes
            )
            previous = await redis.client.set(keys.current, version, ex=ttl_s, get=True)
            previous = previous.decode() if previous is not None else None
            expired = await _expire_replaced(redis, keys, version, previous, grace_s)
    except CONNECTION_ERRORS as exc:
        raise redis.unreachable(exc) from None
    except LockError:
        raise RuntimeError(
            f"another refresh of the cache under {prefix!r} held {prefix}:refresh_lock for "
            f"over {LOCK_S} s: wait for it, or delete that key if no refresh runs"
        ) from None
    seconds = time.perf_counter() - began
    return _reported(
        RefreshResult(
            day=day,
            version=version,
            previous_version=previous,
            codes=len(snapshot.codes),
            cross_section_codes=snapshot.cross_section.rows,
            keys_written=written + 1,
            bytes_written=size,
            expired_keys=expired,
            read_seconds=round(read_s, 3),
            write_seconds=round(seconds - read_s, 3),
            seconds=round(seconds, 3),
        )
    )


def _reported(result: RefreshResult) -> RefreshResult:
    log.info(
        "[cache] %s: %d codes, %d keys, %.1f MB in %.1fs (read %.1fs); replaced %s",
        result.version,
        result.codes,
        result.keys_written,
        result.bytes_written / 1e6,
        result.seconds,
        result.read_seconds,
        result.previous_version,
    )
    return result


async def _write_version(
    redis: CacheConnection,
    keys: CacheKeys,
    version: str,
    snapshot: Snapshot,
    bars: int,
    ttl_s: int,
    batch_codes: int,
) -> tuple[int, int]:
    """Every key of the version but the pointer; (keys, bytes) written."""
    fields = hash_fields(snapshot.latest)
    written = size = 0
    for low in range(0, len(snapshot.codes), batch_codes):
        # Not a transaction: nothing reads this version before the switch.
        async with redis.client.pipeline(transaction=False) as pipe:
            for i in range(low, min(low + batch_codes, len(snapshot.codes))):
                code = str(snapshot.codes[i])
                blob = codec.encode(snapshot.bars_of(i))
                pipe.set(keys.bars(version, code), blob, ex=ttl_s)
                latest_key = keys.latest(version, code)
                packed = codec.encode(snapshot.latest.take(slice(i, i + 1)))
                mapping: dict[str, str | bytes] = {**fields[i], PACKED_FIELD: packed}
                pipe.hset(latest_key, mapping=mapping)
                pipe.expire(latest_key, ttl_s)
                size += len(blob) + sum(len(k) + len(v) for k, v in mapping.items())
                written += 2
            await pipe.execute()
    cross_section = codec.encode(snapshot.cross_section)
    meta = {
        "day": snapshot.day.isoformat(),
        "created_at": parse_version(version)[1].isoformat(),
        "codes": str(len(snapshot.codes)),
        "cross_section_codes": str(snapshot.cross_section.rows),
        "bars": str(bars),
        "columns": json.dumps(
            {"bars": BARS.names, "latest": LATEST.names, "xs": CROSS_SECTION.names}
        ),
        "format": codec.MAGIC.decode(),
    }
    async with redis.client.pipeline(transaction=False) as pipe:
        pipe.set(keys.cross_section(version), cross_section, ex=ttl_s)
        pipe.hset(keys.meta(version), mapping=meta)
        pipe.expire(keys.meta(version), ttl_s)
        await pipe.execute()
    size += len(cross_section) + sum(len(k) + len(v) for k, v in meta.items())
    return written + 2, size


def _created(version: str) -> dt.datetime:
    try:
        return parse_version(version)[1]
    except ValueError:  # a version-shaped key of impossible dates: not ours to remove
        return dt.datetime.max.replace(tzinfo=dt.UTC)


async def _expire_replaced(
    redis: CacheConnection, keys: CacheKeys, version: str, previous: str | None, grace_s: int
) -> int:
    """Give the keys of the replaced version, and of any older one (a refresh that died before
    its switch), `grace_s` to live; a newer version being written meanwhile is left alone."""
    created = parse_version(version)[1]
    expired = 0
    async with redis.client.pipeline(transaction=False) as pipe:
        async for raw in redis.client.scan_iter(match=keys.pattern, count=1000):
            key = raw.decode()
            owner = keys.version_of(key)
            if owner is None or owner == version:
                continue
            if owner == previous or _created(owner) < created:
                pipe.expire(key, grace_s)
                expired += 1
                if len(pipe) >= 1000:
                    await pipe.execute()
        await pipe.execute()
    return expired
