"""The P5 group through Dagster: weekly and monthly bars, the macro tables and macro_series, on
the simulator behind the real baostock client and real PostgreSQL. Nothing mocked."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer
from stock_pipeline.baostock.simulator import macro as sim_macro
from stock_pipeline.baostock.simulator.server import FaultContext
from stock_pipeline.calendar import load_calendar
from stock_pipeline.compute.macro import (
    MacroShapeError,
    cadence_gaps,
    macro_series_rows,
    period_dates,
    series_summary,
)
from stock_pipeline.warehouse import migrate
from stock_pipeline_tests.pipeline import REFERENCE, Pipeline, check_outcomes, materializations

D = dt.date
SIM = SimulatorConfig(seed=11, n_codes=40, end=D(2025, 3, 31))
# Six weeks around the National Day holiday (the week of 2024-09-30 trades on Monday only, the
# next one from Tuesday); sz.002524 is delisted on 2024-10-08 inside them.
WEEKS = [D(2024, 9, 16) + dt.timedelta(weeks=i) for i in range(6)]
MONTHS = [D(2024, 8, 1), D(2024, 9, 1), D(2024, 10, 1)]
WEEK_WINDOW = (WEEKS[0], WEEKS[-1] + dt.timedelta(days=6))
MONTH_WINDOW = (MONTHS[0], D(2024, 10, 31))
DELISTED_IN_RANGE = "sz.002524"
MACRO_RAW = [
    "raw_deposit_rate",
    "raw_loan_rate",
    "raw_required_reserve_ratio",
    "raw_money_supply_month",
    "raw_money_supply_year",
]
MACRO = [*MACRO_RAW, "macro_series"]
CHECKSUMMED = {
    "raw_k_weekly": "code, trade_date",
    "raw_k_monthly": "code, trade_date",
    "raw_deposit_rate": "pub_date",
    "raw_loan_rate": "pub_date",
    "raw_required_reserve_ratio": "pub_date, effective_date",
    "raw_money_supply_month": "stat_year, stat_month",
    "raw_money_supply_year": "stat_year",
    "macro_series": "series, period_date",
}
BAR_COLUMNS = "code, trade_date, open, high, low, close, volume, amount, adjust_flag, turnover, "
BAR_COLUMNS += "pct_chg"
FREQUENCY = {"raw_k_weekly": "w", "raw_k_monthly": "m"}


@dataclass
class KlineLog:
    """The codes of every k-line request the simulator answered, by frequency."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    codes: dict[str, list[str]] = field(default_factory=dict)

    def __call__(self, request: FaultContext) -> None:
        if request.method == "query_history_k_data_plus":
            frequency = next(p for p in request.params if p in ("d", "w", "m"))
            with self.lock:
                self.codes.setdefault(frequency, []).append(request.code)

    def take(self, frequency: str) -> list[str]:
        with self.lock:
            return self.codes.pop(frequency, [])


@pytest.fixture(scope="module")
def kline_log() -> KlineLog:
    return KlineLog()


@pytest.fixture(scope="module")
def simulator(kline_log: KlineLog) -> Iterator[SimulatorServer]:
    with SimulatorServer(replace(SIM, fault_hook=kline_log)) as sim:
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


@dataclass
class Ranged:
    """A warehouse with the six weeks, the three months and the macro tables, each one run."""

    pipeline: Pipeline
    results: dict[str, dg.ExecuteInProcessResult]
    requested: dict[str, list[str]]


@pytest.fixture(scope="module")
def ranged(make_pipeline: Callable[[], Pipeline], kline_log: KlineLog) -> Ranged:
    pipeline = make_pipeline()
    assert pipeline.materialize(REFERENCE).success
    results, requested = {}, {}
    for name, keys in (("raw_k_weekly", WEEKS), ("raw_k_monthly", MONTHS)):
        kline_log.take(FREQUENCY[name])
        results[name] = pipeline.materialize([name], keys[0], keys[-1])
        assert results[name].success, name
        requested[name] = kline_log.take(FREQUENCY[name])
    results["macro"] = pipeline.materialize(MACRO)
    assert results["macro"].success
    return Ranged(pipeline, results, requested)


def listed_during(simulator: SimulatorServer, start: D, end: D) -> set[str]:
    return {
        lst.code
        for lst in simulator.market.listings.values()
        if not lst.is_index and lst.ipo <= end and (lst.out is None or lst.out >= start)
    }


