"""The read API against real PostgreSQL and Redis: frames from the cache equal frames from the
warehouse (bars in all three adjustments, latest, cross-sections), the adjustment arithmetic,
fallbacks to PostgreSQL (ranges the cache does not hold, a stopped or hung Redis, logged once),
threads, and clear errors for bad requests."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stock_pipeline import read
from stock_pipeline.compute.daily import BAR_COLUMNS as DAILY_BAR_COLUMNS
from stock_pipeline.read import MarketReader
from stock_pipeline.settings import Settings
from stock_pipeline.warehouse.tables import INDICATOR_COLUMNS
from stock_pipeline_tests.test_cache import (
    CACHED_BARS,
    DAYS,
    LAST_DAY,
    Market,
    closed_port,
    fresh_prefix,
    make_market,
    refresh,
)

BAR_COLUMNS = [*DAILY_BAR_COLUMNS[2:], "back_adjust_factor"]  # stock_daily without its key
FIRST_CACHED = pd.Timestamp(DAYS[-CACHED_BARS]).date()


def day(i: int) -> dt.date:
    return pd.Timestamp(DAYS[i]).date()


@dataclasses.dataclass(frozen=True)
class Cached:
    market: Market
    settings: Settings


@pytest.fixture(scope="module")
def cached(make_database: Callable[[], str], redis_url: str, tmp_path_factory) -> Cached:
    market = make_market(make_database)
    prefix = fresh_prefix()
    refresh(market.dsn, redis_url, prefix)
    settings = Settings(
        database_url=market.dsn,
        redis_url=redis_url,
        cache_prefix=prefix,
        home=tmp_path_factory.mktemp("home"),
    )
    return Cached(market, settings)


@pytest.fixture(scope="module")
def from_cache(cached: Cached) -> Iterator[MarketReader]:
    with MarketReader(cached.settings) as reader:
        yield reader


@pytest.fixture(scope="module")
def from_postgres(cached: Cached) -> Iterator[MarketReader]:
    with MarketReader(cached.settings, use_cache=False) as reader:
        yield reader


def served_by(reader: MarketReader, work: Callable[[], Any]) -> tuple[Any, str]:
    """What `work` returned and which store answered it."""
    before = reader.served
    result = work()
    after = reader.served
    (store,) = [name for name in after if after[name] != before[name]]
    return result, store


# -- the same frames from either store ----------------------------------------------------------


@pytest.mark.parametrize("adjust", ["none", "hfq", "qfq"])
@pytest.mark.parametrize(
    ("code", "start", "end"),
    [
        ("sh.600000", FIRST_CACHED, None),  # a factor change inside, a suspended day
        ("sh.600000", day(-15), day(-5)),
        ("sz.000001", day(-3), LAST_DAY),
        ("sz.000002", day(-1).isoformat(), day(-1).isoformat()),
        ("bj.830799", day(-8), None),  # listed eight days ago: everything it has
        ("sz.000001", dt.date(2024, 6, 29), None),  # after the last bar: nothing
    ],
)
def test_bars_from_redis_equal_bars_from_postgres(
    from_cache: MarketReader, from_postgres: MarketReader, code, start, end, adjust
):
    frame, store = served_by(from_cache, lambda: from_cache.bars(code, start, end, adjust))
    assert store == "redis"
    pd.testing.assert_frame_equal(frame, from_postgres.bars(code, start, end, adjust))
    assert list(frame.columns) == BAR_COLUMNS and frame.index.name == "trade_date"


def test_bars_are_the_stored_rows(from_cache: MarketReader, cached: Cached):
    stored = cached.market.bars.query("code == 'sz.000001'").set_index("trade_date")[BAR_COLUMNS]
    frame = from_cache.bars("sz.000001", FIRST_CACHED)
    pd.testing.assert_frame_equal(frame, stored.tail(CACHED_BARS), check_index_type=False)
    assert frame.dtypes["volume"] == "Int64" and frame.dtypes["is_st"] == "boolean"
    assert frame["is_st"].isna().sum() == 1  # NULL stays NULL


@pytest.mark.parametrize("reader_name", ["from_cache", "from_postgres"])
def test_adjusted_prices_follow_the_factor(request, cached: Cached, reader_name: str):
    reader: MarketReader = request.getfixturevalue(reader_name)
    stored = cached.market.bars.query("code == 'sh.600000'").tail(CACHED_BARS)
    prices = stored[["open", "high", "low", "close", "pre_close"]].to_numpy()
    factor = stored["back_adjust_factor"].to_numpy()[:, None]
    assert set(factor.ravel()) == {1.5, 2.25}  # a factor change inside the window

    hfq = reader.bars("sh.600000", FIRST_CACHED, adjust="hfq")
    qfq = reader.bars("sh.600000", FIRST_CACHED, adjust="qfq")
    np.testing.assert_array_equal(
        hfq[["open", "high", "low", "close", "pre_close"]], prices * factor
    )
    np.testing.assert_array_equal(
        qfq[["open", "high", "low", "close", "pre_close"]], prices * factor / 2.25
    )
    # Forward-adjusted, the latest bar is as traded; back-adjusted, the oldest factor's are.
    assert qfq["close"].iloc[-1] == stored["close"].iloc[-1]
    assert qfq["close"].isna().sum() == 1  # the suspended day stays without prices
    pd.testing.assert_series_equal(qfq["volume"], hfq["volume"])  # volume as stored
    assert (qfq["back_adjust_factor"] == hfq["back_adjust_factor"]).all()


def test_qfq_divides_by_the_latest_factor_also_for_older_windows(
    from_cache: MarketReader, from_postgres: MarketReader
):
    old = from_postgres.bars("sh.600000", day(0), day(10), adjust="qfq")  # PostgreSQL only
    raw = from_postgres.bars("sh.600000", day(0), day(10))
    np.testing.assert_array_equal(old["close"], raw["close"] * 1.0 / 2.25)
    pd.testing.assert_frame_equal(from_cache.bars("sh.600000", day(0), day(10), "qfq"), old)


@pytest.mark.parametrize("code", ["sh.600000", "sz.000001", "sz.000002", "bj.830799"])
def test_latest_from_redis_equals_latest_from_postgres(
    from_cache: MarketReader, from_postgres: MarketReader, code: str
):
    frame, store = served_by(from_cache, lambda: from_cache.latest(code))
    assert store == "redis"
    pd.testing.assert_frame_equal(frame, from_postgres.latest(code))
    assert list(frame.index) == [code] and frame.index.name == "code"
    assert list(frame.columns) == [
        "trade_date",
        *BAR_COLUMNS,
        "indicator_date",
        *INDICATOR_COLUMNS,
    ]


def test_latest_says_when_the_indicators_lag(from_cache: MarketReader):
    row = from_cache.latest("sz.000002").iloc[0]
    assert row["trade_date"] == pd.Timestamp(LAST_DAY)
    assert row["indicator_date"] == pd.Timestamp(day(-2))


@pytest.mark.parametrize(
    ("which", "columns"),
    [
        (None, None),
        (LAST_DAY, None),
        ("2024-06-28", ["close", "ma20", "trade_status", "volume"]),
        (None, "rsi6"),
    ],
)
def test_cross_section_from_redis_equals_postgres(
    from_cache: MarketReader, from_postgres: MarketReader, which, columns
):
    frame, store = served_by(from_cache, lambda: from_cache.cross_section(which, columns))
    assert store == "redis"
    pd.testing.assert_frame_equal(frame, from_postgres.cross_section(which, columns))
    assert list(frame.index) == ["bj.830799", "sh.600000", "sz.000001", "sz.000002"]


def test_an_older_cross_section_comes_from_postgres(
    from_cache: MarketReader, from_postgres: MarketReader
):
    frame, store = served_by(from_cache, lambda: from_cache.cross_section(day(-40)))
    assert store == "postgres"
    pd.testing.assert_frame_equal(frame, from_postgres.cross_section(day(-40)))
    assert "bj.830799" not in frame.index and len(frame) == 3


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (None, None),  # everything: more than the cache holds
        (day(-21), None),  # one bar before the cached ones
        (day(0), day(-1)),
    ],
)
def test_ranges_the_cache_does_not_hold_come_from_postgres(
    from_cache: MarketReader, from_postgres: MarketReader, start, end
):
    frame, store = served_by(from_cache, lambda: from_cache.bars("sh.600000", start, end))
    assert store == "postgres"
    pd.testing.assert_frame_equal(frame, from_postgres.bars("sh.600000", start, end))


def test_a_code_without_data_gives_empty_frames_of_the_right_types(
    from_cache: MarketReader, from_postgres: MarketReader
):
    full = from_postgres.bars("sh.600000")
    for reader in (from_cache, from_postgres):
        for adjust in ("none", "qfq"):
            empty = reader.bars("sh.688999", FIRST_CACHED, adjust=adjust)
            pd.testing.assert_frame_equal(empty, full.iloc[:0])
        latest = reader.latest("sh.688999")
        assert latest.empty
        pd.testing.assert_series_equal(latest.dtypes, from_postgres.latest("sh.600000").dtypes)
        indicators = reader.indicators("sh.688999", columns=["ma5", "obv"])
        assert indicators.empty and list(indicators.columns) == ["ma5", "obv"]
        assert str(indicators.index.dtype) == "datetime64[ns]"
    # The delisted code: nothing in the cache, its history in PostgreSQL.
    assert len(from_cache.bars("sh.600001", day(0))) == 30


def test_indicators_are_the_stored_rows(from_cache: MarketReader, cached: Cached):
    stored = cached.market.indicators.query("code == 'sh.600000'").set_index("trade_date")
    frame = from_cache.indicators("sh.600000", day(2), day(9), columns=["ma5", "close_hfq"])
    expected = stored.loc[pd.Timestamp(day(2)) : pd.Timestamp(day(9)), ["ma5", "close_hfq"]]
    pd.testing.assert_frame_equal(frame, expected, check_index_type=False)
    assert frame["ma5"].isna().sum() == 3  # NULL in the first five rows
    assert list(from_cache.indicators("sh.600000", LAST_DAY).columns) == list(INDICATOR_COLUMNS)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.bars("600000"), "code must be a BaoStock code like 'sh.600000'"),
        (lambda r: r.bars(600000), "code must be a BaoStock code"),
        (lambda r: r.latest("SH.600000 "), "code must be a BaoStock code"),
        (lambda r: r.bars("sh.600000", "2024-13-01"), r"start must be a date .* '2024-13-01'"),
        (lambda r: r.bars("sh.600000", None, 20240101), "end must be a date"),
        (lambda r: r.bars("sh.600000", "2024-06-28", "2024-06-01"), "start 2024-06-28 is after"),
        (lambda r: r.bars("sh.600000", adjust="forward"), "adjust must be 'none' .* 'forward'"),
        (
            lambda r: r.indicators("sh.600000", columns=["ma5", "macd"]),
            r"unknown indicator column\(s\) \['macd'\]; valid: close_hfq, ma5",
        ),
        (lambda r: r.indicators("sh.600000", columns=[]), "no indicator columns asked for"),
        (lambda r: r.cross_section(columns=["code"]), r"unknown cross-section column\(s\)"),
        (lambda r: r.cross_section("yesterday"), "day must be a date"),
    ],
)
def test_bad_requests_say_what_is_wrong(from_cache: MarketReader, call, message: str):
    with pytest.raises(ValueError, match=message):
        call(from_cache)


def test_dates_may_be_dates_strings_or_timestamps(from_cache: MarketReader):
    frames = [
        from_cache.bars("sz.000001", start, end)
        for start, end in [
            (day(-5), day(-2)),
            (day(-5).isoformat(), day(-2).isoformat()),
            (pd.Timestamp(day(-5)), dt.datetime.combine(day(-2), dt.time(15))),
            (np.datetime64(day(-5)), day(-2)),
        ]
    ]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, frames[0])
    assert len(frames[0]) == 4


# -- fallbacks ----------------------------------------------------------------------------------


def test_an_unreachable_redis_falls_back_to_postgres_and_is_logged_once(
    cached: Cached, from_postgres: MarketReader, caplog
):
    settings = dataclasses.replace(
        cached.settings, redis_url=f"redis://:s3cret@127.0.0.1:{closed_port()}/0"
    )
    caplog.set_level(logging.INFO, logger="stock_pipeline.read")
    with MarketReader(settings, breaker_s=0.05) as reader:
        for _ in range(5):
            pd.testing.assert_frame_equal(
                reader.bars("sh.600000", FIRST_CACHED, adjust="qfq"),
                from_postgres.bars("sh.600000", FIRST_CACHED, adjust="qfq"),
            )
            pd.testing.assert_frame_equal(
                reader.latest("sz.000002"), from_postgres.latest("sz.000002")
            )
            pd.testing.assert_frame_equal(reader.cross_section(), from_postgres.cross_section())
            time.sleep(0.02)  # past the breaker now and then: tried again, not logged again
        assert reader.served == {"redis": 0, "postgres": 20}  # 5 x (bars, latest, day + rows)
    warnings = [r for r in caplog.records if r.name == "stock_pipeline.read"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "does not answer" in warnings[0].getMessage()
    assert "s3cret" not in caplog.text and "redis://:***@127.0.0.1" in caplog.text


def test_a_hung_redis_costs_one_timeout_not_one_per_call(cached: Cached, caplog):
    """A server that accepts connections and never answers: the breaker leaves it alone."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        settings = dataclasses.replace(
            cached.settings, redis_url=f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        )
        caplog.set_level(logging.WARNING, logger="stock_pipeline.read")
        with MarketReader(settings, redis_timeout_s=0.2, breaker_s=60) as reader:
            began = time.perf_counter()
            for _ in range(30):
                reader.latest("sh.600000")
            elapsed = time.perf_counter() - began
    assert elapsed < 0.4 + 1.5, elapsed  # one 0.4 s read timeout, then PostgreSQL only
    assert len([r for r in caplog.records if r.name == "stock_pipeline.read"]) == 1


