"""The indicator layer through Dagster, end to end on the simulator's market: technical_daily
from stock_daily, range runs against day-by-day runs against a full recompute, its checks, and
its refusal to continue from a hole. Real PostgreSQL, the real baostock client, nothing mocked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import baostock
import dagster as dg
import numpy as np
import pandas as pd
import pytest

from stock_pipeline.assets import runtime
from stock_pipeline.assets.indicators import TECHNICAL_DAILY_CHECKS
from stock_pipeline.assets.indicators.build import continuity_problem
from stock_pipeline.baostock.endpoint import point_client_at
from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer
from stock_pipeline.compute.indicators import INDICATORS, STATE_COLUMNS, WARM_UP
from stock_pipeline.embedded.redis import EmbeddedRedis
from stock_pipeline.read import MarketReader
from stock_pipeline.resources import WarehouseResource
from stock_pipeline.settings import Settings
from stock_pipeline.warehouse import migrate
from stock_pipeline_tests.pipeline import (
    DAILY,
    REFERENCE,
    Pipeline,
    check_outcomes,
    materializations,
)

D = dt.date
# Eighteen months: MA250 warms up in 2024; the split sits before the 2024 dividend season.
FIRST, SPLIT, LAST = D(2023, 1, 3), D(2024, 6, 28), D(2024, 7, 19)
ONE_BY_ONE = (D(2024, 7, 1), D(2024, 7, 2), D(2024, 7, 3))
SIM = SimulatorConfig(seed=5, n_codes=40, end=D(2024, 12, 31))
GRAPH = [*DAILY, "technical_daily", "redis_cache"]
TECHNICAL_CHECKS = {"technical_daily_rows_check", "technical_daily_warm_up_check"}


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SIM) as sim:
        yield sim


@pytest.fixture(scope="module")
def make_pipeline(
    simulator: SimulatorServer, make_database: Callable[[], str], redis_url: str, tmp_path_factory
) -> Callable[..., Pipeline]:
    def make(redis: str = redis_url) -> Pipeline:
        dsn = make_database()
        migrate.upgrade(dsn)
        home = tmp_path_factory.mktemp("home")
        pipeline = Pipeline(
            simulator,
            home,
            dsn,
            STOCK_PIPELINE_START_DATE=FIRST.isoformat(),
            STOCK_PIPELINE_REDIS_URL=redis,
            STOCK_PIPELINE_CACHE_PREFIX=f"test_{uuid.uuid4().hex[:8]}",  # its own keys
        )
        assert pipeline.materialize(REFERENCE).success
        return pipeline

    return make


def reader_of(pipeline: Pipeline, **options: Any) -> MarketReader:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in pipeline.env.items():
            patch.setenv(name, value)
        return MarketReader(Settings.from_env(), **options)


def technical_frame(pipeline: Pipeline, until: D = LAST) -> pd.DataFrame:
    columns = ["code", "trade_date", *INDICATORS, *STATE_COLUMNS]
    rows = pipeline.query(
        f"SELECT {', '.join(columns)} FROM technical_daily WHERE trade_date <= %s "
        "ORDER BY code, trade_date",
        until,
    )
    frame = pd.DataFrame(rows, columns=columns)
    frame["trade_date"] = pd.to_datetime(frame["trade_date"])
    return frame.astype({name: np.float64 for name in columns[2:]})


def assert_same_indicators(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-9) -> None:
    assert a[["code", "trade_date"]].equals(b[["code", "trade_date"]])
    for name in (*INDICATORS, *STATE_COLUMNS):
        x, y = a[name].to_numpy(np.float64), b[name].to_numpy(np.float64)
        assert np.array_equal(np.isnan(x), np.isnan(y)), name
        scale = np.maximum(np.abs(x), 1e-300)
        worst = np.nanmax(np.abs(x - y) / scale, initial=0.0)
        assert worst <= rtol, f"{name}: relative difference {worst:.2e}"


@pytest.fixture(scope="module")
def full(make_pipeline: Callable[[], Pipeline]) -> tuple[Pipeline, dict]:
    """The whole history computed in one range run (a full recompute)."""
    pipeline = make_pipeline()
    result = pipeline.materialize(GRAPH, FIRST, LAST)
    assert result.success
    return pipeline, {"materializations": materializations(result), **check_outcomes(result)}


def test_full_range_covers_every_bar_and_passes_its_checks(full: tuple[Pipeline, dict]):
    pipeline, outcome = full
    assert set(outcome) >= TECHNICAL_CHECKS and all(outcome[c] for c in TECHNICAL_CHECKS)
    found = outcome["materializations"]["technical_daily"]
    bars = pipeline.query("SELECT count(*) FROM stock_daily")[0][0]
    assert found["dagster/row_count"] == bars > 10_000
    assert {"seconds_read", "seconds_compute", "seconds_write", "preview"} <= set(found)
    # Warm-up: the last day has every indicator for codes that traded 250 days or more.
    frame = technical_frame(pipeline)
    last = frame[(frame["trade_date"] == pd.Timestamp(LAST)) & (frame["traded_bars"] >= 250)]
    assert len(last) > 10 and not last[list(INDICATORS)].isna().any().any()
    early = frame[frame["traded_bars"] == 5]
    assert early["ma5"].notna().all() and early["ma10"].isna().all()
    assert WARM_UP["ma250"] == 250


def test_range_day_by_day_and_full_recompute_agree(
    full: tuple[Pipeline, dict], make_pipeline: Callable[[], Pipeline]
):
    reference, _ = full
    pipeline = make_pipeline()
    assert pipeline.materialize(GRAPH, FIRST, SPLIT).success
    before = technical_frame(pipeline, SPLIT)
    for day in ONE_BY_ONE:
        assert pipeline.materialize(GRAPH, day).success, day
    assert pipeline.materialize(GRAPH, D(2024, 7, 4), LAST).success
    # New ex-rights arrived after the split: stock_daily's factors changed after it ...
    ex_rights = pipeline.query(
        "SELECT count(*) FROM raw_adjust_factor WHERE divid_operate_date BETWEEN %s AND %s",
        D(2024, 7, 1),
        LAST,
    )[0][0]
    assert ex_rights > 0
    # ... and no indicator of a day before them moved: back-adjusted history is stable.
    assert_same_indicators(technical_frame(pipeline, SPLIT), before, rtol=0.0)
    assert_same_indicators(technical_frame(pipeline), technical_frame(reference))


def test_a_range_on_top_of_a_hole_fails_and_writes_nothing(
    make_pipeline: Callable[[], Pipeline],
):
    pipeline = make_pipeline()
    assert pipeline.materialize(DAILY, FIRST, D(2023, 3, 31)).success
    result = pipeline.materialize(["technical_daily"], D(2023, 3, 1), D(2023, 3, 31))
    assert not result.success
    failures = [e.step_failure_data.error for e in result.get_step_failure_events()]
    message = " ".join(f.message for f in failures if f is not None)
    assert "materialize technical_daily from 2023-01-03 first" in message, message
    assert pipeline.query("SELECT count(*) FROM technical_daily")[0][0] == 0
    # Starting where it says works.
    assert pipeline.materialize(["technical_daily"], FIRST, D(2023, 3, 31)).success
    # A day stock_daily loses (or gains) after the indicators were computed: the next range
    # names it as the day to recompute from.
    assert pipeline.materialize(DAILY, D(2023, 4, 3)).success
    code = pipeline.query(
        "SELECT code FROM stock_daily WHERE trade_date = '2023-02-15' AND close IS NOT NULL "
        "ORDER BY code LIMIT 1"
    )[0][0]
    pipeline.query("DELETE FROM stock_daily WHERE code = %s AND trade_date = '2023-02-15'", code)
    result = pipeline.materialize(["technical_daily"], D(2023, 4, 3))
    assert not result.success
    message = " ".join(e.step_failure_data.error.message for e in result.get_step_failure_events())
    assert "materialize technical_daily again from 2023-02-15" in message, message
    assert pipeline.materialize(["technical_daily"], D(2023, 2, 15), D(2023, 4, 3)).success


def test_cache_holds_the_latest_day_and_serves_the_warehouse_frames(full: tuple[Pipeline, dict]):
    pipeline, outcome = full
    assert outcome["redis_cache_version_check"]
    cache = outcome["materializations"]["redis_cache"]
    assert cache["cache_day"] == LAST.isoformat() and cache["cache_codes"] > 30
    codes = [r[0] for r in pipeline.query("SELECT DISTINCT code FROM stock_daily ORDER BY 1")]
    with reader_of(pipeline) as cached, reader_of(pipeline, use_cache=False) as warehouse:
        for code in codes:
            pd.testing.assert_frame_equal(cached.latest(code), warehouse.latest(code))
            recent = (D(2024, 6, 3), LAST)
            for adjust in ("none", "hfq", "qfq"):
                pd.testing.assert_frame_equal(
                    cached.bars(code, *recent, adjust=adjust),
                    warehouse.bars(code, *recent, adjust=adjust),
                )
        pd.testing.assert_frame_equal(cached.cross_section(), warehouse.cross_section())
        assert cached.served["redis"] > 0


def _source_bars(code: str, adjustflag: str) -> pd.DataFrame:
    fields = "date,open,high,low,close,preclose"
    result = baostock.query_history_k_data_plus(
        code, fields, FIRST.isoformat(), LAST.isoformat(), "d", adjustflag
    )
    assert result.error_code == "0", result.error_msg
    rows = []
    while result.next():
        rows.append(result.get_row_data())
    frame = pd.DataFrame(rows, columns=fields.split(",")).replace("", np.nan)
    frame.index = pd.to_datetime(frame.pop("date"))
    return frame.astype(np.float64).rename(columns={"preclose": "pre_close"})


def test_adjusted_bars_equal_baostocks_own(full: tuple[Pipeline, dict], simulator: SimulatorServer):
    """hfq and qfq from stock_daily's factor equal BaoStock's adjusted series (adjustflag 1 and
    2) within its rounding (4 decimals of price, 6 of the factor)."""
    pipeline, _ = full
    market = simulator.market
    # Codes with ex-rights inside the range and none after it (BaoStock's qfq is relative to
    # the latest factor it knows; the warehouse knows factors through LAST).
    codes = [
        code
        for (code,) in pipeline.query(
            "SELECT DISTINCT code FROM raw_adjust_factor WHERE divid_operate_date BETWEEN %s "
            "AND %s ORDER BY 1",
            FIRST,
            LAST,
        )
        if not market.adjust_factors(code, LAST + dt.timedelta(days=1), SIM.end)
    ]
    assert len(codes) >= 5
    point_client_at(simulator.host, simulator.port)
    assert baostock.login().error_code == "0"
    try:
        with reader_of(pipeline, use_cache=False) as reader:
            for code in codes:
                for adjust, flag in (("hfq", "1"), ("qfq", "2")):
                    ours = reader.bars(code, FIRST, LAST, adjust=adjust)
                    theirs = _source_bars(code, flag)
                    columns = ["open", "high", "low", "close", "pre_close"]
                    mine = ours.loc[theirs.index, columns].to_numpy(np.float64)
                    source = theirs[columns].to_numpy(np.float64)
                    assert np.array_equal(np.isnan(mine), np.isnan(source)), (code, adjust)
                    np.testing.assert_allclose(mine, source, rtol=1e-6, atol=1.5e-4)
    finally:
        baostock.logout()


def test_redis_down_fails_only_the_cache_and_reads_fall_back(
    make_pipeline: Callable[..., Pipeline], tmp_path_factory, caplog: pytest.LogCaptureFixture
):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        pipeline = make_pipeline(server.url())
        assert pipeline.materialize(GRAPH, FIRST, D(2023, 2, 28)).success
        codes = [r[0] for r in pipeline.query("SELECT DISTINCT code FROM stock_daily ORDER BY 1")]
        with reader_of(pipeline) as reader:
            before = {code: reader.latest(code) for code in codes}
            assert reader.served["redis"] == len(codes)
    finally:
        server.stop()
    result = pipeline.materialize(GRAPH, D(2023, 3, 1))
    assert not result.success
    done = materializations(result)
    assert set(done) == {*DAILY, "technical_daily"}  # the warehouse went on
    failed = {e.step_key: e.step_failure_data.error for e in result.get_step_failure_events()}
    assert set(failed) == {"redis_cache"}
    message = failed["redis_cache"].message
    assert "cannot reach the Redis cache" in message and server.url().split("@")[-1] in message, (
        message
    )
    assert check_outcomes(result)["technical_daily_rows_check"]
    caplog.set_level(logging.WARNING, logger="stock_pipeline.read")
    with reader_of(pipeline) as reader, reader_of(pipeline, use_cache=False) as warehouse:
        for code in codes:
            pd.testing.assert_frame_equal(reader.latest(code), warehouse.latest(code))
            assert reader.latest(code).columns.equals(before[code].columns)
        assert reader.served["redis"] == 0 and reader.served["postgres"] >= len(codes)
    down = [r for r in caplog.records if r.name == "stock_pipeline.read"]
    assert len(down) == 1, [r.getMessage() for r in down]


def test_technical_daily_checks_fail_on_bad_rows(make_pipeline: Callable[..., Pipeline]):
    pipeline = make_pipeline()
    assert pipeline.materialize([*DAILY, "technical_daily"], FIRST, D(2023, 2, 28)).success
    window = runtime.Window(D(2023, 2, 1), D(2023, 2, 28), ())
    resource = WarehouseResource(database_url=pipeline.dsn)

    def outcomes() -> dict[str, dg.AssetCheckResult]:
        return {
            spec.name: asyncio.run(spec.evaluate(window, resource))
            for spec in TECHNICAL_DAILY_CHECKS
        }

    assert all(r.passed for r in outcomes().values())
    # A whole day missing from stock_daily just before a range (its run failed): refused. (The
    # next day's stock_daily is written; its factor check reads the gap as missed ex-rights.)
    pipeline.materialize(DAILY, D(2023, 3, 2))
    assert pipeline.query("SELECT count(*) FROM stock_daily WHERE trade_date = '2023-03-02'")[0][0]
    skipped = pipeline.materialize(["technical_daily"], D(2023, 3, 2))
    assert not skipped.success
    message = " ".join(e.step_failure_data.error.message for e in skipped.get_step_failure_events())
    assert "stock_daily has no rows on 2023-03-01" in message, message
    code, day = pipeline.query(
        "SELECT code, trade_date FROM technical_daily WHERE trade_date = '2023-02-15' "
        "AND traded_bars >= 20 ORDER BY code LIMIT 1"
    )[0]
    pipeline.query(
        "UPDATE technical_daily SET ma5 = NULL, traded_bars = traded_bars + 1 "
        "WHERE code = %s AND trade_date = %s",
        code,
        day,
    )
    pipeline.query(
        "DELETE FROM technical_daily WHERE trade_date = '2023-02-20' AND code = %s", code
    )
    found = outcomes()
    warm_up = found["technical_daily_warm_up_check"]
    assert not warm_up.passed and "ma5" in (warm_up.description or "")
    pipeline.query(
        "UPDATE technical_daily SET traded_bars = traded_bars + 1 "
        "WHERE code = %s AND trade_date > %s",
        code,
        day,
    )
    broken = outcomes()["technical_daily_warm_up_check"]
    assert broken.metadata["codes_with_broken_bar_counts"].value == 1
    rows = found["technical_daily_rows_check"]
    assert not rows.passed and "1 days" in (rows.description or "")


def test_continuity_problems_name_the_day_to_start_from():
    day = D(2023, 3, 1)
    window = runtime.Window(day, day, (day,))

    def row(code: str, last_bar, last_state, traded_bars=10, traded_before=10, **more):
        return {"code": code, "last_bar": last_bar, "last_state": last_state,
                "traded_bars": traded_bars, "traded_before": traded_before,
                "first_missing": more.get("first_missing"), "first_bar": D(2023, 1, 3)}  # fmt: skip

    fine = row("sh.600000", D(2023, 2, 28), D(2023, 2, 28))
    new_listing = row("sh.600001", None, None, None, 0)
    assert continuity_problem([fine, new_listing], window) is None
    hole = row("sh.600002", D(2023, 2, 28), D(2023, 2, 10), first_missing=D(2023, 2, 13))
    lost_last_day = row("sh.600003", D(2023, 2, 27), D(2023, 2, 28))
    lost_everything = row("sh.600004", None, D(2023, 2, 28))
    recounted = row("sh.600005", D(2023, 2, 28), D(2023, 2, 28), traded_before=9)
    message = continuity_problem(
        [fine, hole, lost_last_day, lost_everything, recounted], window, D(2023, 2, 6)
    )
    assert message is not None
    assert "1 codes have stock_daily days before 2023-03-01" in message
    assert "materialize technical_daily from 2023-02-13 first" in message
    assert "history of 3 codes" in message and "again from 2023-02-06" in message
    assert "None" not in message
