"""The Redis cache against real PostgreSQL and Redis: a refresh writes one version and switches
to it, the replaced version expires after its grace period, every key expires, readers never see
two versions mixed, an unreachable Redis is a clear error; and the codec, versions and hash
forms on their own."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis

from stock_pipeline.cache import codec
from stock_pipeline.cache.columns import from_frame, to_frame
from stock_pipeline.cache.connection import CacheUnreachable, connect
from stock_pipeline.cache.frames import BARS, LATEST, from_hash, hash_fields
from stock_pipeline.cache.keys import CacheKeys, make_version, parse_version
from stock_pipeline.cache.refresh import (
    NothingToCache,
    RefreshResult,
    current_cache_day,
    latest_indicator_day,
    refresh_cache,
)
from stock_pipeline.read import MarketReader
from stock_pipeline.settings import Settings
from stock_pipeline.warehouse import migrate, writer
from stock_pipeline.warehouse.engine import Warehouse
from stock_pipeline.warehouse.tables import INDICATOR_COLUMNS

# -- a small market, written into a migrated database -------------------------------------------

LAST_DAY = dt.date(2024, 6, 28)
DAYS = pd.bdate_range(end=LAST_DAY, periods=160).values.astype("datetime64[ns]")
CACHED_BARS = 20
# sh.600000: factor changes inside and before the cached bars, a suspended day;
# sz.000001: NULL flags and valuations; bj.830799: listed 8 days ago (fewer bars than cached);
# sh.600001: delisted before the cache's lookback; sz.000002: no indicators on the last day.
CODES = ("bj.830799", "sh.600000", "sh.600001", "sz.000001", "sz.000002")
FACTOR_CHANGES = {"sh.600000": ((60, 1.5), (150, 2.25)), "sz.000001": ((0, 3.0),)}


def code_days(code: str) -> np.ndarray:
    if code == "bj.830799":
        return DAYS[-8:]
    if code == "sh.600001":
        return DAYS[:30]
    return DAYS


def market_rows(seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stock_daily rows, technical_daily rows) of CODES, NULLs in every nullable type."""
    rng = np.random.default_rng(seed)
    bars, indicators = [], []
    for code in CODES:
        days = code_days(code)
        n = len(days)
        close = np.round(10 + np.cumsum(rng.normal(0, 0.2, n)), 2)
        factor = np.ones(n)
        for start, value in FACTOR_CHANGES.get(code, ()):
            factor[start:] = value
        frame = pd.DataFrame(
            {
                "code": code,
                "trade_date": days,
                "open": np.round(close * 0.99, 2),
                "high": np.round(close * 1.02, 2),
                "low": np.round(close * 0.97, 2),
                "close": close,
                "pre_close": np.round(close * 1.001, 2),
                "pct_chg": np.round(rng.normal(0, 2, n), 4),
                "volume": pd.array(rng.integers(1, 10**9, n), dtype="Int64"),
                "amount": np.round(close * 1e6, 2),
                "turnover": np.full(n, 1.0),
                "trade_status": pd.array(np.ones(n, bool), dtype="boolean"),
                "is_st": pd.array(np.zeros(n, bool), dtype="boolean"),
                "pe_ttm": rng.normal(30, 10, n),
                "pb_mrq": rng.uniform(0.5, 5, n),
                "ps_ttm": rng.uniform(0.5, 5, n),
                "pcf_ncf_ttm": rng.normal(0, 50, n),
                "back_adjust_factor": factor,
            }
        )
        if code == "sh.600000":  # suspended three days before the end
            frame.loc[n - 3, ["open", "high", "low", "close", "pct_chg"]] = np.nan
            frame.loc[n - 3, ["volume"]] = pd.NA
            frame.loc[n - 3, "trade_status"] = False
        if code == "sz.000001":
            frame.loc[n - 2, ["is_st", "trade_status"]] = pd.NA
            frame.loc[n - 1, ["pe_ttm", "pb_mrq"]] = np.nan
        bars.append(frame)
        values = rng.normal(0, 10, (n, len(INDICATOR_COLUMNS)))
        values[: min(n, 5), 1] = np.nan  # an indicator without enough history yet
        technical = pd.DataFrame(values, columns=list(INDICATOR_COLUMNS))
        technical.insert(0, "code", code)
        technical.insert(1, "trade_date", days)
        indicators.append(technical.iloc[:-1] if code == "sz.000002" else technical)
    return pd.concat(bars, ignore_index=True), pd.concat(indicators, ignore_index=True)


