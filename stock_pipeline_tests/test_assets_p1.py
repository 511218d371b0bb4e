"""P1 financials through Dagster, end to end: simulator -> real baostock client -> pool -> the six
quarterly raw assets -> finance (with revisions) -> checks, on real PostgreSQL; plus the pure
rules of compute/finance.py. Nothing mocked.

The simulator's `market.today` replays later visits to the same market: a report published
after it is not served yet, a restatement dated after it not applied (a Market with another
`end` would be another market altogether).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd
import pytest

from stock_pipeline.assets import runtime
from stock_pipeline.baostock import apis
from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer
from stock_pipeline.baostock.simulator import reports as sim_reports
from stock_pipeline.baostock.simulator.market import Market
from stock_pipeline.compute import finance as rules
from stock_pipeline.read import MarketReader
from stock_pipeline.settings import Settings
from stock_pipeline.warehouse import migrate
from stock_pipeline_tests.pipeline import REFERENCE, Pipeline, check_outcomes, materializations

D = dt.date
NAMES = ("profit", "operation", "growth", "balance", "cash_flow", "dupont")
RAW = [f"raw_{n}" for n in NAMES]
P1 = [*RAW, "finance"]
PERIODS = [(2024, 1), (2024, 2), (2024, 3), (2024, 4)]
FIRST, LAST = D(2024, 1, 1), D(2024, 10, 1)  # partition keys: first days of the quarters
# Faults by code, switched on by tests while they run (the server reads them per request).
FAULTS: dict[str, str] = {}
# Every 2024 report is out by 2025-04-30; restatements run until mid-2025.
SIM = SimulatorConfig(seed=4, n_codes=48, end=D(2025, 6, 30), fault_codes=FAULTS)
CHECKSUMMED = {
    **{t: "code, stat_date" for t in RAW},
    "finance": "code, stat_date",
    "finance_revisions": "code, stat_date, superseded_on",
}


def key(period: tuple[int, int]) -> D:
    return rules.quarter_start(*period)


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SIM) as sim:
        yield sim


@contextlib.contextmanager
def market_on(market: Market, day: D) -> Iterator[None]:
    """The simulator answering as of `day`, back to its end afterwards."""
    market.today = day
    try:
        yield
    finally:
        market.today = market.end


def listed(market: Market, period: tuple[int, int]) -> list[str]:
    first, last = rules.quarter_start(*period), rules.quarter_end(*period)
    return [
        c
        for c in market.all_codes()
        if market.listings[c].ipo <= last and (market.listings[c].out or D.max) >= first
    ]


def served(market: Market, api: str, code: str, period: tuple[int, int]) -> list[list[str]]:
    return sim_reports.quarterly_rows(market, api, code, *period)


@pytest.fixture(scope="module")
def make_pipeline(
    simulator: SimulatorServer, make_database: Callable[[], str], tmp_path_factory
) -> Callable[[], Pipeline]:
    def make() -> Pipeline:
        dsn = make_database()
        migrate.upgrade(dsn)
        # Two sessions per raw step: enough for a few hundred requests, cheap to start.
        home = tmp_path_factory.mktemp("home")
        pipeline = Pipeline(simulator, home, dsn, STOCK_PIPELINE_BAOSTOCK_CONCURRENCY="2")
        assert pipeline.materialize(REFERENCE).success
        return pipeline

    return make


@dataclass
class Run:
    """What one run did: its materializations' metadata, its checks, the BaoStock requests
    it sent (by API) and the checksums it left."""

    metadata: dict[str, dict]
    checks: dict[str, bool]
    requests: dict[str, int]
    checksums: dict[str, tuple[int, str]]


def run(pipeline: Pipeline, sim: SimulatorServer, start: D, end: D | None = None) -> Run:
    def requests() -> dict[str, int]:
        return {f"query_{n}_data": sim.stats.requests[f"query_{n}_data"] for n in NAMES}

    before = requests()
    result = pipeline.materialize(P1, start, end)
    assert result.success
    after = requests()
    return Run(
        materializations(result),
        check_outcomes(result),
        {api: after[api] - before[api] for api in after},
        pipeline.checksums(CHECKSUMMED),
    )


@dataclass
class Ranged:
    pipeline: Pipeline
    run: Run


@pytest.fixture(scope="module")
def ranged(make_pipeline: Callable[[], Pipeline], simulator: SimulatorServer) -> Ranged:
    """A warehouse with the four 2024 periods loaded in one range run."""
    pipeline = make_pipeline()
    return Ranged(pipeline, run(pipeline, simulator, FIRST, LAST))


def expected_value(field: apis.Field, text: str) -> object:
    if text == "":
        return None
    if field.type == "date":
        return D.fromisoformat(text)
    return float(text) if field.type == "float" else text


def test_raw_tables_hold_what_the_simulator_serves(ranged: Ranged, simulator: SimulatorServer):
    market = simulator.market
    for name in NAMES:
        api = apis.api(f"query_{name}_data")
        columns = ", ".join(f.column for f in api.fields)
        stored = {
            (r[0], r[2]): r
            for r in ranged.pipeline.query(f"SELECT {columns} FROM raw_{name} ORDER BY 1, 3")
        }
        expected = {}
        for period in PERIODS:
            for code in listed(market, period):
                for row in served(market, api.name, code, period):
                    values = tuple(map(expected_value, api.fields, row))
                    expected[(values[0], values[2])] = values
        assert stored.keys() == expected.keys(), name
        assert stored == expected, name
    # The listing rule leaves out statements the simulator would serve for stocks listed after
    # the period (pre-IPO figures): none of them is stored.
    unlisted = [
        (c, p)
        for p in PERIODS
        for c in sorted(set(market.all_codes()) - set(listed(market, p)))
        if served(market, "query_profit_data", c, p)
    ]
    assert unlisted
    for code, period in unlisted:
        stat = rules.quarter_end(*period)
        assert not ranged.pipeline.query(
            "SELECT 1 FROM raw_profit WHERE code = %s AND stat_date = %s", code, stat
        )


def test_only_listed_codes_and_published_statements_are_requested(
    ranged: Ranged, simulator: SimulatorServer
):
    market, found = simulator.market, ranged.run.metadata
    listed_pairs = sum(len(listed(market, p)) for p in PERIODS)
    stocks = len(market.all_codes())
    profit = found["raw_profit"]
    assert ranged.run.requests["query_profit_data"] == listed_pairs == profit["keys_requested"]
    assert profit["requests_saved_unlisted"] == stocks * len(PERIODS) - listed_pairs
    with_profit = ranged.pipeline.query("SELECT count(*) FROM raw_profit")[0][0]
    for name in NAMES[1:]:
        assert ranged.run.requests[f"query_{name}_data"] == with_profit
        assert found[f"raw_{name}"]["keys_requested"] == with_profit
        assert found[f"raw_{name}"]["requests_saved_without_profit"] == listed_pairs - with_profit
    for metadata in found.values():
        assert {"seconds_wall", "dagster/row_count"} <= set(metadata)
    assert {"seconds_fetch", "seconds_write", "requests_by_period"} <= set(profit)
    assert {"seconds_read", "seconds_transform", "seconds_write"} <= set(found["finance"])
    assert ranged.run.checks == {
        "finance_key_uniqueness_check": True,
        "finance_pub_date_check": True,
        "finance_coverage_check": True,
    }


FINANCE_VALUES = [f.column for n in NAMES for f in apis.api(f"query_{n}_data").fields[3:]]


def test_finance_reconciles_with_raw(ranged: Ranged):
    joins = " ".join(f"JOIN raw_{n} {n} USING (code, stat_date)" for n in NAMES[1:])
    values = ", ".join(FINANCE_VALUES)
    earliest = "least(" + ", ".join(f"{n}.pub_date" for n in NAMES) + ")"
    from_raw = ranged.pipeline.query(
        f"SELECT code, stat_date, {earliest}, {values} FROM raw_profit profit {joins} ORDER BY 1, 2"
    )
    stored = ranged.pipeline.query(
        f"SELECT code, stat_date, pub_date, {values} FROM finance ORDER BY 1, 2"
    )
    assert len(stored) == ranged.pipeline.query("SELECT count(*) FROM raw_profit")[0][0]
    assert stored == from_raw
    revised = "SELECT count(*) FROM finance WHERE revised_on IS NOT NULL"
    assert ranged.pipeline.query(revised) == [(0,)]
    assert ranged.pipeline.query("SELECT count(*) FROM finance_revisions") == [(0,)]


def test_range_equals_period_by_period_runs(ranged: Ranged, simulator: SimulatorServer):
    """The same warehouse emptied of P1 data, then loaded one period per run."""
    pipeline = ranged.pipeline
    pipeline.query(f"TRUNCATE {', '.join(CHECKSUMMED)}")
    for period in PERIODS:
        last = run(pipeline, simulator, key(period))
    assert last.checksums == ranged.run.checksums


def test_rerun_changes_nothing(ranged: Ranged, simulator: SimulatorServer):
    pipeline = ranged.pipeline
    touched = pipeline.query("SELECT max(updated_at), count(*) FROM finance")
    again = run(pipeline, simulator, FIRST, LAST)
    assert again.checksums == ranged.run.checksums
    # Unchanged statements are not rewritten at all (updated_at stays).
    assert pipeline.query("SELECT max(updated_at), count(*) FROM finance") == touched
    found = again.metadata["finance"]
    assert (found["rows_new"], found["rows_revised"]) == (0, 0)
    assert found["rows_unchanged"] == touched[0][1]


def test_a_failed_code_keeps_what_it_had(ranged: Ranged, simulator: SimulatorServer):
    pipeline, period = ranged.pipeline, PERIODS[0]
    code = pipeline.query(
        "SELECT code FROM raw_profit WHERE stat_date = %s ORDER BY code LIMIT 1",
        rules.quarter_end(*period),
    )[0][0]
    FAULTS[code] = "error"  # every request about it fails
    try:
        again = run(pipeline, simulator, key(period))
    finally:
        FAULTS.clear()
    for name in NAMES:
        found = again.metadata[f"raw_{name}"]
        assert found["keys_failed"] == 1 and code in found["failures"]
    assert again.checksums == ranged.run.checksums  # its rows stay, nothing else moves


def test_as_of_never_returns_a_statement_published_after_the_day(ranged: Ranged):
    pipeline = ranged.pipeline
    code, published = pipeline.query(
        "SELECT code, pub_date FROM finance WHERE stat_date = '2024-12-31' ORDER BY code LIMIT 1"
    )[0]
    with reader_of(pipeline) as reader:
        before = reader.finance_as_of(published - dt.timedelta(days=1), codes=[code])
        on = reader.finance_as_of(published, codes=[code])
        everyone = reader.finance_as_of(published - dt.timedelta(days=1))
    assert pd.Timestamp(before.loc[code, "stat_date"]) == pd.Timestamp(D(2024, 9, 30))
    assert pd.Timestamp(on.loc[code, "stat_date"]) == pd.Timestamp(D(2024, 12, 31))
    assert len(everyone) > 1
    assert (pd.to_datetime(everyone["pub_date"]) < pd.Timestamp(published)).all()


def reader_of(pipeline: Pipeline) -> MarketReader:
    return MarketReader(Settings(database_url=pipeline.dsn, home=pipeline.home), use_cache=False)


# ----- later visits: late publications and restatements ----------------------------------------


def first_restatement(market: Market) -> tuple[str, tuple[int, int], D]:
    """(code, period, restatement date) of the earliest restatement of a 2024Q4 statement (the
    newest period: the restated statement is then its code's latest)."""
    period = PERIODS[-1]
    dated = [
        (on, code)
        for code in listed(market, period)
        if (on := sim_reports.restatement_date(market, code, *period)) and on <= market.end
    ]
    assert dated, "no restated 2024Q4 statement in the simulator: pick another seed"
    on, code = min(dated)
    return code, period, on


def published_by(market: Market, day: D) -> dict[tuple[str, D], D]:
    """(code, stat_date) -> pub_date of the listed stocks' statements published by `day`."""
    out = {}
    for period in PERIODS:
        for code in listed(market, period):
            rows = served(market, "query_profit_data", code, period)
            if rows and D.fromisoformat(rows[0][1]) <= day:
                out[(code, rules.quarter_end(*period))] = D.fromisoformat(rows[0][1])
    return out


@dataclass
class History:
    """The four periods fetched on `first_day` (the simulator's), then again on its end."""

    pipeline: Pipeline
    first_day: D
    first: Run
    first_keys: set[tuple[str, D]]  # finance's (code, stat_date) after the first run
    second: Run
    today: D  # the warehouse's day of the second run (revised_on, superseded_on)
    restated: tuple[str, tuple[int, int], D]


@pytest.fixture(scope="module")
def history(make_pipeline: Callable[[], Pipeline], simulator: SimulatorServer) -> History:
    market = simulator.market
    case = first_restatement(market)
    first_day = case[2] - dt.timedelta(days=1)
    pipeline = make_pipeline()
    with market_on(market, first_day):
        first = run(pipeline, simulator, FIRST, LAST)
    first_keys = finance_keys(pipeline)
    today = runtime.today()
    second = run(pipeline, simulator, FIRST, LAST)
    return History(pipeline, first_day, first, first_keys, second, today, case)


def finance_keys(pipeline: Pipeline) -> set[tuple[str, D]]:
    return {(r[0], r[1]) for r in pipeline.query("SELECT code, stat_date FROM finance")}


def test_a_report_published_later_appears_on_a_later_run(history: History, simulator):
    market = simulator.market
    early, everything = published_by(market, history.first_day), published_by(market, market.end)
    assert 0 < len(early) < len(everything)
    assert history.first_keys == set(early)
    assert finance_keys(history.pipeline) == set(everything)
    late = set(everything) - set(early)
    new = history.pipeline.query("SELECT code, stat_date, revised_on FROM finance")
    assert {(c, s) for c, s, revised in new if revised is None} >= late  # new, not revisions
    assert history.second.metadata["finance"]["rows_new"] == len(late)
    # The five other APIs were not asked for statements not published yet.
    listed_pairs = sum(len(listed(market, p)) for p in PERIODS)
    saved = history.first.metadata["raw_balance"]["requests_saved_without_profit"]
    assert saved == listed_pairs - len(early)
    # Every 2024 period is settled: the first run's coverage check fails, the second passes.
    assert history.first.checks["finance_coverage_check"] is False
    assert history.second.checks["finance_coverage_check"] is True


def net_profit(market: Market, code: str, period: tuple[int, int]) -> float:
    return float(served(market, "query_profit_data", code, period)[0][6])


def test_a_restatement_becomes_a_revision(history: History, simulator: SimulatorServer):
    market, pipeline, today = simulator.market, history.pipeline, history.today
    code, period, _ = history.restated
    with market_on(market, history.first_day):
        before = net_profit(market, code, period)
    after = net_profit(market, code, period)
    assert after != before
    stat = rules.quarter_end(*period)
    assert pipeline.query(
        "SELECT net_profit, revised_on FROM finance WHERE code = %s AND stat_date = %s",
        code,
        stat,
    ) == [(after, today)]
    assert pipeline.query(
        "SELECT net_profit, superseded_on, revised_on FROM finance_revisions "
        "WHERE code = %s AND stat_date = %s",
        code,
        stat,
    ) == [(before, today, None)]
    # Exactly the statements published before the first visit and restated between the two
    # visits are revisions.
    expected = sorted(
        (c, s)
        for (c, s) in published_by(market, history.first_day)
        if (on := sim_reports.restatement_date(market, c, s.year, (s.month + 2) // 3))
        and history.first_day < on <= market.end
    )
    revisions = pipeline.query("SELECT code, stat_date FROM finance_revisions ORDER BY 1, 2")
    assert revisions == expected and (code, stat) in expected
    assert history.second.metadata["finance"]["rows_revised"] == len(expected)
    # A rerun the same day finds nothing new.
    assert run(pipeline, simulator, FIRST, LAST).checksums == history.second.checksums


def test_as_of_reads_the_version_valid_on_the_day(history: History):
    pipeline, today = history.pipeline, history.today
    code, period, _ = history.restated
    stat = rules.quarter_end(*period)
    old, new = pipeline.query(
        "SELECT (SELECT net_profit FROM finance_revisions WHERE code = %s AND stat_date = %s), "
        "(SELECT net_profit FROM finance WHERE code = %s AND stat_date = %s)",
        code,
        stat,
        code,
        stat,
    )[0]
    assert old != new
    with reader_of(pipeline) as reader:
        earlier = reader.finance_as_of(today - dt.timedelta(days=1), codes=[code])
        now = reader.finance_as_of(today, codes=[code])
    for version in (earlier, now):
        assert pd.Timestamp(version.loc[code, "stat_date"]) == pd.Timestamp(stat)
    assert earlier.loc[code, "net_profit"] == old
    assert now.loc[code, "net_profit"] == new
    assert pd.Timestamp(now.loc[code, "valid_from"]) == pd.Timestamp(today)


@pytest.mark.slow
def test_dagster_cli_materializes_a_range_of_periods(make_pipeline, simulator):
    pipeline = make_pipeline()
    run = pipeline.cli("--select", "group:p1", "--partition-range", "2024-04-01...2024-07-01")
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out[-3000:]
    counts = dict(pipeline.query("SELECT stat_date, count(*) FROM finance GROUP BY 1"))
    market = simulator.market
    for period in [(2024, 2), (2024, 3)]:
        published = [
            c for c in listed(market, period) if served(market, "query_profit_data", c, period)
        ]
        assert counts[rules.quarter_end(*period)] == len(published)
    assert len(counts) == 2


# ----- compute/finance.py: the pure rules ------------------------------------------------------


def test_deadlines_and_settled_periods():
    assert [rules.deadline(2024, q) for q in (1, 2, 3, 4)] == [
        D(2024, 4, 30),
        D(2024, 8, 31),
        D(2024, 10, 31),
        D(2025, 4, 30),
    ]
    assert not rules.settled(2024, 4, D(2025, 5, 30))
    assert rules.settled(2024, 4, D(2025, 5, 31))
    assert rules.settled(2024, 1, D(2024, 5, 1), grace_days=0)
    with pytest.raises(ValueError, match="quarter"):
        rules.deadline(2024, 5)


def test_periods_between_takes_quarters_starting_in_the_window():
    assert rules.periods_between(D(2024, 1, 1), D(2024, 12, 31)) == PERIODS
    assert rules.periods_between(D(2024, 1, 2), D(2024, 7, 1)) == [(2024, 2), (2024, 3)]
    assert rules.periods_between(D(2024, 10, 1), D(2025, 1, 1)) == [(2024, 4), (2025, 1)]
    assert rules.periods_between(D(2024, 2, 1), D(2024, 3, 31)) == []


def test_listed_codes_follow_ipo_and_delisting():
    basic = pd.DataFrame(
        {
            "code": ["a", "b", "c", "d", "e", "f"],
            "security_type": pd.array([1, 1, 1, 1, 2, 1], dtype="Int64"),
            "ipo_date": pd.to_datetime(
                ["2020-01-01", "2024-03-31", "2024-04-01", "2010-01-01", "2000-01-01", None]
            ),
            "out_date": pd.to_datetime([None, None, None, "2023-12-31", None, None]),
        }
    )
    # c lists after Q1, d was delisted before it, e is an index, f's IPO date is unknown.
    assert rules.listed_codes(basic, 2024, 1) == ["a", "b", "f"]
    assert rules.listed_codes(basic, 2024, 2) == ["a", "b", "c", "f"]
    assert rules.listed_codes(basic, 2023, 4) == ["a", "d", "f"]


def part(name: str, rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "code": [r[0] for r in rows],
            "stat_date": pd.to_datetime([r[1] for r in rows]),
            "pub_date": pd.to_datetime([r[2] for r in rows]),
            f"{name}_value": [r[3] for r in rows],
        }
    )


def test_join_statements_takes_the_earliest_pub_date_and_waits_for_parts():
    rows, incomplete = rules.join_statements(
        {
            "profit": part("profit", [("a", "2024-03-31", "2024-04-20", 1.0),
                                      ("b", "2024-03-31", "2024-04-21", 2.0)]),
            "balance": part("balance", [("a", "2024-03-31", "2024-04-18", 3.0)]),
            "dupont": part("dupont", [("a", "2024-03-31", "2024-04-25", float("nan"))]),
        }
    )  # fmt: skip
    assert rows["code"].tolist() == ["a"]
    assert rows["pub_date"].tolist() == [pd.Timestamp("2024-04-18")]
    assert rows[["profit_value", "balance_value"]].iloc[0].tolist() == [1.0, 3.0]
    assert pd.isna(rows["dupont_value"].iloc[0])
    assert incomplete.to_dict("records") == [
        {"code": "b", "stat_date": pd.Timestamp("2024-03-31"), "missing": "balance, dupont"}
    ]


def finance_frame(rows: list[tuple], revised: bool) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "code": [r[0] for r in rows],
            "stat_date": pd.to_datetime(["2024-03-31"] * len(rows)),
            "pub_date": pd.to_datetime([r[1] for r in rows]),
            "x": [r[2] for r in rows],
            "y": pd.array([r[3] for r in rows], dtype="Int64"),
        }
    )
    if revised:
        frame.insert(3, "revised_on", pd.to_datetime([r[4] for r in rows]))
    return frame


