"""P4 industries through Dagster, end to end: simulator -> real baostock client -> pool ->
raw_stock_industry -> industry_membership -> stocks_industry -> read.industry_as_of, on real
PostgreSQL. Nothing mocked.

The simulator makes about 5% of its companies change industry once, on a random day of its
market window (reports.industry_of); the seed is chosen so that a change falls inside the
sampled months, and the tests find it from the simulator itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd
import pytest

from stock_pipeline.assets.partitions import latest_published_day
from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer, reports
from stock_pipeline.calendar import load_calendar
from stock_pipeline.compute.industry import membership_intervals, sample_days
from stock_pipeline.read import MarketReader
from stock_pipeline.settings import Settings
from stock_pipeline.warehouse import migrate
from stock_pipeline_tests.pipeline import (
    REFERENCE,
    Pipeline,
    check_outcomes,
    materializations,
)

D = dt.date
SIM = SimulatorConfig(seed=31, n_codes=40, end=D(2025, 3, 31))
START = D(2024, 6, 3)  # pipeline_env's STOCK_PIPELINE_START_DATE
P4 = ["raw_stock_industry", "industry_membership", "stocks_industry"]
CHECKSUMMED = {
    "raw_stock_industry": "snapshot_date, code",
    "industry_membership": "code, valid_from",
    "stocks": "code",
}


@dataclass
class Switch:
    """A stock whose industry changed between two sample days."""

    code: str
    on: dt.date  # the day the simulator changed it
    before: str
    after: str
    last_sample_before: dt.date
    first_sample_after: dt.date


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
def first_run(make_pipeline: Callable[[], Pipeline]) -> tuple[Pipeline, dict, dict]:
    """A warehouse with the reference assets, then the P4 group: (pipeline, materialization
    metadata, check outcomes)."""
    pipeline = make_pipeline()
    assert pipeline.materialize(REFERENCE).success
    result = pipeline.materialize(P4)
    assert result.success
    return pipeline, materializations(result), check_outcomes(result)


@pytest.fixture(scope="module")
def synced(first_run: tuple[Pipeline, dict, dict]) -> Pipeline:
    return first_run[0]


@pytest.fixture(scope="module")
def samples(synced: Pipeline) -> list[dt.date]:
    """The sample days the first run should have asked: each month's first trading day from
    the start date, and the latest published day."""
    calendar = load_calendar(synced.home)
    latest = latest_published_day(calendar, Settings().daily_run_time)
    assert latest is not None
    firsts: dict[tuple[int, int], dt.date] = {}
    for day in calendar.sessions_between(START, latest):
        firsts.setdefault((day.year, day.month), day)
    return sorted({*firsts.values(), latest})


@pytest.fixture(scope="module")
def switches(simulator: SimulatorServer, samples: list[dt.date]) -> list[Switch]:
    """Stocks whose industry the simulator changes between the first and the last sample."""
    market = simulator.market
    found = []
    for code in market.codes(samples[-1]):
        seen = [(d, reports.industry_of(market, code, d)[0]) for d in samples]
        changes = [i for i in range(1, len(seen)) if seen[i][1] != seen[i - 1][1]]
        if code in market.codes(samples[0]) and changes:
            (i,) = changes  # a company changes once at most
            on = reports.industry_of(market, code, samples[-1])[1]
            found.append(Switch(code, on, seen[i - 1][1], seen[i][1], samples[i - 1], samples[i]))
    assert found, "pick another SIM seed: no industry change falls inside the sampled window"
    return found


def _membership(pipeline: Pipeline, code: str) -> list[tuple]:
    return pipeline.query(
        "SELECT valid_from, valid_to, industry FROM industry_membership WHERE code = %s "
        "ORDER BY valid_from",
        code,
    )


def test_raw_snapshots_are_what_the_simulator_answered(
    synced: Pipeline, simulator: SimulatorServer, samples: list[dt.date]
):
    stored = synced.query(
        "SELECT snapshot_date, update_date, code, code_name, industry, industry_classification "
        "FROM raw_stock_industry"
    )
    assert sorted({r[0] for r in stored}) == samples
    served = {
        (day, D.fromisoformat(row[0]), *row[1:])
        for day in samples
        for row in reports.industry_rows(simulator.market, "", day)
    }
    assert set(stored) == served and len(stored) == len(served)


def test_membership_reconciles_with_raw_and_shows_the_switch(
    synced: Pipeline, switches: list[Switch], samples: list[dt.date]
):
    codes = synced.query("SELECT count(DISTINCT code) FROM raw_stock_industry")[0][0]
    # No stock of this market delists in the window: one interval per code, two per switch.
    assert synced.query("SELECT count(*) FROM industry_membership")[0][0] == codes + len(switches)
    for switch in switches:
        assert _membership(synced, switch.code) == [
            (samples[0], switch.first_sample_after, switch.before),
            (switch.first_sample_after, None, switch.after),
        ]
    # Every raw row lies in the one interval of its code that has its industry.
    unmatched = synced.query(
        "SELECT count(*) FROM raw_stock_industry r WHERE NOT EXISTS (SELECT 1 FROM "
        "industry_membership m WHERE m.code = r.code AND m.valid_from <= r.snapshot_date "
        "AND (m.valid_to IS NULL OR m.valid_to > r.snapshot_date) AND m.industry = r.industry "
        "AND m.classification = r.industry_classification)"
    )
    assert unmatched == [(0,)]


def test_industry_as_of_reads_the_snapshot_known_on_the_day(
    synced: Pipeline, simulator: SimulatorServer, switches: list[Switch], samples: list[dt.date]
):
    settings = Settings(database_url=synced.dsn, home=synced.home)
    switch = next(s for s in switches if s.on < s.first_sample_after)
    # The day before the sample that shows the change: changed already, not known yet.
    unseen_day = switch.first_sample_after - dt.timedelta(days=1)
    assert switch.on <= unseen_day
    assert reports.industry_of(simulator.market, switch.code, unseen_day)[0] == switch.after
    with MarketReader(settings, use_cache=False) as reader:
        before = reader.industry_as_of(switch.last_sample_before, [switch.code])
        after = reader.industry_as_of(switch.first_sample_after, switch.code)
        everyone = reader.industry_as_of(samples[-1])
        unseen = reader.industry_as_of(unseen_day)
        with pytest.raises(ValueError, match="no snapshot on or before"):
            reader.industry_as_of(samples[0] - dt.timedelta(days=1))
    assert before.loc[switch.code, "industry"] == switch.before
    assert after.loc[switch.code, "industry"] == switch.after
    assert after.loc[switch.code, "valid_from"] == pd.Timestamp(switch.first_sample_after)
    assert unseen.loc[switch.code, "industry"] == switch.before
    assert list(after.columns) == ["industry", "classification", "valid_from"]
    assert set(after["classification"]) == {reports.INDUSTRY_CLASSIFICATION}
    listed = synced.query("SELECT count(*) FROM raw_stock_industry WHERE snapshot_date = %s",
                          samples[-1])[0][0]  # fmt: skip
    assert len(everyone) == listed


def test_stocks_carry_the_current_industry(
    synced: Pipeline, simulator: SimulatorServer, samples: list[dt.date], switches: list[Switch]
):
    market = simulator.market
    stored = dict(synced.query("SELECT code, industry FROM stocks WHERE security_type = 1"))
    latest = samples[-1]
    expected = {c: reports.industry_of(market, c, latest)[0] for c in market.codes(latest)}
    assert {c: stored[c] for c in expected} == expected
    assert all(stored[s.code] == s.after for s in switches)
    indexes = synced.query("SELECT count(*) FROM stocks WHERE industry IS NOT NULL "
                           "AND security_type <> 1")  # fmt: skip
    assert indexes == [(0,)]
    # The etl group's stocks rebuild upserts only its own columns: industries stay.
    assert synced.materialize(["stocks"]).success
    assert dict(synced.query("SELECT code, industry FROM stocks WHERE security_type = 1")) == stored


def test_metadata_and_checks(first_run: tuple[Pipeline, dict, dict], samples: list[dt.date]):
    _, found, checks = first_run
    raw = found["raw_stock_industry"]
    assert raw["keys_requested"] == len(samples) and raw["keys_failed"] == 0
    assert raw["snapshots_requested"] == len(samples) and raw["snapshots_without_rows"] == []
    assert {"seconds_fetch", "seconds_write", "seconds_wall", "baostock_requests"} <= set(raw)
    membership = found["industry_membership"]
    assert membership["snapshots"] == len(samples)
    assert membership["listed_stocks"] == membership["with_current_industry"] > 0
    assert membership["without_current_industry"] == 0
    assert membership["current_intervals"] == membership["listed_stocks"]
    assert membership["codes_with_several_intervals"] >= 1 and membership["industries"] > 1
    assert {"seconds_read", "seconds_transform", "seconds_write"} <= set(membership)
    assert found["stocks_industry"]["listed_stocks_without_industry"] == 0
    assert checks == {
        "industry_membership_intervals_check": True,
        "industry_membership_raw_reconciliation_check": True,
        "industry_membership_coverage_check": True,
        "stocks_industry_current_check": True,
    }


def test_rerun_asks_only_the_latest_day_and_changes_nothing(synced: Pipeline):
    before = synced.checksums(CHECKSUMMED)
    result = synced.materialize(P4)
    assert result.success
    raw = materializations(result)["raw_stock_industry"]
    # The months are stored: only the latest published day is asked again.
    assert raw["keys_requested"] == raw["snapshots_requested"] == 1
    assert raw["baostock_requests"] <= 2  # the query (one page) and the login
    assert materializations(result)["stocks_industry"]["stocks_changed"] == 0
    assert synced.checksums(CHECKSUMMED) == before
    # A sample lost (a failed request, rows deleted) is asked again next run, with the latest
    # day; the other months are not.
    synced.query("DELETE FROM raw_stock_industry WHERE snapshot_date = '2024-09-02'")
    result = synced.materialize(["raw_stock_industry"])
    assert materializations(result)["raw_stock_industry"]["keys_requested"] == 2
    assert synced.checksums(CHECKSUMMED) == before


def test_membership_intervals_merge_split_and_end():
    snapshots = pd.DataFrame(
        [
            (D(2024, 1, 2), "a", "X"),
            (D(2024, 2, 1), "a", "X"),
            (D(2024, 3, 1), "a", "Y"),  # changes: a second interval
            (D(2024, 1, 2), "b", "Z"),
            (D(2024, 3, 1), "b", "Z"),  # missing from 2024-02-01: two intervals
            (D(2024, 1, 2), "c", "W"),
            (D(2024, 2, 1), "c", None),  # listed without an industry
            (D(2024, 2, 1), "d", "V"),  # gone from the latest snapshot (delisted)
        ],
        columns=["snapshot_date", "code", "industry"],
    ).assign(industry_classification="CSRC")
    intervals = membership_intervals(snapshots.sample(frac=1, random_state=3))
    rows = [
        (r.code, r.valid_from.date(), None if pd.isna(r.valid_to) else r.valid_to.date(),
         None if pd.isna(r.industry) else r.industry)
        for r in intervals.itertuples()
    ]  # fmt: skip
    assert rows == [
        ("a", D(2024, 1, 2), D(2024, 3, 1), "X"),
        ("a", D(2024, 3, 1), None, "Y"),
        ("b", D(2024, 1, 2), D(2024, 2, 1), "Z"),
        ("b", D(2024, 3, 1), None, "Z"),
        ("c", D(2024, 1, 2), D(2024, 2, 1), "W"),
        ("c", D(2024, 2, 1), D(2024, 3, 1), None),
        ("d", D(2024, 2, 1), D(2024, 3, 1), "V"),
    ]
    assert set(intervals["classification"]) == {"CSRC"}


def test_sample_days_skip_stored_months_but_not_the_latest_day():
    sessions = [D(2024, 5, 31), D(2024, 6, 3), D(2024, 6, 4), D(2024, 7, 1), D(2024, 7, 2)]
    assert sample_days(sessions, set()) == [D(2024, 5, 31), D(2024, 6, 3), D(2024, 7, 1),
                                            D(2024, 7, 2)]  # fmt: skip
    stored = {D(2024, 5, 31), D(2024, 6, 3), D(2024, 7, 1), D(2024, 7, 2)}
    assert sample_days(sessions, stored) == [D(2024, 7, 2)]
    assert sample_days(sessions, stored - {D(2024, 6, 3)}) == [D(2024, 6, 3), D(2024, 7, 2)]
    assert sample_days(sessions[:4], stored) == [D(2024, 7, 1)]
    assert sample_days([], stored) == []