async def load_market(dsn: str, bars: pd.DataFrame, indicators: pd.DataFrame) -> None:
    async with await Warehouse.connect(Settings(database_url=dsn), url=dsn) as wh:
        await writer.upsert(wh.copy_pool, "stock_daily", bars)
        await writer.upsert(wh.copy_pool, "technical_daily", indicators)


@dataclass(frozen=True)
class Market:
    dsn: str
    bars: pd.DataFrame
    indicators: pd.DataFrame


def make_market(make_database: Callable[[], str]) -> Market:
    dsn = make_database()
    migrate.upgrade(dsn)
    bars, indicators = market_rows()
    asyncio.run(load_market(dsn, bars, indicators))
    return Market(dsn, bars, indicators)


@pytest.fixture(scope="module")
def market(make_database: Callable[[], str]) -> Market:
    return make_market(make_database)


def fresh_prefix() -> str:
    """A prefix of its own per test: tests never see each other's keys."""
    return f"test:{uuid.uuid4().hex[:10]}"


def refresh(dsn: str, redis_url: str, prefix: str, **options: Any) -> RefreshResult:
    async def run() -> RefreshResult:
        async with await Warehouse.connect(Settings(database_url=dsn), url=dsn) as wh:
            return await refresh_cache(
                wh,
                redis_url,
                prefix=prefix,
                bars=options.pop("bars", CACHED_BARS),
                ttl_s=options.pop("ttl_s", 3600),
                **options,
            )

    return asyncio.run(run())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keys_of(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000))


