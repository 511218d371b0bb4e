"""The daily core graph through Dagster, end to end: simulator -> real baostock client -> pool ->
raw assets -> ETL -> checks, on real PostgreSQL. Nothing mocked.

Runs go through Dagster's own execution: in process (`execute_in_process`) for most tests, and
through the `dagster asset materialize` CLI where that is what is being tested.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import dagster as dg
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer
from stock_pipeline.calendar import load_calendar
from stock_pipeline.warehouse import migrate
from stock_pipeline_tests.pipeline import (
    DAILY,
    REFERENCE,
    Pipeline,
    check_outcomes,
    materializations,
)

D = dt.date
# Dividend season of the simulator (ex-dates from June on): factors change inside the window.
START, END = D(2024, 6, 24), D(2024, 7, 19)
SIM = SimulatorConfig(seed=11, n_codes=60, end=D(2025, 3, 31))


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SIM) as sim:
        yield sim


@pytest.fixture(scope="module")
def make_pipeline(
    simulator: SimulatorServer, make_database: Callable[[], str], tmp_path_factory
) -> Callable[[], Pipeline]:
    def make() -> Pipeline:
        dsn = make_database()
        migrate.upgrade(dsn)
        return Pipeline(simulator, tmp_path_factory.mktemp("home"), dsn)

    return make


@pytest.fixture(scope="module")
def ranged(make_pipeline: Callable[[], Pipeline]) -> Pipeline:
    """A warehouse with the reference assets and the whole window as one range run."""
    pipeline = make_pipeline()
    assert pipeline.materialize(REFERENCE).success
    result = pipeline.materialize(DAILY, START, END)
    assert result.success
    return pipeline


def test_reference_assets_match_the_simulator(ranged: Pipeline, simulator: SimulatorServer):
    market = simulator.market
    securities = ranged.query(
        "SELECT count(*), count(*) FILTER (WHERE security_type = 1) FROM stocks"
    )
    assert securities[0] == (len(market.listings), len(market.all_codes()))
    calendar_rows = ranged.query(
        "SELECT count(*) FILTER (WHERE is_open), min(cal_date) FROM trade_calendar"
    )[0]
    assert calendar_rows[1] == D(2024, 6, 3)
    # The calendar file definitions read was stored, and it reaches past the bundled calendar.
    stored = load_calendar(ranged.home)
    assert stored.extended and stored.last_day.year >= 2027
    assert stored.is_session(START) and not stored.is_session(D(2024, 10, 1))
    prev = ranged.query("SELECT prev_trade_date FROM trade_calendar WHERE cal_date = '2024-10-08'")
    assert prev == [(D(2024, 9, 30),)]


def test_range_run_stores_what_the_simulator_served(ranged: Pipeline, simulator: SimulatorServer):
    market = simulator.market
    calendar = load_calendar(ranged.home)
    sessions = calendar.sessions_between(START, END)
    listed = {c for day in sessions for c in market.codes(day)}
    stored_codes = {r[0] for r in ranged.query("SELECT DISTINCT code FROM raw_k_daily")}
    assert stored_codes == listed  # the universe: every stock listed on any day of the range
    expected_rows = sum(len(market.daily_bars(c, START, END)) for c in listed)
    assert ranged.query("SELECT count(*) FROM raw_k_daily")[0][0] == expected_rows
    assert ranged.query("SELECT count(*) FROM stock_daily")[0][0] == expected_rows
    days = ranged.query("SELECT count(DISTINCT trade_date) FROM raw_all_stock")[0][0]
    assert days == len(sessions)
    # Values: every bar of a few codes equals the simulator's, and the back-adjust factor makes
    # the unadjusted close equal BaoStock's own back-adjusted close.
    for code in sorted(listed)[:8]:
        bars = market.daily_bars(code, START, END)
        hfq = {b["date"]: b["close"] for b in market.daily_bars(code, START, END, "1")}
        stored = {
            r[0].isoformat(): r[1:]
            for r in ranged.query(
                "SELECT trade_date, close, volume, trade_status, back_adjust_factor "
                "FROM stock_daily WHERE code = %s",
                code,
            )
        }
        assert len(stored) == len(bars)
        for bar in bars:
            close, volume, status, factor = stored[bar["date"]]
            assert status == (bar["tradestatus"] == "1")
            assert close == (float(bar["close"]) if bar["close"] else None)
            assert volume == (int(bar["volume"]) if bar["volume"] else None)
            if close is not None:
                assert close * factor == pytest.approx(float(hfq[bar["date"]]), abs=6e-5)


def test_range_run_reports_requests_checks_and_metadata(make_pipeline: Callable[[], Pipeline]):
    pipeline = make_pipeline()
    assert pipeline.materialize(REFERENCE).success
    result = pipeline.materialize(DAILY, START, END)
    found = materializations(result)
    bars = found["raw_k_daily"]
    assert bars["kline_requests_per_code"] == 1.0  # one k-line request per code, whole range
    assert bars["keys_failed"] == 0 and bars["listed_codes_missing_bars"] == 0
    assert bars["dagster/row_count"] > 0 and "preview" in bars
    assert {"seconds_fetch", "seconds_write", "seconds_wall"} <= set(bars)
    assert found["stock_daily"]["dagster/row_count"] == bars["dagster/row_count"]
    checks = check_outcomes(result)
    assert checks and all(checks.values()), checks
    assert {
        "stock_daily_coverage_check",
        "stock_daily_ohlc_sanity_check",
        "stock_daily_key_uniqueness_check",
        "stock_daily_raw_reconciliation_check",
        "stock_daily_adjust_factor_check",
    } <= set(checks)
    logged = pipeline.query("SELECT dataset, status, codes_failed FROM fetch_log ORDER BY id")
    assert ("raw_k_daily", "ok", 0) in logged


def test_same_range_twice_changes_nothing(ranged: Pipeline):
    before = ranged.checksums()
    assert ranged.materialize(DAILY, START, END).success
    assert ranged.checksums() == before


def test_range_equals_the_days_run_one_by_one(
    ranged: Pipeline, make_pipeline: Callable[[], Pipeline], simulator: SimulatorServer
):
    daily = make_pipeline()
    assert daily.materialize(REFERENCE).success
    factor_requests = []
    for day in load_calendar(daily.home).sessions_between(START, END):
        result = daily.materialize(DAILY, day)
        assert result.success, day
        factor_requests.append(materializations(result)["raw_adjust_factor"])
    assert daily.checksums() == ranged.checksums()
    # After the first day, factors are asked only for codes listed that day for the first time
    # and codes with an ex-right that day: counted here from the simulator's own factors.
    market = simulator.market
    sessions = load_calendar(daily.home).sessions_between(START, END)
    for previous, day, found in zip(sessions, sessions[1:], factor_requests[1:], strict=False):
        new = set(market.codes(day)) - set(market.codes(previous))
        ex_right = {
            c
            for c in set(market.codes(day)) - new
            if any(f.ex_date == day for f in market.adjust_factors(c, day, day))
        }
        assert found["codes_fetched_first_time_or_after_gap"] == len(new), day
        assert found["codes_fetched_for_ex_right"] == len(ex_right), day
        assert found["keys_requested"] == len(new) + len(ex_right), day
    assert sum(m["codes_fetched_for_ex_right"] for m in factor_requests[1:]) > 0
    assert max(m["requests_per_code"] for m in factor_requests[1:]) < 0.5


def test_a_factor_published_after_its_ex_date_is_fetched_again(
    make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
):
    """BaoStock's bars show an ex-right before its factor is published: the code's stock_daily
    row waits (coverage reports it), and the next run fetches the factor and builds it."""
    market = SIM.make_market()
    sessions = load_calendar(None).sessions_between(START, END)
    code, day = next(
        (c, f.ex_date)
        for c in market.codes(START)
        for f in market.adjust_factors(c, sessions[1], END)
    )
    published = market.adjust_factors
    hidden = {"on": True}

    def late(code_: str, start: D, end: D) -> list:
        factors = published(code_, start, end)
        if hidden["on"] and code_ == code:
            return [f for f in factors if f.ex_date < day]
        return factors

    market.adjust_factors = late
    with SimulatorServer(SIM, market=market) as sim:
        dsn = make_database()
        migrate.upgrade(dsn)
        pipeline = Pipeline(sim, tmp_path_factory.mktemp("home"), dsn)
        assert pipeline.materialize(REFERENCE).success
        before = sessions[sessions.index(day) - 1]
        assert pipeline.materialize(DAILY, START, before).success
        first = pipeline.materialize(DAILY, day)
        hidden["on"] = False
        second = pipeline.materialize(DAILY, day)
    factors, daily = (materializations(first)[a] for a in ("raw_adjust_factor", "stock_daily"))
    assert factors["keys_failed"] == 1 and code in factors["failures"]
    assert daily["codes_waiting_for_factors"] == 1 and code in daily["waiting_for_factors"]
    assert not check_outcomes(first)["stock_daily_coverage_check"]
    assert all(check_outcomes(second).values())
    factor = [f for f in published(code, day, day)][0].back
    assert pipeline.query(
        "SELECT back_adjust_factor FROM stock_daily WHERE code = %s AND trade_date = %s", code, day
    ) == [(pytest.approx(factor),)]


def test_a_failed_sync_is_recorded_as_failed(make_pipeline: Callable[[], Pipeline]):
    pipeline = make_pipeline()
    assert pipeline.materialize(REFERENCE).success
    result = pipeline.materialize(["raw_adjust_factor"], START)  # no bars stored yet
    assert not result.success
    status, failures = pipeline.query(
        "SELECT status, failures FROM fetch_log WHERE dataset = 'raw_adjust_factor'"
    )[0]
    assert status == "failed" and "materialize raw_k_daily" in failures


def test_a_listed_code_without_bars_is_reported(
    make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
):
    """BaoStock lists a stock as trading but serves no bars for it: reported, never dropped."""
    market = SimulatorServer(SIM).market
    days = load_calendar(None).sessions_between(START, D(2024, 6, 28))
    victim = next(c for c in market.codes(START) if all(market.is_traded(c, d) for d in days))
    with SimulatorServer(replace(SIM, fault_codes={victim: "empty"})) as sim:
        dsn = make_database()
        migrate.upgrade(dsn)
        pipeline = Pipeline(sim, tmp_path_factory.mktemp("home"), dsn)
        assert pipeline.materialize(REFERENCE).success
        result = pipeline.materialize(DAILY, days[0], days[-1])
    assert result.success  # the coverage check reports, it does not block
    bars = materializations(result)["raw_k_daily"]
    assert bars["keys_failed"] == 0 and bars["listed_codes_missing_bars"] == len(days)
    assert victim in bars["missing_bars"]
    coverage = {e.check_name: e for e in result.get_asset_check_evaluations()}[
        "stock_daily_coverage_check"
    ]
    assert not coverage.passed
    assert coverage.metadata["missing_bars"].value == len(days)
    assert victim in coverage.metadata["examples"].value


def test_a_corrected_source_value_reaches_stock_daily(
    make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
):
    """BaoStock corrects a bar after it was stored: the next run of that day stores the
    correction in raw_k_daily and in stock_daily (nothing is kept because it was there)."""
    from stock_pipeline.baostock.simulator import text

    market = SIM.make_market()
    code = next(c for c in market.codes(START) if market.is_traded(c, START))
    served = market.daily_text
    with SimulatorServer(SIM, market=market) as sim:
        dsn = make_database()
        migrate.upgrade(dsn)
        pipeline = Pipeline(sim, tmp_path_factory.mktemp("home"), dsn)
        assert pipeline.materialize(REFERENCE).success
        assert pipeline.materialize(DAILY, START).success
        sql = "SELECT volume, pe_ttm FROM {} WHERE code = %s AND trade_date = %s"
        before = pipeline.query(sql.format("stock_daily"), code, START)[0]

        def corrected(code_: str, start: D, end: D, *args: Any, **kwargs: Any) -> dict:
            columns = served(code_, start, end, *args, **kwargs)
            if code_ == code:
                rows = columns["volume"].n
                columns = {**columns, "volume": text.constant("123456700", rows)}
                columns["peTTM"] = text.constant("9.876543", rows)
            return columns

        market.daily_text = corrected  # the server's next answers carry the correction
        assert pipeline.materialize(DAILY, START).success
    for table in ("raw_k_daily", "stock_daily"):
        assert pipeline.query(sql.format(table), code, START) == [(123456700, 9.876543)]
    assert before != (123456700, 9.876543)


SQL_CHECKS = (
    "stock_daily_coverage_check",
    "stock_daily_ohlc_sanity_check",
    "stock_daily_key_uniqueness_check",
    "stock_daily_raw_reconciliation_check",
)


def _runcheck_outcomes(pipeline: Pipeline, start: D, end: D) -> dict[str, bool]:
    """Only stock_daily's SQL checks, over [start, end], as `dagster` runs them."""
    defs = pipeline.definitions()
    partitions = defs.get_assets_def("stock_daily").partitions_def
    job = dg.define_asset_job(
        "stock_daily_checks",
        selection=dg.AssetSelection.checks(
            *(dg.AssetCheckKey(dg.AssetKey("stock_daily"), name) for name in SQL_CHECKS)
        ),
        partitions_def=partitions,
    )
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    tags = {
        ASSET_PARTITION_RANGE_START_TAG: start.isoformat(),
        ASSET_PARTITION_RANGE_END_TAG: end.isoformat(),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in pipeline.env.items():
            patch.setenv(name, value)
        result = merged.resolve_job_def("stock_daily_checks").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), tags=tags, raise_on_error=False
        )
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_sql_checks_fail_on_bad_rows(make_pipeline: Callable[[], Pipeline]):
    pipeline = make_pipeline()
    assert pipeline.materialize(REFERENCE).success
    days = (START, D(2024, 6, 28))
    assert pipeline.materialize(DAILY, *days).success
    assert all(_runcheck_outcomes(pipeline, *days).values())
    code, day = pipeline.query(
        "SELECT code, trade_date FROM stock_daily WHERE trade_status AND trade_date = %s "
        "ORDER BY code LIMIT 1",
        START,
    )[0]
    # A bar whose high is below its low; a code spelled two ways; a listed stock's bar gone.
    pipeline.query(
        "UPDATE stock_daily SET high = low - 0.01 WHERE code = %s AND trade_date = %s", code, day
    )
    assert _runcheck_outcomes(pipeline, *days) == {
        "stock_daily_coverage_check": True,
        "stock_daily_ohlc_sanity_check": False,
        "stock_daily_key_uniqueness_check": True,
        "stock_daily_raw_reconciliation_check": True,
    }
    pipeline.query("UPDATE stock_daily SET high = close WHERE code = %s AND trade_date = %s",
                   code, day)  # fmt: skip
    pipeline.query(
        "INSERT INTO stock_daily (code, trade_date) SELECT upper(code), trade_date "
        "FROM stock_daily WHERE code = %s AND trade_date = %s",
        code,
        day,
    )
    found = _runcheck_outcomes(pipeline, *days)
    assert not found["stock_daily_key_uniqueness_check"]
    assert not found["stock_daily_raw_reconciliation_check"]
    pipeline.query("DELETE FROM stock_daily WHERE code <> lower(code)")
    pipeline.query("DELETE FROM stock_daily WHERE code = %s AND trade_date = %s", code, day)
    found = _runcheck_outcomes(pipeline, *days)
    assert not found["stock_daily_coverage_check"]
    assert not found["stock_daily_raw_reconciliation_check"]
    assert found["stock_daily_ohlc_sanity_check"] and found["stock_daily_key_uniqueness_check"]


