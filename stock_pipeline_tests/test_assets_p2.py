"""P2 (corporate actions and reports) through Dagster, end to end: simulator -> real baostock
client -> pool -> raw assets -> business tables -> checks, on real PostgreSQL. Nothing mocked.

The P0 daily graph runs over the simulator's dividend season (ex-dates in June and July), so
the P0 x P2 cross-check compares real ex-dates with real factor changes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer, reports
from stock_pipeline.compute.corporate import FetchedYears, factor_agreement, split_bad_rows
from stock_pipeline.warehouse import migrate
from stock_pipeline_tests.pipeline import (
    DAILY,
    REFERENCE,
    Pipeline,
    check_outcomes,
    materializations,
)

D = dt.date
# P0 window: the simulator's dividend season (ex-dates from June 1 to the end of July).
START, END = D(2024, 6, 3), D(2024, 7, 31)
# P2 years (partition keys are their first days): plans announced in 2023 and 2024, so every
# ex-date of 2024 is known and the factor changes of 2024 are all compared.
FIRST_YEAR, LAST_YEAR = D(2023, 1, 1), D(2024, 1, 1)
SIM = SimulatorConfig(seed=11, n_codes=40, end=D(2025, 3, 31))
# Year partitions start with the start date's year. One BaoStock session: each raw step forks
# its pool's workers, which costs more than the few requests of 40 stocks.
ENV = {"STOCK_PIPELINE_START_DATE": "2023-01-03", "STOCK_PIPELINE_BAOSTOCK_CONCURRENCY": "1"}
STOCK_BASIC = ["raw_stock_basic"]
RAW = ["raw_dividend", "raw_performance_express", "raw_forecast"]
BUSINESS = ["corporate_actions", "performance_express", "earnings_forecast"]
P2 = RAW + BUSINESS
P2_TABLES = {
    "raw_dividend": "code, report_year, divid_plan_announce_date",
    "raw_performance_express": "code, performance_exp_stat_date, performance_exp_pub_date",
    "raw_forecast": "code, profit_forcast_exp_stat_date, profit_forcast_exp_pub_date",
    "corporate_actions": "code, announce_date",
    "performance_express": "code, stat_date, pub_date",
    "earnings_forecast": "code, stat_date, pub_date",
}
CROSS_CHECK = "corporate_actions_ex_date_factor_check"


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SIM) as sim:
        yield sim


@pytest.fixture(scope="module")
def make_pipeline(
    simulator: SimulatorServer, make_database: Callable[[], str], tmp_path_factory
) -> Callable[..., Pipeline]:
    def make(reference: list[str] = REFERENCE) -> Pipeline:
        dsn = make_database()
        migrate.upgrade(dsn)
        pipeline = Pipeline(simulator, tmp_path_factory.mktemp("home"), dsn, **ENV)
        assert pipeline.materialize(reference).success
        return pipeline

    return make


@pytest.fixture(scope="module")
def ranged(make_pipeline: Callable[..., Pipeline]) -> tuple[Pipeline, dg.ExecuteInProcessResult]:
    """The P0 graph over the dividend season, then P2 over both years as one range run."""
    pipeline = make_pipeline()
    assert pipeline.materialize(DAILY, START, END).success
    result = pipeline.materialize(P2, FIRST_YEAR, LAST_YEAR)
    assert result.success
    return pipeline, result


def _day(text: str) -> D | None:
    return D.fromisoformat(text) if text else None


def _number(text: str) -> float | None:
    return float(text) if text else None


def _listed_span(listing: Any, first: D, last: D) -> tuple[D, D]:
    since = max(first, D(listing.ipo.year, 1, 1))
    return since, min(last, D(listing.out.year, 12, 31)) if listing.out else last


def test_raw_tables_hold_what_the_simulator_served(ranged, simulator: SimulatorServer):
    pipeline, _ = ranged
    market = simulator.market
    stocks = market.all_codes()
    plans = {
        (c, y, _day(r[3]), _day(r[6]), _number(r[9]), _number(r[11]), _number(r[13]))
        for y in (2023, 2024)
        for c in stocks
        for r in reports.dividend_rows(market, c, y, "report")
    }
    stored = set(
        pipeline.query(
            "SELECT code, report_year, divid_plan_announce_date, divid_operate_date, "
            "divid_cash_ps_before_tax, divid_stocks_ps, divid_reserve_to_stock_ps "
            "FROM raw_dividend"
        )
    )
    assert plans and stored == plans
    # Reports are asked for the years a stock is listed in (as the year runs would ask them).
    spans = {c: _listed_span(market.listings[c], D(2023, 1, 1), D(2024, 12, 31)) for c in stocks}
    spans = {c: span for c, span in spans.items() if span[0] <= span[1]}
    express = {
        (r[0], _day(r[1]), _day(r[2]), _number(r[8]))
        for c, span in spans.items()
        for r in reports.express_rows(market, c, *span)
    }
    assert express and express == set(
        pipeline.query(
            "SELECT code, performance_exp_pub_date, performance_exp_stat_date, "
            "performance_express_eps_diluted FROM raw_performance_express"
        )
    )
    forecasts = {
        (r[0], _day(r[1]), _day(r[2]), r[3], _number(r[5]))
        for c, span in spans.items()
        for r in reports.forecast_rows(market, c, *span)
    }
    assert forecasts and forecasts == set(
        pipeline.query(
            "SELECT code, profit_forcast_exp_pub_date, profit_forcast_exp_stat_date, "
            "profit_forcast_type, profit_forcast_chg_pct_up FROM raw_forecast"
        )
    )


def test_business_tables_reconcile_with_raw_and_report_metadata(ranged):
    pipeline, result = ranged
    mapped = {
        "corporate_actions": (
            "SELECT code, divid_plan_announce_date, divid_regist_date, divid_operate_date, "
            "divid_pay_date, divid_stock_market_date, divid_cash_ps_before_tax, divid_stocks_ps, "
            "divid_reserve_to_stock_ps FROM raw_dividend",
            "SELECT code, announce_date, record_date, ex_date, pay_date, listing_date, "
            "cash_per_share, bonus_shares_per_share, reserve_to_stock_per_share "
            "FROM corporate_actions",
        ),
        "performance_express": (
            "SELECT code, performance_exp_stat_date, performance_exp_pub_date, "
            "performance_express_total_asset, performance_express_roe_wa, "
            "performance_express_op_yoy FROM raw_performance_express",
            "SELECT code, stat_date, pub_date, total_asset, roe_wa, op_yoy "
            "FROM performance_express",
        ),
        "earnings_forecast": (
            "SELECT code, profit_forcast_exp_stat_date, profit_forcast_exp_pub_date, "
            "profit_forcast_type, profit_forcast_abstract, profit_forcast_chg_pct_dwn "
            "FROM raw_forecast",
            "SELECT code, stat_date, pub_date, forecast_type, abstract, chg_pct_down "
            "FROM earnings_forecast",
        ),
    }
    for table, (raw, business) in mapped.items():
        assert pipeline.query(f"SELECT count(*) FROM ({raw}) r")[0][0] > 0, table
        differ = pipeline.query(
            f"SELECT count(*) FROM (({raw} EXCEPT ALL {business}) "
            f"UNION ALL ({business} EXCEPT ALL {raw})) d"
        )
        assert differ == [(0,)], table
    checks = check_outcomes(result)
    assert all(checks.values()), checks
    assert len(checks) == 9
    found = materializations(result)
    for name in P2:
        metadata = found[name]
        assert metadata["dagster/row_count"] > 0, name
        assert {"seconds_wall", "window", "rows_written"} <= set(metadata), name
    for name in RAW:
        metadata = found[name]
        assert metadata["keys_failed"] == 0 and metadata["bad_rows"] == 0, name
        assert metadata["requests_per_key"] == 1.0, name  # one message per request, no pages
        assert {"seconds_fetch", "seconds_write", "baostock_requests"} <= set(metadata)
    for name in BUSINESS:
        assert {"seconds_read", "seconds_transform", "seconds_write"} <= set(found[name])
    # One dividend request per stock listed in each year; one express / forecast request per
    # stock listed in the range, whatever its length.
    dividend = found["raw_dividend"]
    assert dividend["keys_requested"] == sum(dividend["stocks_listed_per_year"].values())
    for name in ("raw_performance_express", "raw_forecast"):
        assert found[name]["keys_requested"] == found[name]["stocks_listed"]


def _cross_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == CROSS_CHECK]
    return evaluation


def _metadata(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def test_cross_check_agrees_with_the_simulators_own_ex_dates(ranged, simulator):
    pipeline, result = ranged
    evaluation = _cross_check(result)
    found = _metadata(evaluation)
    assert evaluation.passed, found
    # Ex-dates of the run's years the check can compare: after the code's first stored bar, up
    # to its last one (those of 2023 and of early June 2024 are outside stock_daily).
    first_last = {
        code: (first, last)
        for code, first, last in pipeline.query(
            "SELECT code, min(trade_date), max(trade_date) FROM stock_daily GROUP BY code"
        )
    }
    market = simulator.market
    ex_dates = [
        (a.code, a.ex_date)
        for code in market.all_codes()
        for a in market.corporate_actions(code)
        if a.plan_date.year in (2023, 2024) and a.ex_date.year in (2023, 2024)
    ]
    compared = [
        (c, e) for c, e in ex_dates if c in first_last and first_last[c][0] < e <= first_last[c][1]
    ]
    assert len(compared) >= 5
    assert found["matched_ex_dates"] == len(compared)
    assert found["ex_dates_outside_stock_daily"] == len(ex_dates) - len(compared) > 0
    # The simulator moves the factor on every ex-date and on no other day.
    assert found["matched_factor_changes"] == len(compared)
    assert found["only_in_p2"] == found["only_in_p0"] == found["unverifiable_factor_changes"] == 0
    assert found["p2_years_held"] == [2023, 2024]


def test_range_equals_the_years_run_one_by_one_and_a_rerun_changes_nothing(ranged, make_pipeline):
    pipeline, _ = ranged
    yearly = make_pipeline(STOCK_BASIC)  # all P2 reads of P0
    for year in (FIRST_YEAR, LAST_YEAR):
        assert yearly.materialize(P2, year).success, year
    assert yearly.checksums(P2_TABLES) == pipeline.checksums(P2_TABLES)
    again = yearly.materialize(P2, FIRST_YEAR, LAST_YEAR)
    assert again.success and all(check_outcomes(again).values())
    assert yearly.checksums(P2_TABLES) == pipeline.checksums(P2_TABLES)


def test_an_empty_plan_date_is_reported_and_the_rest_stored(
    ranged, make_pipeline, monkeypatch: pytest.MonkeyPatch
):
    """BaoStock sends a plan without its announcement date (the key): that row is reported as
    bad, every other row of the reply and of the year is stored."""
    pipeline, _ = ranged
    expected = pipeline.query("SELECT count(*) FROM raw_dividend WHERE report_year = 2024")[0][0]
    code = pipeline.query("SELECT min(code) FROM raw_dividend WHERE report_year = 2024")[0][0]
    served = reports.dividend_rows

    def undated(market, code_: str, year: int, year_type: str) -> list[list[str]]:
        rows = served(market, code_, year, year_type)
        return [[*r[:3], "", *r[4:]] if code_ == code else r for r in rows]

    monkeypatch.setattr(reports, "dividend_rows", undated)
    other = make_pipeline(STOCK_BASIC)
    # 2025 too: the simulator's market ends in March 2025, before any plan of 2025 (a year
    # without a plan is replaced by nothing).
    result = other.materialize(["raw_dividend"], LAST_YEAR, D(2025, 1, 1))
    assert result.success
    found = materializations(result)["raw_dividend"]
    assert found["bad_rows"] == 1 and found["keys_failed"] == 0
    assert "divid_plan_announce_date is empty" in found["bad_rows_examples"]
    assert code in found["bad_rows_examples"]
    stored = other.query(
        "SELECT count(*), count(*) FILTER (WHERE code = %s) FROM raw_dividend", code
    )
    assert stored == [(expected - 1, 0)]
    assert found["stocks_listed_per_year"]["2025"] > 0


def _rerun_cross_check(pipeline: Pipeline) -> tuple[bool, dict[str, Any], str]:
    result = pipeline.materialize(["corporate_actions"], LAST_YEAR)
    evaluation = _cross_check(result)
    return evaluation.passed, _metadata(evaluation), evaluation.description or ""


@pytest.fixture
def restored_stock_daily(ranged) -> Iterator[Pipeline]:
    """The ranged warehouse, its stock_daily factors put back after the test corrupts them."""
    pipeline, _ = ranged
    pipeline.query(
        "CREATE TABLE saved_factors AS SELECT code, trade_date, back_adjust_factor FROM stock_daily"
    )
    try:
        yield pipeline
    finally:
        pipeline.query(
            "UPDATE stock_daily d SET back_adjust_factor = s.back_adjust_factor "
            "FROM saved_factors s WHERE s.code = d.code AND s.trade_date = d.trade_date"
        )
        pipeline.query("DROP TABLE saved_factors")


def test_cross_check_fails_on_a_factor_change_without_an_ex_date(restored_stock_daily):
    pipeline = restored_stock_daily
    # A code without an ex-date in July: its factor jumps by 1% from mid-July on.
    code = pipeline.query(
        "SELECT min(code) FROM stock_daily WHERE code NOT IN (SELECT code FROM corporate_actions "
        "WHERE ex_date >= '2024-07-01')"
    )[0][0]
    day = D(2024, 7, 15)
    pipeline.query(
        "UPDATE stock_daily SET back_adjust_factor = back_adjust_factor * 1.01 "
        "WHERE code = %s AND trade_date >= %s",
        code,
        day,
    )
    passed, found, description = _rerun_cross_check(pipeline)
    assert not passed
    assert found["only_in_p0"] == 1 and found["only_in_p2"] == 0
    assert f"{code} {day}" in description
    assert code in found["only_in_p0_examples"]


def test_cross_check_fails_on_an_ex_date_without_a_factor_change(restored_stock_daily):
    pipeline = restored_stock_daily
    # The latest compared ex-date: its factor change removed (the old factor kept from it on).
    code, ex_date, previous = pipeline.query(
        "SELECT a.code, a.ex_date, (SELECT back_adjust_factor FROM stock_daily s "
        "  WHERE s.code = a.code AND s.trade_date < a.ex_date ORDER BY trade_date DESC LIMIT 1) "
        "FROM corporate_actions a WHERE a.ex_date > %s AND a.ex_date <= %s "
        "ORDER BY a.ex_date DESC, a.code LIMIT 1",
        START,
        END,
    )[0]
    pipeline.query(
        "UPDATE stock_daily SET back_adjust_factor = %s WHERE code = %s AND trade_date >= %s",
        previous,
        code,
        ex_date,
    )
    passed, found, description = _rerun_cross_check(pipeline)
    assert not passed
    assert found["only_in_p2"] == 1 and found["only_in_p0"] == 0
    assert f"{code} {ex_date}" in description


def test_cross_check_passes_again_once_restored(ranged):
    pipeline, _ = ranged
    passed, found, _ = _rerun_cross_check(pipeline)
    assert passed and found["matched_ex_dates"] > 0


@pytest.mark.slow
def test_dagster_cli_materializes_a_range_of_years(ranged, make_pipeline):
    pipeline, _ = ranged
    cli = make_pipeline(STOCK_BASIC)
    run = cli.cli("--select", "group:p2", "--partition-range", f"{FIRST_YEAR}...{LAST_YEAR}")
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out[-3000:]
    evaluations = [line for line in out.splitlines() if "ASSET_CHECK_EVALUATION" in line]
    assert len(evaluations) == 9 and all(e.endswith("passed.") for e in evaluations), evaluations
    assert cli.checksums(P2_TABLES) == pipeline.checksums(P2_TABLES)


# ---------------------------------------------------------------------------------------------
# The pure parts (compute/corporate.py), without a database.


def _frame(rows: list[tuple], columns: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns.split())
    for name in frame.columns:
        if name.endswith("date"):
            frame[name] = pd.to_datetime(frame[name])
    return frame


def test_bad_rows_are_split_off_with_their_problem():
    frame = _frame(
        [
            ("sh.600000", 2024, "2024-03-01"),
            ("sh.600000", 2024, None),
            ("sh.600001", 2024, "2023-12-30"),
            ("sh.600000", 2024, "2024-03-01"),
        ],
        "code report_year announce_date",
    )
    good, bad = split_bad_rows(
        frame,
        ["code", "report_year", "announce_date"],
        date_column="announce_date",
        start=D(2024, 1, 1),
        end=D(2024, 12, 31),
    )
    assert len(good) == 1
    assert bad["problem"].tolist() == [
        "announce_date is empty",
        "announce_date outside 2024-01-01..2024-12-31",
        "same key as an earlier row of the reply",
    ]


def test_fetched_years_count_a_code_missing_only_when_every_fetch_failed_it():
    fetched = FetchedYears.of(
        [
            (D(2023, 1, 1), D(2024, 12, 31), {"sh.600000 2024": "timeout", "sh.600001 2023": "x"}),
            (D(2024, 1, 1), D(2024, 12, 31), {"sh.600001 2024": "timeout"}),
        ]
    )
    assert fetched.years == {2023, 2024}
    assert not fetched.holds("sh.600001", 2023)  # its only fetch of 2023 failed
    assert fetched.holds("sh.600000", 2024)  # the second fetch of 2024 got it
    assert fetched.holds("sh.600001", 2024)  # the first fetch of 2024 got it
    assert not fetched.holds("sh.600000", 2022)


def test_factor_agreement_classifies_each_side():
    actions = _frame(
        [
            # matched: the factor moves on the ex-date's bar
            ("a", "2024-05-01", "2024-06-03", "2024-06-03", 1.1, 9.0, "2024-05-31", 1.0, 10.0),
            # the factor does not move, but the price does: only in P2
            ("b", "2024-05-01", "2024-06-04", "2024-06-04", 1.0, 9.0, "2024-06-03", 1.0, 10.0),
            # 0.001 CNY: the reference price does not move, nor the factor
            ("c", "2024-05-01", "2024-06-04", "2024-06-04", 1.0, 10.0, "2024-06-03", 1.0, 10.0),
            # no stored bar before the ex-date: not compared
            ("d", "2024-05-01", "2024-06-03", "2024-06-03", 1.2, 9.0, None, None, None),
        ],
        "code announce_date ex_date bar_date factor pre_close previous_date previous_factor "
        "last_close",
    )
    changes = _frame(
        [
            ("a", "2024-06-03", "2024-05-31", 1.1, 1.0),  # explained by a's ex-date
            ("e", "2024-07-01", "2024-06-28", 1.3, 1.2),  # no ex-date: only in P0
            ("f", "2024-01-03", "2024-01-02", 1.3, 1.2),  # P2 lacks 2023 for f: unverifiable
            ("g", "2024-07-01", "2024-06-28", 1.3, 1.2),  # P2 lacks 2024 for g: not compared
        ],
        "code trade_date previous_date factor previous_factor",
    )
    ex_dates = _frame([("a", "2024-06-03"), ("e", "2024-05-02")], "code ex_date")
    fetched = FetchedYears(
        frozenset({2023, 2024}), {2023: frozenset({"f"}), 2024: frozenset({"g"})}
    )
    outcome = factor_agreement(actions, changes, ex_dates, fetched)
    assert (outcome.matched_ex_dates, outcome.matched_changes) == (1, 1)
    assert outcome.only_in_p2["code"].tolist() == ["b"]
    assert outcome.no_price_effect["code"].tolist() == ["c"]
    assert outcome.only_in_p0["code"].tolist() == ["e"]
    assert outcome.unverifiable["code"].tolist() == ["f"]
    assert outcome.ex_dates_outside_stock_daily == 1
    assert outcome.changes_outside_p2_years == 1
    assert not outcome.passed