@pytest.fixture
def client(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# -- refresh ----------------------------------------------------------------------------------


def test_refresh_writes_a_version_and_switches_to_it(market: Market, redis_url: str, client):
    prefix = fresh_prefix()
    result = refresh(market.dsn, redis_url, prefix)
    keys = CacheKeys(prefix)

    cached_codes = ["bj.830799", "sh.600000", "sz.000001", "sz.000002"]  # not the delisted one
    assert result.day == LAST_DAY and result.previous_version is None
    assert parse_version(result.version)[0] == LAST_DAY
    assert client.get(keys.current).decode() == result.version
    assert (result.codes, result.cross_section_codes) == (4, 4)
    assert result.keys_written == 2 * 4 + 2 + 1 == len(keys_of(client, prefix))
    assert result.bytes_written > 0 and result.seconds >= result.read_seconds
    meta = {k.decode(): v.decode() for k, v in client.hgetall(keys.meta(result.version)).items()}
    assert meta["day"] == "2024-06-28" and meta["codes"] == "4" and meta["bars"] == "20"
    assert "back_adjust_factor" in meta["columns"]

    for code in cached_codes:
        stored = market.bars[market.bars["code"] == code].drop(columns="code").tail(CACHED_BARS)
        blob = client.get(keys.bars(result.version, code))
        decoded = codec.decode_frame(blob)
        pd.testing.assert_frame_equal(decoded, stored.reset_index(drop=True)[list(BARS.names)])
    assert len(codec.decode_frame(client.get(keys.bars(result.version, "bj.830799")))) == 8
    assert client.get(keys.bars(result.version, "sh.600001")) is None

    latest = client.hgetall(keys.latest(result.version, "sz.000002"))
    assert latest[b"trade_date"] == b"2024-06-28"
    assert latest[b"indicator_date"] == b"2024-06-27"  # its indicators lag a day
    assert (
        latest[b"pe_ttm"] != b""
        and client.hget(keys.latest(result.version, "sz.000001"), "pe_ttm") == b""
    )  # NULL

    xs = codec.decode_frame(client.get(keys.cross_section(result.version)))
    assert list(xs["code"]) == cached_codes
    assert xs.loc[xs["code"] == "sz.000002", "ma5"].isna().all()  # no indicators that day
    assert asyncio.run(_cache_day(redis_url, prefix)) == LAST_DAY


async def _cache_day(redis_url: str, prefix: str) -> dt.date | None:
    async with connect(redis_url) as connection:
        return await current_cache_day(connection, prefix)


def test_the_cache_day_matches_the_last_indicator_day(market: Market, redis_url: str):
    async def days() -> tuple[Any, Any]:
        async with await Warehouse.connect(Settings(database_url=market.dsn), url=market.dsn) as wh:
            return await latest_indicator_day(wh), await _cache_day(redis_url, prefix)

    prefix = fresh_prefix()
    assert asyncio.run(days()) == (LAST_DAY, None)  # no cache yet
    refresh(market.dsn, redis_url, prefix)
    assert asyncio.run(days()) == (LAST_DAY, LAST_DAY)


def test_a_second_refresh_switches_and_the_old_version_expires_after_its_grace(
    market: Market, redis_url: str, client
):
    prefix = fresh_prefix()
    first = refresh(market.dsn, redis_url, prefix, ttl_s=5000)
    second = refresh(market.dsn, redis_url, prefix, ttl_s=5000, grace_s=30)

    keys = CacheKeys(prefix)
    assert second.previous_version == first.version != second.version
    assert client.get(keys.current).decode() == second.version
    assert second.expired_keys == first.keys_written - 1  # all but the pointer
    for key in keys_of(client, prefix):
        ttl = client.ttl(key)
        if keys.version_of(key) == first.version:
            assert 0 < ttl <= 30, key
        else:  # the new version and the pointer
            assert 30 < ttl <= 5000, key
    # Readers that read the old pointer a moment ago still find every key of theirs.
    assert client.get(keys.bars(first.version, "sh.600000")) is not None


def test_every_key_expires(market: Market, redis_url: str, client):
    prefix = fresh_prefix()
    refresh(market.dsn, redis_url, prefix, ttl_s=777)
    ttls = {key: client.ttl(key) for key in keys_of(client, prefix)}
    assert f"{prefix}:current" in ttls
    assert all(0 < ttl <= 777 for ttl in ttls.values()), ttls


def test_an_abandoned_version_is_removed_by_the_next_refresh(
    market: Market, redis_url: str, client
):
    prefix = fresh_prefix()
    keys = CacheKeys(prefix)
    # What a refresh that died before its switch leaves behind.
    abandoned = make_version(LAST_DAY, dt.datetime(2024, 6, 28, 10, tzinfo=dt.UTC))
    client.set(keys.bars(abandoned, "sh.600000"), b"x", ex=5000)
    refresh(market.dsn, redis_url, prefix, grace_s=20)
    assert 0 < client.ttl(keys.bars(abandoned, "sh.600000")) <= 20


def test_readers_never_see_two_versions_mixed(market: Market, make_database, redis_url: str):
    """While a refresh writes version 2 (turnover 2.0 on the last day), a reader that reads the
    pointer and then every code's keys finds one version whole: all keys there, one marker."""
    own = make_market(make_database)
    prefix = fresh_prefix()
    keys = CacheKeys(prefix)
    refresh(own.dsn, redis_url, prefix)
    asyncio.run(_set_last_turnover(own.dsn, 2.0))
    codes = ["bj.830799", "sh.600000", "sz.000001", "sz.000002"]
    seen: list[tuple[str, set[bytes]]] = []
    failures: list[str] = []
    stop = threading.Event()

    def read_sweeps() -> None:
        reader = redis.Redis.from_url(redis_url)
        while not stop.is_set():
            version = reader.get(keys.current).decode()
            markers = set()
            for code in codes:
                latest = reader.hget(keys.latest(version, code), "turnover")
                if latest is None or reader.get(keys.bars(version, code)) is None:
                    failures.append(f"{version}: {code} missing")
                markers.add(latest)
            seen.append((version, markers))
        reader.close()

    api_markers: list[float] = []
    settings = Settings(database_url=own.dsn, redis_url=redis_url, cache_prefix=prefix)

    def read_through_the_api() -> None:
        with MarketReader(settings, pointer_ttl_s=0) as reader:
            while not stop.is_set():
                for code in codes:
                    api_markers.append(float(reader.latest(code)["turnover"].iloc[0]))
                    if len(reader.bars(code, pd.Timestamp(DAYS[-5]).date())) != 5:
                        failures.append(f"{code}: not 5 bars")
            if reader.served["postgres"]:  # a key was missing: the reader saw a half version
                failures.append(f"{reader.served['postgres']} reads fell back to PostgreSQL")

    threads = [threading.Thread(target=read_sweeps), threading.Thread(target=read_through_the_api)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):  # a few switches while the readers read
            refresh(own.dsn, redis_url, prefix, batch_codes=1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:5]
    assert set(api_markers) == {1.0, 2.0}
    assert {m for _, markers in seen for m in markers} <= {b"1.0", b"2.0"}
    assert all(len(markers) == 1 for _, markers in seen), seen
    assert len({v for v, _ in seen}) >= 2  # the sweeps did span a switch


async def _set_last_turnover(dsn: str, value: float) -> None:
    async with await Warehouse.connect(Settings(database_url=dsn), url=dsn) as wh:
        await wh.copy_pool.execute(
            "UPDATE stock_daily SET turnover = $1 WHERE trade_date = $2", value, LAST_DAY
        )


def test_refresh_against_an_unreachable_redis_names_it_and_writes_nothing(market: Market):
    url = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"

    async def attempt() -> tuple[int, int]:
        async with await Warehouse.connect(Settings(database_url=market.dsn), url=market.dsn) as wh:
            count = "SELECT count(*) FROM stock_daily"
            before = await wh.copy_pool.fetchval(count)
            with pytest.raises(CacheUnreachable) as info:
                await refresh_cache(wh, url, prefix=fresh_prefix(), bars=20, ttl_s=3600)
            message = str(info.value)
            assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/0" in message
            assert "s3cret" not in message
            assert "STOCK_PIPELINE_REDIS_URL" in message and "embedded Redis" in message
            return before, await wh.copy_pool.fetchval(count)

    before, after = asyncio.run(attempt())
    assert before == after


def test_refresh_of_an_empty_warehouse_says_what_is_missing(make_database, redis_url: str):
    dsn = make_database()
    migrate.upgrade(dsn)
    with pytest.raises(NothingToCache, match="technical_daily is empty"):
        refresh(dsn, redis_url, fresh_prefix())


def test_refresh_checks_its_arguments(market: Market, redis_url: str):
    with pytest.raises(ValueError, match="ttl_s .* longer than grace_s"):
        refresh(market.dsn, redis_url, fresh_prefix(), ttl_s=30, grace_s=60)
    with pytest.raises(ValueError, match="cache prefix 'a b'"):
        refresh(market.dsn, redis_url, "a b")


# -- versions and keys ------------------------------------------------------------------------


def test_a_version_names_its_day_and_orders_by_creation():
    created = dt.datetime(2024, 7, 1, 8, 30, 5, 123456, tzinfo=dt.UTC)
    version = make_version(LAST_DAY, created)
    assert version == "20240628-20240701T083005123456"
    assert parse_version(version) == (LAST_DAY, created)
    for bad in ("", "20240628", "2024-06-28-x", "20241399-20240701T083005123456"):
        with pytest.raises(ValueError, match="is not a cache version"):
            parse_version(bad)
    keys = CacheKeys("research:sp")
    assert keys.version_of(keys.bars(version, "sh.600000")) == version
    assert keys.version_of(keys.current) is None
    assert keys.version_of("research:sp:other:thing") is None


# -- codec --------------------------------------------------------------------------------------


def every_kind_frame(rows: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    dates = pd.Series(pd.bdate_range("2024-01-01", periods=rows)).astype("datetime64[ns]")
    frame = pd.DataFrame(
        {
            "code": pd.array([f"sh.{600000 + i}" for i in range(rows)], dtype="str"),
            "trade_date": dates,
            "close": rng.normal(0, 1e6, rows),
            "volume": pd.array(rng.integers(-(2**62), 2**62, rows), dtype="Int64"),
            "trade_status": pd.array(rng.random(rows) < 0.5, dtype="boolean"),
            "amount": rng.normal(0, 1, rows),
        }
    )
    if rows:
        frame.loc[0, ["close", "volume", "trade_status", "trade_date"]] = (
            np.nan,
            pd.NA,
            pd.NA,
            pd.NaT,
        )
        frame.loc[rows - 1, "close"] = 5e-324
        frame.loc[rows - 1, "amount"] = -0.0
    return frame


@pytest.mark.parametrize("rows", [0, 1, 6, 257])
def test_codec_round_trips_every_kind_exactly(rows: int):
    frame = every_kind_frame(rows)
    blob = codec.encode_frame(frame)
    pd.testing.assert_frame_equal(codec.decode_frame(blob), frame)
    assert len(blob) % 8 == 0
    if rows:
        assert np.signbit(codec.decode_frame(blob)["amount"].iloc[-1])  # -0.0 stays -0.0


def test_codec_keeps_text_compact_and_any_unicode():
    codes = pd.DataFrame({"code": pd.array(["sh.600000", "sz.000001"] * 500, dtype="str")})
    assert len(codec.encode_frame(codes)) < 1000 * 9 + 64  # 9 bytes a code
    names = pd.DataFrame({"name": pd.array(["浦发银行", "", "平安银行 A"], dtype="str")})
    pd.testing.assert_frame_equal(codec.decode_frame(codec.encode_frame(names)), names)


def test_codec_frames_are_writable():
    frame = codec.decode_frame(codec.encode_frame(every_kind_frame()))
    frame.loc[1, "close"] = 1.0
    frame["amount"] *= 2


def test_codec_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="text column code holds NULL"):
        codec.encode_frame(pd.DataFrame({"code": pd.array(["a", None], dtype="str")}))
    with pytest.raises(ValueError, match="column t holds times of day"):
        codec.encode_frame(pd.DataFrame({"t": pd.to_datetime(["2024-01-01 10:00"])}))
    with pytest.raises(ValueError, match="column c: dtype complex128 cannot be stored"):
        codec.encode_frame(pd.DataFrame({"c": [1j]}))


def test_codec_says_what_is_wrong_with_bad_bytes():
    blob = codec.encode_frame(every_kind_frame())
    with pytest.raises(codec.CodecError, match="not an encoded frame: .* the key holds"):
        codec.decode(b'{"json": true}')
    with pytest.raises(codec.CodecError, match="not an encoded frame"):
        codec.decode(b"")
    for cut in range(len(blob)):
        with pytest.raises(codec.CodecError):
            codec.decode(blob[:cut])
    with pytest.raises(codec.CodecError, match=r"should be \d+ bytes, got \d+: cut short"):
        codec.decode(blob[:-8])
    with pytest.raises(codec.CodecError, match=r"should be \d+ bytes, got \d+$"):
        codec.decode(blob + b"\0" * 8)
    damaged = bytearray(blob)
    damaged[12] = 99  # the first column's kind
    with pytest.raises(codec.CodecError, match="column 1 has unknown kind 99"):
        codec.decode(bytes(damaged))


def test_decoding_a_small_frame_takes_microseconds():
    frame = codec.decode_frame(codec.encode_frame(every_kind_frame(60)))
    blob = codec.encode_frame(frame)
    import time

    codec.decode(blob)
    began = time.perf_counter()
    for _ in range(1000):
        codec.decode(blob)
    assert (time.perf_counter() - began) / 1000 < 200e-6  # about 10 us on a slow machine


def test_the_latest_hash_round_trips_exactly():
    bars, indicators = market_rows()
    suspended = bars.index[bars["code"] == "sh.600000"][-3]
    last = bars.loc[[suspended, 5]].reset_index(drop=True)
    ind = indicators.iloc[[0, 7]].reset_index(drop=True)
    frame = pd.concat(
        [last, ind.rename(columns={"trade_date": "indicator_date"}).drop(columns="code")], axis=1
    )[list(LATEST.names)]
    frame.loc[1, "indicator_date"] = pd.NaT
    frame.loc[1, "close_hfq"] = 0.1 + 0.2  # no shortest-repr surprises
    columns = from_frame(frame)
    fields = hash_fields(columns)
    assert fields[0]["trade_status"] == "0" and fields[0]["volume"] == ""
    assert fields[1]["indicator_date"] == "" and fields[1]["close_hfq"] == "0.30000000000000004"
    for i, row in enumerate(fields):
        back = from_hash({k.encode(): v.encode() for k, v in row.items()})
        pd.testing.assert_frame_equal(to_frame(back), frame.iloc[[i]].reset_index(drop=True))
    with pytest.raises(ValueError, match="field close holds b'abc', not a float"):
        from_hash({**{k.encode(): v.encode() for k, v in fields[0].items()}, b"close": b"abc"})