def test_a_stopped_redis_and_its_return_are_logged_once_each(
    cached: Cached, from_postgres: MarketReader, tmp_path: Path, caplog
):
    from stock_pipeline.embedded.redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        settings = dataclasses.replace(cached.settings, redis_url=server.url())
        refresh(cached.market.dsn, server.url(), settings.cache_prefix)
        caplog.set_level(logging.INFO, logger="stock_pipeline.read")
        with MarketReader(settings, breaker_s=0.1, pointer_ttl_s=0) as reader:
            expected = from_postgres.bars("sh.600000", FIRST_CACHED, adjust="hfq")

            def bars() -> tuple[pd.DataFrame, str]:
                return served_by(
                    reader, lambda: reader.bars("sh.600000", FIRST_CACHED, None, "hfq")
                )

            assert bars()[1] == "redis"
            server.stop()
            for _ in range(10):
                frame, store = bars()
                assert store == "postgres"
                pd.testing.assert_frame_equal(frame, expected)
            server.start()  # its snapshot brings the cache back
            time.sleep(0.15)
            for _ in range(5):
                frame, store = bars()
                assert store == "redis"
                pd.testing.assert_frame_equal(frame, expected)
    finally:
        server.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "stock_pipeline.read"]
    assert len(messages) == 2, messages
    assert "does not answer" in messages[0] and "answers again" in messages[1]