def _number(text: str) -> float | None:
    return float(text) if text else None


@pytest.mark.parametrize(
    ("name", "window"), [("raw_k_weekly", WEEK_WINDOW), ("raw_k_monthly", MONTH_WINDOW)]
)
def test_period_bars_equal_the_simulators(
    ranged: Ranged, simulator: SimulatorServer, name: str, window: tuple[D, D]
):
    market, frequency = simulator.market, FREQUENCY[name]
    listed = listed_during(simulator, *window)
    expected = set()
    for code in listed:
        served = market.period_columns(code, *window, frequency)
        for i in range(len(served["date"])):
            expected.add(
                (code, D.fromisoformat(served["date"][i]))
                + tuple(_number(served[f][i]) for f in ("open", "high", "low", "close"))
                + (int(served["volume"][i]), _number(served["amount"][i]))
                + (int(served["adjustflag"][i]), _number(served["turn"][i]))
                + (_number(served["pctChg"][i]),)
            )
    stored = set(ranged.pipeline.query(f"SELECT {BAR_COLUMNS} FROM {name}"))
    assert stored == expected and len(stored) > 100
    # Every bar lies in the window, on a trading day; the holiday week's on its only session.
    calendar = load_calendar(ranged.pipeline.home)
    assert all(window[0] <= row[1] <= window[1] and calendar.is_session(row[1]) for row in stored)
    if name == "raw_k_weekly":
        assert {row[1] for row in stored} >= {D(2024, 9, 30), D(2024, 10, 11)}
    # One request per stock listed during the range, delisted ones included; no other.
    assert sorted(ranged.requested[name]) == sorted(listed)
    assert DELISTED_IN_RANGE in listed
    unlisted = {c for c in market.all_codes()} - listed
    assert unlisted and not unlisted & set(ranged.requested[name])


def test_range_runs_report_requests_metadata_and_passing_checks(ranged: Ranged):
    weekly = materializations(ranged.results["raw_k_weekly"])["raw_k_weekly"]
    assert weekly["keys_requested"] == len(ranged.requested["raw_k_weekly"])
    assert weekly["kline_requests_per_code"] == 1.0 and weekly["keys_failed"] == 0
    assert weekly["weeks"] == 6 and weekly["window"] == f"{WEEK_WINDOW[0]}..{WEEK_WINDOW[1]}"
    assert weekly["dagster/row_count"] > 0 and "preview" in weekly
    assert {"seconds_fetch", "seconds_write", "seconds_wall", "baostock_requests"} <= set(weekly)
    monthly = materializations(ranged.results["raw_k_monthly"])["raw_k_monthly"]
    assert monthly["months"] == 3 and monthly["kline_requests_per_code"] == 1.0
    macro = materializations(ranged.results["macro"])
    for name in MACRO_RAW:
        assert macro[name]["keys_requested"] == 1 and macro[name]["dagster/row_count"] > 0
    built = macro["macro_series"]
    assert {"seconds_read", "seconds_transform", "seconds_write"} <= set(built)
    assert built["series"] == 10 + 7 + 4 + 9 + 6
    for name in ("raw_k_weekly", "raw_k_monthly", "macro"):
        checks = check_outcomes(ranged.results[name])
        assert checks and all(checks.values()), (name, checks)
    assert set(check_outcomes(ranged.results["macro"])) == {
        "macro_series_cadence_check",
        "macro_series_raw_reconciliation_check",
        "macro_series_rate_dates_check",
    }
    assert set(check_outcomes(ranged.results["raw_k_weekly"])) == {
        "raw_k_weekly_key_uniqueness_check",
        "raw_k_weekly_trade_date_check",
    }


def test_ranges_equal_the_periods_run_one_by_one(
    ranged: Ranged, make_pipeline: Callable[[], Pipeline]
):
    one_by_one = make_pipeline()
    assert one_by_one.materialize(REFERENCE).success
    for name, keys in (("raw_k_weekly", WEEKS), ("raw_k_monthly", MONTHS)):
        for key in keys:
            assert one_by_one.materialize([name], key).success, (name, key)
    tables = {t: CHECKSUMMED[t] for t in ("raw_k_weekly", "raw_k_monthly")}
    assert one_by_one.checksums(tables) == ranged.pipeline.checksums(tables)