def test_holidays_have_no_partition(ranged: Pipeline):
    partitions = ranged.definitions().get_assets_def("stock_daily").partitions_def
    keys = set(partitions.get_partition_keys(current_time=dt.datetime(2024, 10, 31)))
    assert "2024-10-01" not in keys and "2024-10-08" in keys and "2024-10-05" not in keys


def test_a_range_ending_on_a_holiday_gets_the_nearest_trading_days(
    ranged: Pipeline, capsys: pytest.CaptureFixture[str]
):
    from stock_pipeline.cli import main

    with pytest.MonkeyPatch.context() as patch:
        for name, value in ranged.env.items():
            patch.setenv(name, value)
        code = main(["demo", "--start", "2024-09-23", "--end", "2024-10-01"])
    assert code == 2
    error = capsys.readouterr().err
    assert "2024-10-01 is not a trading day" in error
    assert "nearest trading days are 2024-09-30 and 2024-10-08" in error


@pytest.mark.slow
def test_dagster_cli_materializes_one_partition_and_a_range(
    make_pipeline: Callable[[], Pipeline], simulator: SimulatorServer
):
    pipeline = make_pipeline()
    one = pipeline.cli("--select", "group:p0 or group:etl", "--partition", "2024-07-01")
    out, _ = one.communicate(timeout=600)
    assert one.returncode == 0, out[-3000:]
    listed = len(simulator.market.codes(D(2024, 7, 1)))
    assert pipeline.query("SELECT count(*) FROM stock_daily WHERE trade_date = '2024-07-01'") == [
        (listed,)
    ]
    rng = pipeline.cli(
        "--select", "group:p0 or group:etl", "--partition-range", "2024-07-02...2024-07-05"
    )
    out, _ = rng.communicate(timeout=600)
    assert rng.returncode == 0, out[-3000:]
    assert pipeline.query(
        "SELECT count(DISTINCT trade_date) FROM stock_daily WHERE trade_date > '2024-07-01'"
    ) == [(4,)]


