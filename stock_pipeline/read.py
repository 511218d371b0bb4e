"""Reading the market data for strategies and notebooks: bars, indicators, the latest values of
a code and a day's cross-section, from the Redis cache when it holds them, else PostgreSQL.

    from stock_pipeline import read

    read.bars("sh.600000", start="2024-03-01", adjust="qfq")   # indexed by trade_date
    read.indicators("sh.600000", columns=["ma20", "rsi6"])
    read.latest("sh.600000")                                   # one row, indexed by code
    read.cross_section(columns=["close", "pct_chg", "ma20"])   # one row per code

    with read.MarketReader(settings) as reader:                # or a reader of your own
        reader.bars("sz.000001")

No Dagster and no event loop involved (a notebook's loop is already running): redis-py and a
pooled SQLAlchemy engine on psycopg2, both thread-safe. The module-level functions share one
reader made on first use from the STOCK_PIPELINE_* settings.

Cache-aside: the reader reads the pointer `{prefix}:current` (kept for `pointer_ttl_s`, well
inside the minute a replaced version stays readable) and that version's keys; it reads
PostgreSQL when a key is missing, when the requested bars start before the cached ones (or no
start is given), for indicators (not cached) and for cross-sections of other days than the
cache's. When Redis does not answer, one warning is logged and Redis is left alone for
`breaker_s` seconds, so a dead server costs no connect timeout per call; its return is logged
once too. Frames are identical whichever store served them (cache/frames.py builds both).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import psycopg2
import redis
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError

from stock_pipeline import pointintime as pit
from stock_pipeline.cache import codec
from stock_pipeline.cache.codec import CodecError
from stock_pipeline.cache.columns import Columns, to_frame
from stock_pipeline.cache.frames import (
    BARS,
    CROSS_SECTION,
    INDICATORS,
    LATEST,
    PACKED_FIELD,
    Adjust,
    bars_frame,
    between,
    check_adjust,
    check_columns,
    coded_frame,
    day_number,
    from_hash,
    latest_factor,
)
from stock_pipeline.cache.keys import CacheKeys, parse_version
from stock_pipeline.settings import Settings
from stock_pipeline.warehouse.engine import unreachable, warehouse_url
from stock_pipeline.warehouse.tables import INDICATOR_COLUMNS
from stock_pipeline.warehouse.urls import describe_error, display_url, sqlalchemy_url

log = logging.getLogger("stock_pipeline.read")

__all__ = [
    "MarketReader",
    "bars",
    "close",
    "cross_section",
    "default_reader",
    "finance_as_of",
    "index_members",
    "indicators",
    "industry_as_of",
    "latest",
    "universe",
]

DateLike = dt.date | str
T = TypeVar("T")

CODE_PATTERN = re.compile(r"(sh|sz|bj)\.\d{6}")
_FIRST_DAY, _LAST_DAY = dt.date(1, 1, 1), dt.date(9999, 12, 31)
_DAYS = "trade_date - DATE '1970-01-01'"  # dates travel as day numbers: cheaper than dates
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)
# A cache entry that cannot be used (another value under the key, a damaged field): that read
# goes to PostgreSQL, Redis stays in use.
_ENTRY_UNUSABLE = (CodecError, redis.ResponseError, KeyError, ValueError)

_BAR_VALUES = ", ".join(BARS.names[1:])
_BARS_SQL = (
    f"SELECT {_DAYS}, {_BAR_VALUES} FROM stock_daily "
    "WHERE code = %(code)s AND trade_date BETWEEN %(start)s AND %(end)s ORDER BY trade_date"
)
# qfq divides by the factor of the code's latest bar: one more column, evaluated once.
_BARS_QFQ_SQL = _BARS_SQL.replace(
    " FROM stock_daily ",
    ", (SELECT back_adjust_factor FROM stock_daily WHERE code = %(code)s "
    "ORDER BY trade_date DESC LIMIT 1) FROM stock_daily ",
    1,
)
_LATEST_SQL = f"""
SELECT b.*, t.* FROM (
    SELECT {_DAYS}, {_BAR_VALUES} FROM stock_daily
    WHERE code = %(code)s ORDER BY trade_date DESC LIMIT 1
) AS b LEFT JOIN LATERAL (
    SELECT {_DAYS}, {", ".join(INDICATOR_COLUMNS)} FROM technical_daily
    WHERE code = %(code)s ORDER BY trade_date DESC LIMIT 1
) AS t ON true
"""
# The cache's day when it is fresh: technical_daily's latest (stock_daily's before any).
_LATEST_DAY_SQL = (
    "SELECT coalesce((SELECT max(trade_date) FROM technical_daily), "
    "(SELECT max(trade_date) FROM stock_daily))"
)


def check_code(code: object) -> str:
    """A BaoStock code such as 'sh.600000'; ValueError otherwise."""
    if not isinstance(code, str) or not CODE_PATTERN.fullmatch(code):
        raise ValueError(
            f"code must be a BaoStock code like 'sh.600000', 'sz.000001' or 'bj.830799'; "
            f"got {code!r}"
        )
    return code


def check_date(value: object, what: str) -> dt.date:
    """A date from a date, datetime, Timestamp or 'YYYY-MM-DD'; ValueError otherwise."""
    if isinstance(value, dt.datetime):  # pd.Timestamp too
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, np.datetime64) and not np.isnat(value):
        return value.astype("datetime64[D]").item()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{what} must be a date or an ISO date 'YYYY-MM-DD'; got {value!r}")


def check_range(start: object, end: object) -> tuple[dt.date | None, dt.date | None]:
    low = None if start is None else check_date(start, "start")
    high = None if end is None else check_date(end, "end")
    if low is not None and high is not None and low > high:
        raise ValueError(f"start {low} is after end {high}")
    return low, high


class MarketReader:
    """Reads market data from the cache (Redis) or the warehouse (PostgreSQL); thread-safe.

    `settings` default to Settings.from_env(); the warehouse and the cache are the configured
    ones or the embedded servers under STOCK_PIPELINE_HOME (started or attached to on first
    use). `use_cache=False` reads PostgreSQL only. Close it (or use `with`) to release the
    connections.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        use_cache: bool = True,
        redis_timeout_s: float = 0.25,
        breaker_s: float = 5.0,
        pointer_ttl_s: float = 1.0,
    ):
        self.settings = settings or Settings.from_env()
        self._keys = CacheKeys(self.settings.cache_prefix)
        self._use_cache = use_cache
        self._redis_timeout_s = redis_timeout_s
        self._breaker_s = breaker_s
        self._pointer_ttl_s = pointer_ttl_s
        self._lock = threading.Lock()
        self._engine: Any = None  # made on first PostgreSQL read
        self._database_url = ""
        self._redis: redis.Redis | None = None  # made on first cache read
        self._redis_url = ""
        self._pointer: tuple[str | None, float] = (None, 0.0)  # (version, valid until)
        self._down_until = 0.0
        self._down_reported = False
        self._warned_entries = False
        self._served = {"redis": 0, "postgres": 0}
        self._closed = False

    # -- the API -------------------------------------------------------------------------------

    def bars(
        self,
        code: str,
        start: DateLike | None = None,
        end: DateLike | None = None,
        adjust: Adjust | str = "none",
    ) -> pd.DataFrame:
        """The code's daily bars with trade_date in [start, end] (open ends: all), indexed by
        trade_date: open, high, low, close, pre_close as traded ('none'), back-adjusted
        ('hfq': price * factor of the day) or forward-adjusted ('qfq': price * factor / factor
        of the latest bar); the other stock_daily columns as stored. Suspended days are rows
        with trade_status False and NaN prices."""
        code, mode = check_code(code), check_adjust(adjust)
        low, high = check_range(start, end)
        if low is not None:  # the cache holds the recent bars: an open start goes further back
            cached = self._from_cache(
                lambda client, version: self._cached_bars(client, version, code, low, high, mode)
            )
            if cached is not None:
                return cached
        params = {"code": code, "start": low or _FIRST_DAY, "end": high or _LAST_DAY}
        rows = self._query(_BARS_QFQ_SQL if mode == "qfq" else _BARS_SQL, params)
        factor = float("nan")
        if mode == "qfq":
            factor = _nan_if_none(rows[0][-1]) if rows else factor
            rows = [row[:-1] for row in rows]
        return bars_frame(BARS.rows(rows), mode, factor)

    def indicators(
        self,
        code: str,
        start: DateLike | None = None,
        end: DateLike | None = None,
        columns: str | Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """The code's technical indicators (INDICATOR_COLUMNS, or `columns` of them) with
        trade_date in [start, end], indexed by trade_date. Read from PostgreSQL."""
        code = check_code(code)
        selected = check_columns(columns, INDICATOR_COLUMNS, "indicator")
        low, high = check_range(start, end)
        rows = self._query(
            _indicators_sql(selected),
            {"code": code, "start": low or _FIRST_DAY, "end": high or _LAST_DAY},
        )
        layout = INDICATORS.select(("trade_date", *selected))
        return _frame(layout.rows(rows), "trade_date")

    def latest(self, code: str) -> pd.DataFrame:
        """One row indexed by code (none for a code without bars): the code's latest bar
        (trade_date, stock_daily's columns as stored) and its latest indicators
        (indicator_date: their day, normally the same)."""
        code = check_code(code)
        cached = self._from_cache(
            lambda client, version: self._cached_latest(client, version, code)
        )
        if cached is not None:
            return cached
        return coded_frame(code, LATEST.rows(self._query(_LATEST_SQL, {"code": code})))

    def cross_section(
        self, day: DateLike | None = None, columns: str | Iterable[str] | None = None
    ) -> pd.DataFrame:
        """One row per code with a bar on `day` (default: the latest day with indicators),
        indexed by code: trade_date, stock_daily's columns and that day's indicators (or
        `columns` of them)."""
        selected = check_columns(columns, CROSS_SECTION.names[1:], "cross-section")
        wanted = None if day is None else check_date(day, "day")
        cached = self._from_cache(
            lambda client, version: self._cached_cross_section(client, version, wanted, selected)
        )
        if cached is not None:
            return cached
        layout = CROSS_SECTION.select(("code", *selected))
        if wanted is None:
            wanted = self._query(_LATEST_DAY_SQL, {})[0][0]
        rows = [] if wanted is None else self._query(_cross_section_sql(selected), {"day": wanted})
        return _frame(layout.rows(rows), "code")

    # -- point in time (pointintime.py): always PostgreSQL ---------------------------------------

    def finance_as_of(
        self, day: DateLike, codes: str | Iterable[str] | None = None
    ) -> pd.DataFrame:
        """Per code (or per code of `codes`), the statement with the latest stat_date among
        those published on or before `day`, in the version the warehouse held on `day`:
        indexed by code, with stat_date, pub_date, valid_from (the day these values became
        known: pub_date, or the re-fetch that revised them) and the finance columns. Never a
        statement published after `day`."""
        wanted = check_date(day, "day")
        params: dict[str, Any] = {"day": wanted}
        if codes is not None:
            params["codes"] = _codes(codes)
        rows = self._query(pit.finance_as_of_sql(codes is not None), params)
        return _pit_frame(rows, pit.FINANCE_COLUMNS, dates=("stat_date", "pub_date", "valid_from"))

    def index_members(self, index: str, day: DateLike) -> list[str]:
        """The codes in `index` ('sh.000300' or 'hs300', 'sh.000016' or 'sz50', 'sh.000905' or
        'zz500') on `day`: the members of the latest snapshot on or before it. Raises
        ValueError for a day before the first stored snapshot (unknown, not empty)."""
        code, wanted = pit.index_code(index), check_date(day, "day")
        rows = self._query(pit.INDEX_MEMBERS_SQL, {"index": code, "day": wanted})
        if not rows:
            first = self._query(pit.INDEX_SPAN_SQL, {"index": code})[0][0]
            if first is None or wanted < first:
                raise ValueError(pit.no_snapshot_message(code, wanted, first))
        return [r[0] for r in rows]

    def industry_as_of(
        self, day: DateLike, codes: str | Iterable[str] | None = None
    ) -> pd.DataFrame:
        """Each stock's CSRC industry on `day` (industry, classification, valid_from: the
        snapshot that first showed it), indexed by code."""
        wanted = check_date(day, "day")
        params: dict[str, Any] = {"day": wanted}
        if codes is not None:
            params["codes"] = _codes(codes)
        rows = self._query(pit.industry_as_of_sql(codes is not None), params)
        if not rows:
            first = self._query(pit.INDUSTRY_SPAN_SQL, {})[0][0]
            if first is None or wanted < first:
                raise ValueError(
                    f"industry_membership holds no snapshot on or before {wanted} (first: "
                    f"{first}): materialize the p4 group (with an earlier "
                    "STOCK_PIPELINE_START_DATE for older days)"
                )
        return _pit_frame(rows, pit.INDUSTRY_COLUMNS, dates=("valid_from",))

    def universe(self, day: DateLike) -> list[str]:
        """The stocks listed and trading on `day` (query_all_stock's list, suspended ones left
        out; stocks delisted since are in it for past days). Raises ValueError for a day the
        warehouse holds no listing of (a closed day, or one not materialized)."""
        wanted = check_date(day, "day")
        rows = self._query(pit.UNIVERSE_SQL, {"day": wanted})
        if not rows and not self._query(pit.LISTINGS_ON_DAY_SQL, {"day": wanted})[0][0]:
            is_open = self._query(pit.IS_OPEN_SQL, {"day": wanted})
            if is_open and is_open[0][0] is False:
                raise ValueError(f"{wanted} is not a trading day: no stock trades on it")
            raise ValueError(
                f"raw_all_stock holds no listing for {wanted}: materialize raw_all_stock for "
                "that day (stock-pipeline backfill, or the p0 group)"
            )
        return [r[0] for r in rows]

    @property
    def served(self) -> dict[str, int]:
        """Reads answered by each store so far."""
        with self._lock:
            return dict(self._served)

    # -- Redis ---------------------------------------------------------------------------------

    def _cached_bars(
        self,
        client: redis.Redis,
        version: str,
        code: str,
        low: dt.date,
        high: dt.date | None,
        adjust: Adjust,
    ) -> pd.DataFrame | None:
        blob = client.get(self._keys.bars(version, code))
        if blob is None:
            return None
        columns = BARS.check(codec.decode(blob))
        days = columns.others["trade_date"]
        first = day_number(low)
        if not len(days) or first < days[0]:
            return None  # the range starts before the cached bars
        last = None if high is None else day_number(high)
        return bars_frame(between(columns, first, last), adjust, latest_factor(columns))

    def _cached_latest(self, client: redis.Redis, version: str, code: str) -> pd.DataFrame | None:
        key = self._keys.latest(version, code)
        packed = client.hget(key, PACKED_FIELD)
        if packed is not None:
            return coded_frame(code, LATEST.check(codec.decode(packed)))
        fields = client.hgetall(key)  # a hash without the packed row: its text fields
        return coded_frame(code, from_hash(fields)) if fields else None

    def _cached_cross_section(
        self, client: redis.Redis, version: str, day: dt.date | None, selected: Sequence[str]
    ) -> pd.DataFrame | None:
        if day is not None and day != parse_version(version)[0]:
            return None  # the cache holds its own day only
        blob = client.get(self._keys.cross_section(version))
        if blob is None:
            return None
        return _frame(CROSS_SECTION.check(codec.decode(blob)), "code", selected)

    def _from_cache(self, read: Callable[[redis.Redis, str], T | None]) -> T | None:
        """`read(client, version)` of the current version; None when the cache cannot answer
        (no Redis, no version, a missing or unusable entry)."""
        client = self._cache_client()
        if client is None:
            return None
        try:
            version = self._current_version(client)
            result = None if version is None else read(client, version)
        except _REDIS_DOWN as exc:
            self._redis_failed(exc)
            return None
        except _ENTRY_UNUSABLE as exc:
            self._entry_unusable(exc)
            return None
        if self._down_reported:
            self._redis_back()
        if result is not None:
            self._count("redis")
        return result

    def _current_version(self, client: redis.Redis) -> str | None:
        version, valid_until = self._pointer
        now = time.monotonic()
        if now < valid_until:
            return version
        raw = client.get(self._keys.current)
        version = None if raw is None else raw.decode()
        self._pointer = (version, now + self._pointer_ttl_s)
        return version

    def _cache_client(self) -> redis.Redis | None:
        """The Redis client; None when the cache is off or the breaker is open."""
        if not self._use_cache or time.monotonic() < self._down_until:
            return None
        if self._redis is not None:
            return self._redis
        with self._lock:
            self._check_open()
            if self._redis is None and self._use_cache:
                self._redis = self._connect_redis()
            return self._redis

    def _connect_redis(self) -> redis.Redis | None:
        from stock_pipeline.cache.connection import cache_url
        from stock_pipeline.embedded._service import EmbeddedServiceError

        try:
            self._redis_url = cache_url(self.settings)
            pool = redis.ConnectionPool.from_url(
                self._redis_url,
                socket_connect_timeout=self._redis_timeout_s,
                socket_timeout=self._redis_timeout_s * 2,
            )
        except (EmbeddedServiceError, ValueError, OSError) as exc:
            # No server to try again later: the cache stays off for this reader.
            log.warning("no Redis cache (%s): reading from PostgreSQL only", exc)
            self._use_cache = False
            return None
        return redis.Redis(connection_pool=pool)

    def _redis_failed(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self._breaker_s
            self._pointer = (None, 0.0)
            if self._down_reported:
                return
            self._down_reported = True
        log.warning(
            "Redis cache at %s does not answer (%s): reading from PostgreSQL, trying Redis "
            "again every %.0f s",
            display_url(self._redis_url),
            describe_error(exc, self._redis_url),
            self._breaker_s,
        )

    def _redis_back(self) -> None:
        with self._lock:
            if not self._down_reported:
                return
            self._down_reported = False
        log.info("Redis cache at %s answers again: reading from it", display_url(self._redis_url))

    def _entry_unusable(self, exc: BaseException) -> None:
        with self._lock:
            first, self._warned_entries = not self._warned_entries, True
        # Once at WARNING (a damaged or foreign value), then quietly: each such read is slower.
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "a cache entry under %s is unusable (%s: %s): reading it from PostgreSQL",
            self._keys.prefix,
            type(exc).__name__,
            exc,
        )

    # -- PostgreSQL ----------------------------------------------------------------------------

    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of `sql`; a connection the server dropped is replaced once."""
        engine = self._pg_engine()
        for attempt in (1, 2):
            try:
                connection = engine.raw_connection()
            except DBAPIError as exc:
                raise unreachable(self._database_url, exc.orig or exc) from None
            try:
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                    rows = cursor.fetchall()
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                connection.invalidate(exc)
                if attempt == 2:
                    raise unreachable(self._database_url, exc) from None
                continue
            finally:
                connection.close()
            self._count("postgres")
            return rows
        raise AssertionError("unreachable")

    def _pg_engine(self) -> Any:
        if self._engine is not None:
            return self._engine
        with self._lock:
            self._check_open()
            if self._engine is None:
                self._database_url = warehouse_url(self.settings)
                self._engine = create_engine(
                    sqlalchemy_url(self._database_url, "psycopg2"),
                    pool_size=self.settings.db_pool_size,
                    max_overflow=self.settings.db_max_overflow,
                    pool_recycle=self.settings.db_pool_recycle_s,
                    # Reads only: no transaction to open, none to roll back on return.
                    isolation_level="AUTOCOMMIT",
                    pool_reset_on_return=None,
                    connect_args={"connect_timeout": 10, "application_name": "stock_pipeline.read"},
                )
            return self._engine

    # -- lifecycle -----------------------------------------------------------------------------

    def _count(self, store: str) -> None:
        with self._lock:
            self._served[store] += 1

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this MarketReader is closed: make a new one")

    def close(self) -> None:
        """Release the connections (idempotent)."""
        with self._lock:
            self._closed = True
            engine, client = self._engine, self._redis
            self._engine = self._redis = None
            self._use_cache = False
        if engine is not None:
            engine.dispose()
        if client is not None:
            client.connection_pool.disconnect()
            client.close()

    def __enter__(self) -> MarketReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _frame(columns: Columns, index: str, select: Sequence[str] | None = None) -> pd.DataFrame:
    return to_frame(columns, index=index, select=select)


def _codes(codes: str | Iterable[str]) -> list[str]:
    return [check_code(c) for c in ([codes] if isinstance(codes, str) else codes)]


def _pit_frame(rows: list[tuple], columns: Sequence[str], dates: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=["code", *columns])
    for name in dates:
        frame[name] = pd.to_datetime(frame[name])
    return frame.set_index("code")


def _indicators_sql(selected: Sequence[str]) -> str:
    return (
        f"SELECT {_DAYS}, {', '.join(selected)} FROM technical_daily "
        "WHERE code = %(code)s AND trade_date BETWEEN %(start)s AND %(end)s ORDER BY trade_date"
    )


def _cross_section_sql(selected: Sequence[str]) -> str:
    def expression(name: str) -> str:
        if name == "trade_date":
            return f"s.{_DAYS}"
        return f"t.{name}" if name in INDICATOR_COLUMNS else f"s.{name}"

    return (
        f"SELECT s.code, {', '.join(map(expression, selected))} FROM stock_daily AS s "
        "LEFT JOIN technical_daily AS t "
        "ON t.code = s.code AND t.trade_date = s.trade_date AND t.trade_date = %(day)s "
        "WHERE s.trade_date = %(day)s ORDER BY s.code"
    )


# -- the module-level API: one shared reader, made on first use ------------------------------

_default: MarketReader | None = None
_default_lock = threading.Lock()


def default_reader() -> MarketReader:
    """The reader the module-level functions share (settings from the environment)."""
    global _default
    reader = _default
    if reader is None:
        with _default_lock:
            if _default is None:
                _default = MarketReader()
            reader = _default
    return reader


def close() -> None:
    """Close the shared reader; the next call makes a new one (e.g. after changing settings)."""
    global _default
    with _default_lock:
        reader, _default = _default, None
    if reader is not None:
        reader.close()


def bars(
    code: str,
    start: DateLike | None = None,
    end: DateLike | None = None,
    adjust: Adjust | str = "none",
) -> pd.DataFrame:
    """MarketReader.bars on the shared reader."""
    return default_reader().bars(code, start, end, adjust)


def indicators(
    code: str,
    start: DateLike | None = None,
    end: DateLike | None = None,
    columns: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """MarketReader.indicators on the shared reader."""
    return default_reader().indicators(code, start, end, columns)


def latest(code: str) -> pd.DataFrame:
    """MarketReader.latest on the shared reader."""
    return default_reader().latest(code)


def cross_section(
    day: DateLike | None = None, columns: str | Iterable[str] | None = None
) -> pd.DataFrame:
    """MarketReader.cross_section on the shared reader."""
    return default_reader().cross_section(day, columns)


def finance_as_of(day: DateLike, codes: str | Iterable[str] | None = None) -> pd.DataFrame:
    """MarketReader.finance_as_of on the shared reader."""
    return default_reader().finance_as_of(day, codes)


def index_members(index: str, day: DateLike) -> list[str]:
    """MarketReader.index_members on the shared reader."""
    return default_reader().index_members(index, day)


def industry_as_of(day: DateLike, codes: str | Iterable[str] | None = None) -> pd.DataFrame:
    """MarketReader.industry_as_of on the shared reader."""
    return default_reader().industry_as_of(day, codes)


def universe(day: DateLike) -> list[str]:
    """MarketReader.universe on the shared reader."""
    return default_reader().universe(day)