def test_rerun_changes_nothing_and_drops_bars_the_source_no_longer_has(ranged: Ranged):
    pipeline = ranged.pipeline
    before = pipeline.checksums(CHECKSUMMED)
    # A bar BaoStock does not serve: sz.002524 was delisted on 2024-10-08 (last trading day
    # 2024-09-30), so the week of 2024-10-07 still requests it and gets no bar; rerunning
    # that week alone removes the stored one.
    pipeline.query(
        "INSERT INTO raw_k_weekly (code, trade_date, close) VALUES (%s, '2024-10-11', 1.0)",
        DELISTED_IN_RANGE,
    )
    week = pipeline.materialize(["raw_k_weekly"], D(2024, 10, 7))
    assert week.success
    assert materializations(week)["raw_k_weekly"]["codes_without_bars"] >= 1
    assert pipeline.checksums(CHECKSUMMED) == before
    assert pipeline.materialize(["raw_k_weekly"], WEEKS[0], WEEKS[-1]).success
    assert pipeline.materialize(["raw_k_monthly"], MONTHS[0], MONTHS[-1]).success
    assert pipeline.materialize(MACRO).success
    assert pipeline.checksums(CHECKSUMMED) == before


def test_raw_macro_tables_hold_the_simulators_whole_history(ranged: Ranged):
    """Whole history, not from STOCK_PIPELINE_START_DATE (2024-06-03 here): the simulator's
    benchmark rates stopped changing in 2015."""
    query = ranged.pipeline.query
    seed, end, everything = SIM.seed, SIM.end, (D.min, D.max)

    def served(rows: list[list[str]], dates: int) -> set[tuple]:
        return {
            tuple(D.fromisoformat(v) for v in r[:dates]) + tuple(_number(v) for v in r[dates:])
            for r in rows
        }

    def stored(name: str, order: str) -> set[tuple]:
        return set(query(f"SELECT * FROM {name} ORDER BY {order}"))

    assert {r[:-1] for r in stored("raw_deposit_rate", "pub_date")} == served(
        sim_macro.deposit_rows(seed, end, *everything), 1
    )
    assert {r[:-1] for r in stored("raw_loan_rate", "pub_date")} == served(
        sim_macro.loan_rows(seed, end, *everything), 1
    )
    assert {r[:-1] for r in stored("raw_required_reserve_ratio", "pub_date")} == served(
        sim_macro.reserve_rows(seed, end, *everything, by_effective=False), 2
    )
    months = sim_macro.money_month_rows(seed, end, (0, 0), (9999, 12))
    assert {r[:-1] for r in stored("raw_money_supply_month", "stat_year")} == {
        (int(r[0]), int(r[1]), *map(_number, r[2:])) for r in months
    }
    years = sim_macro.money_year_rows(seed, end, 0, 9999)
    assert {r[:-1] for r in stored("raw_money_supply_year", "stat_year")} == {
        (int(r[0]), *map(_number, r[1:])) for r in years
    }
    assert query("SELECT max(pub_date) < '2016-01-01' FROM raw_loan_rate") == [(True,)]