def test_an_unusable_entry_is_read_from_postgres(
    cached: Cached, from_postgres: MarketReader, redis_url: str, caplog
):
    import redis as redis_py

    prefix = fresh_prefix()
    result = refresh(cached.market.dsn, redis_url, prefix)
    client = redis_py.Redis.from_url(redis_url)
    client.set(f"{prefix}:{result.version}:bars:sz.000001", b"not a frame")
    client.close()
    settings = dataclasses.replace(cached.settings, cache_prefix=prefix)
    with MarketReader(settings) as reader:
        for _ in range(3):
            frame, store = served_by(reader, lambda: reader.bars("sz.000001", FIRST_CACHED))
            assert store == "postgres"
        pd.testing.assert_frame_equal(frame, from_postgres.bars("sz.000001", FIRST_CACHED))
        assert served_by(reader, lambda: reader.bars("sh.600000", FIRST_CACHED))[1] == "redis"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not an encoded frame" in warnings[0].getMessage()


def test_a_latest_hash_without_its_packed_row_is_read_from_its_fields(
    cached: Cached, from_postgres: MarketReader, redis_url: str
):
    """Another writer may leave out the packed row: the text fields say the same."""
    import redis as redis_py

    prefix = fresh_prefix()
    result = refresh(cached.market.dsn, redis_url, prefix)
    client = redis_py.Redis.from_url(redis_url)
    for code in ("sh.600000", "sz.000001"):
        assert client.hdel(f"{prefix}:{result.version}:latest:{code}", "_frame") == 1
    client.close()
    with MarketReader(dataclasses.replace(cached.settings, cache_prefix=prefix)) as reader:
        for code in ("sh.600000", "sz.000001"):
            frame, store = served_by(reader, lambda code=code: reader.latest(code))
            assert store == "redis"
            pd.testing.assert_frame_equal(frame, from_postgres.latest(code))