def test_diff_revisions_keeps_superseded_versions():
    day = D(2025, 1, 10)
    stored = finance_frame(
        [
            ("same", "2024-04-20", float("nan"), None, None),  # NULL == NULL: unchanged
            ("value", "2024-04-20", 1.0, 5, None),
            ("pub", "2024-04-20", 1.0, 5, "2024-06-01"),
            ("today", "2024-04-20", 1.0, 5, "2025-01-10"),  # revised earlier today
            ("gone", "2024-04-20", 1.0, 5, None),
        ],
        revised=True,
    )
    built = finance_frame(
        [
            ("same", "2024-04-20", float("nan"), None),
            ("value", "2024-04-20", 1.0 + 1e-12, 5),  # no tolerance
            ("pub", "2024-04-21", 1.0, 5),
            ("today", "2024-04-20", 2.0, 5),
            ("new", "2024-04-22", 3.0, None),
        ],
        revised=False,
    )
    changes = rules.diff_revisions(stored, built, day, ["x", "y"])
    assert (changes.new, changes.revised, changes.unchanged, changes.stored_only) == (1, 3, 1, 1)
    written = changes.rows.set_index("code")
    assert sorted(written.index) == ["new", "pub", "today", "value"]
    assert pd.isna(written.loc["new", "revised_on"])
    assert (written.loc[["pub", "today", "value"], "revised_on"] == pd.Timestamp(day)).all()
    assert written.loc["value", "x"] == 1.0 + 1e-12
    # The version revised earlier today was valid on no day: only the others are kept.
    kept = changes.superseded.set_index("code")
    assert sorted(kept.index) == ["pub", "value"]
    assert (kept["superseded_on"] == pd.Timestamp(day)).all()
    assert kept.loc["pub", "revised_on"] == pd.Timestamp("2024-06-01")
    assert kept.loc["pub", "pub_date"] == pd.Timestamp("2024-04-20")
    assert kept.loc["value", "x"] == 1.0
    # Nothing changes when the stored rows are built again.
    again = rules.diff_revisions(stored, stored.drop(columns="revised_on"), day, ["x", "y"])
    assert (again.new, again.revised, len(again.rows), len(again.superseded)) == (0, 0, 0, 0)


def test_coverage_fails_only_settled_periods():
    today = D(2025, 5, 15)
    listed_counts = {(2024, 3): 100, (2024, 4): 100, (2025, 1): 100, (2025, 2): 100}
    reported = {(2024, 3): 90, (2024, 4): 90, (2025, 1): 99, (2025, 2): 0}
    table = rules.coverage(listed_counts, reported, today, 0.95).set_index("period")
    assert table["state"].to_dict() == {
        "2024Q3": "settled",
        "2024Q4": "due",
        "2025Q1": "due",
        "2025Q2": "open",
    }
    assert table["verdict"].to_dict() == {
        "2024Q3": "fail",
        "2024Q4": "warn",
        "2025Q1": "ok",
        "2025Q2": "ok",
    }
    assert table.loc["2024Q4", "coverage"] == 0.9