def test_macro_series_holds_every_raw_value_once(ranged: Ranged):
    """Reshaped here independently of compute.macro: every raw column, one row per value."""
    query = ranged.pipeline.query
    expected: list[tuple[str, D, float]] = []
    dated = {
        "deposit_rate": lambda r: r["pub_date"],
        "loan_rate": lambda r: r["pub_date"],
        "required_reserve_ratio": lambda r: r["effective_date"],
        "money_supply_month": lambda r: (
            D(r["stat_year"] + r["stat_month"] // 12, r["stat_month"] % 12 + 1, 1)
            - dt.timedelta(days=1)
        ),
        "money_supply_year": lambda r: D(r["stat_year"], 12, 31),
    }
    keys = {"pub_date", "effective_date", "stat_year", "stat_month", "fetched_at"}
    for source, date_of in dated.items():
        columns = [
            r[0]
            for r in query(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "ORDER BY ordinal_position",
                f"raw_{source}",
            )
        ]
        for row in query(f"SELECT * FROM raw_{source}"):
            record = dict(zip(columns, row, strict=True))
            for column in set(columns) - keys:
                if record[column] is not None:
                    expected.append((f"{source}.{column}", date_of(record), record[column]))
    stored = query("SELECT series, period_date, value FROM macro_series")
    assert sorted(stored) == sorted(expected)
    assert len(stored) == len(set((s, d) for s, d, _ in stored))
    assert ("money_supply_month.m2_month", D(2024, 2, 29)) in {(s, d) for s, d, _ in stored}
    assert query(
        "SELECT count(DISTINCT series) FILTER (WHERE series LIKE 'loan_rate.%%'), "
        "bool_and(period_date = make_date(extract(year FROM period_date)::int, 12, 31)) "
        "FILTER (WHERE series LIKE 'money_supply_year.%%') FROM macro_series"
    ) == [(7, True)]


def _macro_check_outcomes(pipeline: Pipeline) -> dict[str, dg.AssetCheckEvaluation]:
    """Only macro_series' checks, as `dagster` runs them."""
    names = (
        "macro_series_cadence_check",
        "macro_series_raw_reconciliation_check",
        "macro_series_rate_dates_check",
    )
    job = dg.define_asset_job(
        "macro_checks",
        selection=dg.AssetSelection.checks(
            *(dg.AssetCheckKey(dg.AssetKey("macro_series"), name) for name in names)
        ),
    )
    merged = dg.Definitions.merge(pipeline.definitions(), dg.Definitions(jobs=[job]))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in pipeline.env.items():
            patch.setenv(name, value)
        result = merged.resolve_job_def("macro_checks").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
        )
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_missing_month_fails_the_cadence_check_and_names_it(
    make_pipeline: Callable[[], Pipeline],
):
    pipeline = make_pipeline()
    assert pipeline.materialize(MACRO).success
    assert all(e.passed for e in _macro_check_outcomes(pipeline).values())
    pipeline.query(
        "DELETE FROM macro_series WHERE series = 'money_supply_month.m2_month' "
        "AND period_date = '2019-05-31'"
    )
    found = _macro_check_outcomes(pipeline)
    cadence = found["macro_series_cadence_check"]
    assert not cadence.passed
    assert "money_supply_month.m2_month misses 2019-05" in (cadence.description or "")
    assert cadence.metadata["missing"].value == {"money_supply_month.m2_month": ["2019-05"]}
    assert not found["macro_series_raw_reconciliation_check"].passed
    assert found["macro_series_rate_dates_check"].passed
    # The month gone from the source: macro_series follows the raw table, and the gap shows in
    # every series of the month (the materialization itself succeeds: the check does not block).
    pipeline.query("DELETE FROM raw_money_supply_month WHERE stat_year = 2019 AND stat_month = 5")
    result = pipeline.materialize(["macro_series"])
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["macro_series_raw_reconciliation_check"].passed
    cadence = evaluations["macro_series_cadence_check"]
    assert not cadence.passed
    assert set(cadence.metadata["missing"].value) == {
        f"money_supply_month.{m}{s}"
        for m in ("m0", "m1", "m2")
        for s in ("_month", "_yoy", "_chain_relative")
    }


def test_repeated_effective_dates_fail_the_rebuild_and_lose_nothing(
    make_pipeline: Callable[[], Pipeline],
):
    pipeline = make_pipeline()
    assert pipeline.materialize(MACRO).success
    before = pipeline.checksums({"macro_series": "series, period_date"})
    pub, effective = pipeline.query(
        "SELECT pub_date, effective_date FROM raw_required_reserve_ratio ORDER BY 1 LIMIT 1"
    )[0]
    pipeline.query(
        "INSERT INTO raw_required_reserve_ratio (pub_date, effective_date, "
        "big_institutions_ratio_after) VALUES (%s, %s, 1.0)",
        pub - dt.timedelta(days=1),
        effective,
    )
    result = pipeline.materialize(["macro_series"])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.user_failure_data.description
    assert f"required_reserve_ratio.big_institutions_ratio_after {effective}" in message
    assert pipeline.checksums({"macro_series": "series, period_date"}) == before
    dates = _macro_check_outcomes(pipeline)["macro_series_rate_dates_check"]
    assert not dates.passed and f"effective_date {effective} x2" in (dates.description or "")