@pytest.mark.slow
def test_a_run_killed_mid_range_reruns_to_the_clean_result(
    ranged: Pipeline, make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
):
    """SIGKILL to the run's whole process tree in the middle of the range, then the same range
    again: the warehouse ends up identical to a clean run's (and keeps all its indexes)."""
    slow = replace(SIM, latency_ms=100)  # the same market, slower: time to kill it mid-way
    with SimulatorServer(slow) as sim:
        dsn = make_database()
        migrate.upgrade(dsn)
        pipeline = Pipeline(sim, tmp_path_factory.mktemp("home"), dsn)
        assert pipeline.materialize(REFERENCE).success
        # Small batches and index management even for this short range: a kill lands mid-write
        # and leaves dropped indexes behind for the rerun to repair.
        extra = {
            "STOCK_PIPELINE_BAOSTOCK_BATCH_SIZE": "5",
            "STOCK_PIPELINE_BULK_LOAD_MIN_DAYS": "2",
        }
        run = pipeline.cli("--select", "group:p0 or group:etl", "--partition-range",
                           f"{START}...{END}", extra_env=extra)  # fmt: skip
        deadline = time.monotonic() + 300
        while pipeline.query("SELECT count(*) FROM raw_k_daily")[0][0] == 0:
            assert run.poll() is None, run.communicate()[0][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        written = pipeline.query("SELECT count(*) FROM raw_k_daily")[0][0]
        assert 0 < written < ranged.query("SELECT count(*) FROM raw_k_daily")[0][0]
        again = pipeline.cli("--select", "group:p0 or group:etl", "--partition-range",
                             f"{START}...{END}", extra_env=extra)  # fmt: skip
        out, _ = again.communicate(timeout=600)
        assert again.returncode == 0, out[-3000:]
    assert pipeline.checksums() == ranged.checksums()
    assert pipeline.query("SELECT count(*) FROM index_definitions") == [(0,)]
    indexes = {r[0] for r in pipeline.query("SELECT indexname FROM pg_indexes")}
    assert {"ix_stock_daily_trade_date_code", "ix_raw_k_daily_trade_date_code"} <= indexes
