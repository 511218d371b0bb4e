"""The indicator layer through Dagster, end to end on the simulator's market: technical_daily
from stock_daily, range runs against day-by-day runs against a full recompute, its checks, and
its refusal to continue from a hole. Real PostgreSQL, the real baostock client, nothing mocked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pytest

from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer
from stock_pipeline.compute.indicators import INDICATORS, STATE_COLUMNS, WARM_UP
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
GRAPH = [*DAILY, "technical_daily"]
TECHNICAL_CHECKS = {"technical_daily_rows_check", "technical_daily_warm_up_check"}


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
        home = tmp_path_factory.mktemp("home")
        pipeline = Pipeline(simulator, home, dsn, STOCK_PIPELINE_START_DATE=FIRST.isoformat())
        assert pipeline.materialize(REFERENCE).success
        return pipeline

    return make


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
    assert TECHNICAL_CHECKS <= set(outcome) and all(outcome[c] for c in TECHNICAL_CHECKS)
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