@pytest.mark.slow
def test_dagster_cli_materializes_a_week_range(
    make_pipeline: Callable[[], Pipeline], ranged: Ranged
):
    pipeline = make_pipeline()
    assert pipeline.materialize(REFERENCE).success
    run = pipeline.cli("--select", "raw_k_weekly", "--partition-range", f"{WEEKS[0]}...{WEEKS[-1]}")
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out[-3000:]
    tables = {"raw_k_weekly": CHECKSUMMED["raw_k_weekly"]}
    assert pipeline.checksums(tables) == ranged.pipeline.checksums(tables)


# compute.macro, without a database.


def test_period_dates_of_each_source():
    months = pd.DataFrame({"stat_year": [2024, 2023, 2024], "stat_month": [2, 12, 11]})
    assert list(period_dates("money_supply_month", months)) == list(
        np.array(["2024-02-29", "2023-12-31", "2024-11-30"], dtype="datetime64[D]")
    )
    years = pd.DataFrame({"stat_year": [2007, 2024]})
    assert list(period_dates("money_supply_year", years).astype(str)) == [
        "2007-12-31",
        "2024-12-31",
    ]
    days = pd.to_datetime(["2024-01-24", "2024-02-05"])
    reserve = pd.DataFrame({"pub_date": days[:1], "effective_date": days[1:]})
    assert str(period_dates("required_reserve_ratio", reserve)[0]) == "2024-02-05"
    with pytest.raises(MacroShapeError, match="stat_month outside"):
        period_dates("money_supply_month", pd.DataFrame({"stat_year": [2024], "stat_month": [13]}))
    with pytest.raises(MacroShapeError, match="unknown macro source"):
        period_dates("gdp", months)


def test_macro_series_rows_skip_empty_values_and_refuse_repeated_dates():
    raw = {
        "money_supply_year": pd.DataFrame(
            {"stat_year": [2023, 2024], "m2_year": [1.0, 2.0], "m2_year_yoy": [np.nan, 100.0]}
        ),
        "loan_rate": pd.DataFrame(
            {"pub_date": pd.to_datetime(["2015-10-24"]), "loan_rate_above5_year": [4.9]}
        ),
    }
    rows = macro_series_rows(raw)
    assert list(rows.itertuples(index=False, name=None)) == [
        ("loan_rate.loan_rate_above5_year", pd.Timestamp("2015-10-24"), 4.9),
        ("money_supply_year.m2_year", pd.Timestamp("2023-12-31"), 1.0),
        ("money_supply_year.m2_year", pd.Timestamp("2024-12-31"), 2.0),
        ("money_supply_year.m2_year_yoy", pd.Timestamp("2024-12-31"), 100.0),
    ]
    summary = series_summary(rows).set_index("series")
    assert summary.loc["money_supply_year.m2_year", "count"] == 2
    assert summary.loc["money_supply_year.m2_year", "first"] == pd.Timestamp("2023-12-31")
    twice = pd.DataFrame(
        {
            "pub_date": pd.to_datetime(["2024-01-01", "2024-01-03"]),
            "effective_date": pd.to_datetime(["2024-01-15", "2024-01-15"]),
            "big_institutions_ratio_after": [10.0, 10.5],
        }
    )
    with pytest.raises(MacroShapeError, match="big_institutions_ratio_after 2024-01-15"):
        macro_series_rows({"required_reserve_ratio": twice})


def test_cadence_gaps_name_missing_months_and_years_only_for_cadenced_series():
    rows = pd.DataFrame(
        {
            "series": ["money_supply_month.m1_month"] * 3
            + ["money_supply_year.m1_year"] * 2
            + ["loan_rate.loan_rate6_month"] * 2,
            "period_date": pd.to_datetime(
                [
                    "2023-11-30",
                    "2024-02-29",
                    "2024-03-31",
                    "2019-12-31",
                    "2022-12-31",
                    "2010-01-01",
                    "2015-10-24",
                ]
            ),  # fmt: skip
            "value": 1.0,
        }
    )
    gaps = cadence_gaps(rows)
    assert [(s, f"{d:%Y-%m-%d}") for s, d in gaps.itertuples(index=False)] == [
        ("money_supply_month.m1_month", "2023-12-31"),
        ("money_supply_month.m1_month", "2024-01-31"),
        ("money_supply_year.m1_year", "2020-12-31"),
        ("money_supply_year.m1_year", "2021-12-31"),
    ]
    assert cadence_gaps(rows[rows["series"].str.startswith("loan")]).empty