def test_a_cache_of_other_columns_is_not_served(
    cached: Cached, from_postgres: MarketReader, redis_url: str, caplog
):
    """A version written before a column was added to stock_daily: PostgreSQL answers."""
    import redis as redis_py

    from stock_pipeline.cache import codec

    prefix = fresh_prefix()
    result = refresh(cached.market.dsn, redis_url, prefix)
    client = redis_py.Redis.from_url(redis_url)
    key = f"{prefix}:{result.version}:bars:sh.600000"
    older = codec.decode_frame(client.get(key)).drop(columns="pcf_ncf_ttm")
    client.set(key, codec.encode_frame(older))
    client.close()
    with MarketReader(dataclasses.replace(cached.settings, cache_prefix=prefix)) as reader:
        frame, store = served_by(reader, lambda: reader.bars("sh.600000", FIRST_CACHED))
    assert store == "postgres"
    pd.testing.assert_frame_equal(frame, from_postgres.bars("sh.600000", FIRST_CACHED))
    assert "refresh the cache" in caplog.text


# -- threads, the module-level API, lifecycle -------------------------------------------------


def test_many_threads_read_the_same_frames(from_cache: MarketReader, from_postgres: MarketReader):
    requests: list[Callable[[MarketReader], pd.DataFrame]] = [
        lambda r: r.bars("sh.600000", FIRST_CACHED, adjust="qfq"),
        lambda r: r.bars("sz.000001", day(-10), day(-4), "hfq"),
        lambda r: r.bars("sh.600000", day(0), day(30)),  # PostgreSQL
        lambda r: r.latest("sz.000002"),
        lambda r: r.cross_section(columns=["close", "ma5"]),
        lambda r: r.indicators("sz.000001", day(-5)),
    ]
    expected = [request(from_postgres) for request in requests]
    failures: list[str] = []

    def work(seed: int) -> None:
        for i in range(40):
            which = (seed + i) % len(requests)
            try:
                pd.testing.assert_frame_equal(requests[which](from_cache), expected[which])
            except Exception as exc:  # collected: an assert in a thread would be lost
                failures.append(f"request {which}: {exc!r}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]


def test_the_module_functions_share_a_reader_from_the_environment(
    cached: Cached, from_postgres: MarketReader, monkeypatch
):
    settings = cached.settings
    monkeypatch.setenv("STOCK_PIPELINE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("STOCK_PIPELINE_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("STOCK_PIPELINE_CACHE_PREFIX", settings.cache_prefix)
    read.close()
    try:
        pd.testing.assert_frame_equal(
            read.bars("sh.600000", FIRST_CACHED, adjust="qfq"),
            from_postgres.bars("sh.600000", FIRST_CACHED, adjust="qfq"),
        )
        pd.testing.assert_frame_equal(read.latest("sz.000001"), from_postgres.latest("sz.000001"))
        pd.testing.assert_frame_equal(read.cross_section(), from_postgres.cross_section())
        pd.testing.assert_frame_equal(
            read.indicators("sz.000001"), from_postgres.indicators("sz.000001")
        )
        assert read.default_reader() is read.default_reader()
        assert read.default_reader().served["redis"] == 3
    finally:
        read.close()


def test_a_closed_reader_says_so(cached: Cached):
    reader = MarketReader(cached.settings)
    reader.latest("sh.600000")
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(RuntimeError, match="MarketReader is closed"):
        reader.bars("sh.600000", FIRST_CACHED)
