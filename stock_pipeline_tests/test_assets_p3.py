"""The P3 group (indexes) through Dagster: simulator -> real baostock client -> raw index bars
and constituent snapshots -> index_daily, index_constituents -> checks and the point-in-time
read, on real PostgreSQL. Nothing mocked.

The simulator has 900 stocks, enough for full indexes (CSI 500 takes ranks 301-800), and
reviews its indexes in June and December: from STOCK_PIPELINE_START_DATE 2024-06-03 the
snapshots are those of 2023-12-11 (in force on the start date), 2024-06-17 and 2024-12-16.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import dagster as dg
import pandas as pd
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from stock_pipeline.assets.etl.p3 import CONSTITUENT_TABLES, INDEX_SIZES
from stock_pipeline.baostock.apis import INDEX_CODES
from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer, reports
from stock_pipeline.calendar import load_calendar
from stock_pipeline.compute.membership import intervals_from_snapshots, snapshot_sample_days
from stock_pipeline.read import MarketReader
from stock_pipeline.settings import Settings, SettingsError
from stock_pipeline.warehouse import migrate
from stock_pipeline_tests.pipeline import Pipeline, check_outcomes, materializations

D = dt.date
SIM = SimulatorConfig(seed=11, n_codes=900, end=D(2025, 3, 31))
START_DATE = D(2024, 6, 3)  # the Pipeline's STOCK_PIPELINE_START_DATE
REVIEWS = (D(2023, 12, 11), D(2024, 6, 17), D(2024, 12, 16))
# Index bars over the December 2024 review.
START, END = D(2024, 12, 12), D(2024, 12, 18)
BARS = ["raw_index_daily", "index_daily"]
SNAPSHOTS = [*CONSTITUENT_TABLES, "index_constituents"]
ALIASES = {code: table.removeprefix("raw_").removesuffix("_stocks")
           for table, code in CONSTITUENT_TABLES.items()}  # fmt: skip
TABLES = {
    "raw_index_daily": "code, trade_date",
    "index_daily": "code, trade_date",
    **{table: "update_date, code" for table in CONSTITUENT_TABLES},
    "index_constituents": "index_code, code, valid_from",
}


# -- pure functions ---------------------------------------------------------------------------


def _snapshots(rows: list[tuple[str, str, str]], **values: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["key", "member", "snapshot_date"])
    frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"])
    return frame.assign(**values)


def _as_tuples(intervals: pd.DataFrame) -> list[tuple]:
    out = []
    for row in intervals.itertuples(index=False):
        valid_to = None if pd.isna(row.valid_to) else row.valid_to.date().isoformat()
        values = [None if pd.isna(v) else v for v in row[4:]]
        out.append((row.key, row.member, row.valid_from.date().isoformat(), valid_to, *values))
    return out


def test_intervals_follow_members_leaving_and_coming_back():
    snapshots = _snapshots(
        [
            ("i", "a", "2024-01-02"), ("i", "b", "2024-01-02"),
            ("i", "a", "2024-06-03"), ("i", "c", "2024-06-03"),
            ("i", "b", "2024-12-02"), ("i", "c", "2024-12-02"),
            # Another key: its own snapshot days, unaffected by the first key's.
            ("j", "a", "2024-03-01"), ("j", "a", "2024-09-02"),
        ]
    )  # fmt: skip
    assert _as_tuples(intervals_from_snapshots(snapshots.sample(frac=1, random_state=3))) == [
        ("i", "a", "2024-01-02", "2024-12-02"),
        ("i", "b", "2024-01-02", "2024-06-03"),
        ("i", "b", "2024-12-02", None),
        ("i", "c", "2024-06-03", None),
        ("j", "a", "2024-03-01", None),
    ]


def test_intervals_split_when_a_value_changes():
    snapshots = _snapshots(
        [("c", "x", "2024-01-01"), ("c", "x", "2024-02-01"), ("c", "x", "2024-03-01"),
         ("c", "y", "2024-01-01"), ("c", "y", "2024-02-01"), ("c", "y", "2024-03-01")],
        industry=["A", "A", "B", None, None, "C"],
    )  # fmt: skip
    assert _as_tuples(intervals_from_snapshots(snapshots)) == [
        ("c", "x", "2024-01-01", "2024-03-01", "A"),
        ("c", "x", "2024-03-01", None, "B"),
        ("c", "y", "2024-01-01", "2024-03-01", None),
        ("c", "y", "2024-03-01", None, "C"),
    ]
    empty = intervals_from_snapshots(snapshots.iloc[:0])
    assert list(empty.columns) == ["key", "member", "valid_from", "valid_to", "industry"]
    assert empty.empty


def test_intervals_refuse_a_member_twice_in_one_snapshot():
    doubled = _snapshots([("c", "x", "2024-01-01")] * 2, industry=["A", "B"])
    with pytest.raises(ValueError, match="appears twice in one snapshot"):
        intervals_from_snapshots(doubled)
    same = _snapshots([("c", "x", "2024-01-01")] * 2, industry=["A", "A"])
    assert len(intervals_from_snapshots(same)) == 1


def test_sample_days_are_month_starts_and_the_latest_day():
    sessions = load_calendar(None).sessions_between(D(2024, 5, 20), D(2024, 9, 10))
    every = snapshot_sample_days(sessions)
    assert every == [D(2024, 5, 20), D(2024, 6, 3), D(2024, 7, 1), D(2024, 8, 1),
                     D(2024, 9, 2), D(2024, 9, 10)]  # fmt: skip
    # After a complete sync through Aug 15: September's first day and the latest day only.
    refresh = snapshot_sample_days(
        sessions, asked_through=D(2024, 8, 15), first_stored=D(2024, 5, 1)
    )
    assert refresh == [D(2024, 9, 2), D(2024, 9, 10)]
    # Synced through the latest day: it alone is asked again (its answer may still change).
    assert snapshot_sample_days(
        sessions, asked_through=D(2024, 9, 10), first_stored=D(2024, 5, 1)
    ) == [D(2024, 9, 10)]
    # The start date moved before the first stored snapshot: the days before it are asked.
    moved = snapshot_sample_days(
        sessions, asked_through=D(2024, 9, 10), first_stored=D(2024, 6, 17)
    )
    assert moved == [D(2024, 5, 20), D(2024, 6, 3), D(2024, 9, 10)]


def test_index_codes_setting():
    assert Settings.from_env({}).index_codes == INDEX_CODES
    chosen = Settings.from_env({"STOCK_PIPELINE_INDEX_CODES": " SH.000300, sz.399006,sh.000300"})
    assert chosen.index_codes == ("sh.000300", "sz.399006")
    for bad in ("sh.000300;sz.399006", "000300", " , "):
        with pytest.raises(SettingsError, match="STOCK_PIPELINE_INDEX_CODES must be"):
            Settings.from_env({"STOCK_PIPELINE_INDEX_CODES": bad})


# -- through Dagster --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SIM) as sim:
        yield sim


@pytest.fixture(scope="module")
def make_pipeline(
    simulator: SimulatorServer, make_database: Callable[[], str], tmp_path_factory
) -> Callable[..., Pipeline]:
    def make(calendar: bool = True) -> Pipeline:
        """A migrated warehouse; with BaoStock's calendar (raw_trade_dates) when `calendar`,
        else the bundled one (enough for the 2024 bars)."""
        dsn = make_database()
        migrate.upgrade(dsn)
        # Two sessions are plenty for a few dozen requests, and start faster than four.
        pipeline = Pipeline(
            simulator, tmp_path_factory.mktemp("home"), dsn, STOCK_PIPELINE_BAOSTOCK_CONCURRENCY="2"
        )
        assert pipeline.env["STOCK_PIPELINE_START_DATE"] == START_DATE.isoformat()
        if calendar:
            assert pipeline.materialize(["raw_trade_dates"]).success
        return pipeline

    return make


Synced = tuple[Pipeline, dg.ExecuteInProcessResult, dg.ExecuteInProcessResult]


@pytest.fixture(scope="module")
def synced(make_pipeline: Callable[..., Pipeline]) -> Synced:
    """The constituents from the start date (a first, full sync), and the index bars of the
    range as one run; with both runs' results."""
    pipeline = make_pipeline()
    snapshots = pipeline.materialize(SNAPSHOTS)
    assert snapshots.success
    bars = pipeline.materialize(BARS, START, END)
    assert bars.success
    return pipeline, snapshots, bars


@pytest.fixture(scope="module")
def reader(synced: Synced) -> Iterator[MarketReader]:
    with MarketReader(Settings.from_env(synced[0].env), use_cache=False) as reader:
        yield reader


def _asked_days(pipeline: Pipeline, result: dg.ExecuteInProcessResult, table: str) -> list[D]:
    """The sample days a full sync asks: recomputed from the calendar, up to the latest
    published day the run reported."""
    latest = D.fromisoformat(materializations(result)[table]["latest_published_day"])
    sessions = load_calendar(pipeline.home).sessions_between(START_DATE, latest)
    days = [sessions[0]]
    days += [d for p, d in zip(sessions, sessions[1:], strict=False) if d.month != p.month]
    return sorted({*days, latest})


def test_raw_index_daily_holds_the_simulators_bars(synced: Synced, simulator: SimulatorServer):
    pipeline = synced[0]
    stored = pipeline.query(
        "SELECT code, trade_date, open, high, low, close, pre_close, volume, amount, pct_chg "
        "FROM raw_index_daily ORDER BY code, trade_date"
    )
    expected = []
    for code in sorted(INDEX_CODES):
        for bar in simulator.market.daily_bars(code, START, END):
            prices = [float(bar[f]) for f in ("open", "high", "low", "close", "preclose")]
            values = [int(bar["volume"]), float(bar["amount"]), float(bar["pctChg"])]
            expected.append((code, D.fromisoformat(bar["date"]), *prices, *values))
    sessions = load_calendar(pipeline.home).sessions_between(START, END)
    assert len(expected) == len(INDEX_CODES) * len(sessions)
    assert stored == expected


def test_raw_snapshots_are_the_simulators_answers_on_the_sample_days(
    synced: Synced, simulator: SimulatorServer
):
    pipeline, result, _ = synced
    market = simulator.market
    for table, code in CONSTITUENT_TABLES.items():
        days = _asked_days(pipeline, result, table)
        expected = {
            (D.fromisoformat(day), member, name)
            for asked in days
            for day, member, name in reports.constituent_rows(market, ALIASES[code], asked)
        }
        stored = set(pipeline.query(f"SELECT update_date, code, code_name FROM {table}"))
        assert stored == expected, table
        assert {row[0] for row in stored} == set(REVIEWS)
        found = materializations(result)[table]
        assert found["full_rebuild"] is True
        assert found["keys_requested"] == len(days) and found["keys_failed"] == 0
        assert found["snapshots"] == len(REVIEWS)
        per_snapshot = {d.isoformat(): INDEX_SIZES[code] for d in REVIEWS}
        assert found["members_per_snapshot"] == per_snapshot
        assert found["baostock_requests"] >= len(days) and found["empty_answers"] == []
        assert {"seconds_fetch", "seconds_write", "seconds_wall"} <= set(found)


def test_business_tables_reconcile_and_every_check_passes(synced: Synced):
    pipeline, snapshots, bars = synced
    found = materializations(bars)
    raw_rows = pipeline.query("SELECT count(*) FROM raw_index_daily")[0][0]
    assert (
        found["index_daily"]["dagster/row_count"]
        == raw_rows
        == found["raw_index_daily"]["dagster/row_count"]
    )
    assert found["raw_index_daily"]["sessions_without_bar"] == {}
    assert pipeline.query(
        "SELECT count(*) FROM index_daily d JOIN raw_index_daily r USING (code, trade_date) "
        "WHERE (d.open, d.high, d.low, d.close, d.pre_close, d.volume, d.amount, d.pct_chg) "
        "= (r.open, r.high, r.low, r.close, r.pre_close, r.volume, r.amount, r.pct_chg)"
    ) == [(raw_rows,)]
    checks = {**check_outcomes(snapshots), **check_outcomes(bars)}
    assert checks == {
        "index_daily_ohlc_sanity_check": True,
        "index_daily_key_uniqueness_check": True,
        "index_daily_raw_reconciliation_check": True,
        "index_constituents_member_count_check": True,
        "index_constituents_no_overlap_check": True,
        "index_constituents_raw_reconciliation_check": True,
    }
    summary = materializations(snapshots)["index_constituents"]["indexes"]
    for code, size in INDEX_SIZES.items():
        assert summary[code]["snapshots"] == len(REVIEWS)
        assert summary[code]["current_members"] == size
        assert summary[code]["latest_snapshot"] == REVIEWS[-1].isoformat()


def test_index_members_agree_with_the_simulator_on_every_day(
    synced: Synced, reader: MarketReader, simulator: SimulatorServer
):
    pipeline = synced[0]
    market = simulator.market
    days = load_calendar(pipeline.home).sessions_between(REVIEWS[0], D(2025, 3, 31))
    for code in INDEX_SIZES:
        for day in days:
            assert reader.index_members(code, day) == market.index_members(code, day), (code, day)
        # After the simulator's last review, its members stay in force (valid_to NULL).
        assert reader.index_members(code, "2026-06-01") == market.index_members(code, END)
        with pytest.raises(ValueError, match="before the first stored snapshot"):
            reader.index_members(code, REVIEWS[0] - dt.timedelta(days=1))


def test_a_day_between_two_snapshots_has_the_earlier_snapshots_members(
    synced: Synced, reader: MarketReader, simulator: SimulatorServer
):
    market = simulator.market
    between = D(2024, 12, 13)  # the Friday before the review of Monday 2024-12-16
    for code, alias in ALIASES.items():
        earlier = sorted(r[1] for r in reports.constituent_rows(market, alias, REVIEWS[1]))
        later = sorted(r[1] for r in reports.constituent_rows(market, alias, REVIEWS[2]))
        assert earlier != later  # the review changed members
        assert reader.index_members(alias, between) == earlier
        assert reader.index_members(code, REVIEWS[2]) == later


def test_index_daily_range_equals_the_days_run_one_by_one(
    synced: Synced, make_pipeline: Callable[..., Pipeline]
):
    ranged = synced[0]
    daily = make_pipeline(calendar=False)
    for day in load_calendar(daily.home).sessions_between(START, END):
        result = daily.materialize(BARS, day)
        assert result.success, day
        assert materializations(result)["raw_index_daily"]["keys_requested"] == len(INDEX_CODES)
    bars = {t: TABLES[t] for t in BARS}
    assert daily.checksums(bars) == ranged.checksums(bars)


def test_a_refresh_asks_only_what_can_be_new_and_changes_nothing(synced: Synced):
    pipeline, first, _ = synced
    before = pipeline.checksums(TABLES)
    again = pipeline.materialize(SNAPSHOTS)
    assert again.success and all(check_outcomes(again).values())
    assert pipeline.materialize(BARS, START, END).success
    assert pipeline.checksums(TABLES) == before
    for table in CONSTITUENT_TABLES:
        found = materializations(again)[table]
        # Only the latest published day: every earlier answer is stored and cannot change.
        assert found["full_rebuild"] is False and found["keys_requested"] == 1
        assert found["first_day_asked"] == found["latest_published_day"]
    # Last synced 45 days ago: the first days of the months begun since, and the latest.
    latest = D.fromisoformat(materializations(first)["raw_hs300_stocks"]["latest_published_day"])
    synced_through = latest - dt.timedelta(days=45)
    pipeline.query(
        "UPDATE sync_state SET last_fetched_date = %s WHERE dataset = ANY(%s)",
        synced_through,
        list(CONSTITUENT_TABLES),
    )
    later = materializations(pipeline.materialize(list(CONSTITUENT_TABLES)))
    for table in CONSTITUENT_TABLES:
        asked = [d for d in _asked_days(pipeline, first, table) if d > synced_through]
        assert later[table]["keys_requested"] == len(asked) and 2 <= len(asked) <= 3
        assert later[table]["first_day_asked"] == asked[0].isoformat()
    # An emptied table is rebuilt from the start date.
    pipeline.query("DELETE FROM raw_sz50_stocks")
    rebuilt = materializations(pipeline.materialize(["raw_sz50_stocks"]))["raw_sz50_stocks"]
    assert rebuilt["full_rebuild"] is True
    assert rebuilt["keys_requested"] == len(_asked_days(pipeline, first, "raw_sz50_stocks"))
    assert pipeline.checksums(TABLES) == before


def _run_checks(
    pipeline: Pipeline, asset: str, window: tuple[D, D] | None = None
) -> dict[str, dg.AssetCheckEvaluation]:
    """The checks of `asset` alone (over `window` for index_daily's), as `dagster` runs them."""
    defs = pipeline.definitions()
    keys = [k for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key.path == [asset]]
    job = dg.define_asset_job("p3_checks", selection=dg.AssetSelection.checks(*keys))
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    tags = {}
    if window is not None:
        tags = {ASSET_PARTITION_RANGE_START_TAG: window[0].isoformat(),
                ASSET_PARTITION_RANGE_END_TAG: window[1].isoformat()}  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        for name, value in pipeline.env.items():
            patch.setenv(name, value)
        result = merged.resolve_job_def("p3_checks").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), tags=tags, raise_on_error=False
        )
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_checks_fail_on_bad_rows(synced: Synced):
    pipeline = synced[0]
    before = pipeline.checksums(TABLES)
    # A snapshot that lost a member: the intervals follow it, the count check names the day.
    code, day, name = pipeline.query(
        "SELECT code, update_date, code_name FROM raw_hs300_stocks WHERE update_date = %s "
        "ORDER BY code LIMIT 1",
        REVIEWS[1],
    )[0]
    pipeline.query("DELETE FROM raw_hs300_stocks WHERE code = %s AND update_date = %s", code, day)
    result = pipeline.materialize(["index_constituents"])
    count = {e.check_name: e for e in result.get_asset_check_evaluations()}[
        "index_constituents_member_count_check"
    ]
    assert not count.passed and count.severity == dg.AssetCheckSeverity.ERROR
    assert count.metadata["other_counts"].value == [f"sh.000300 {day}: 299 members (snapshot 299)"]
    assert all(v for k, v in check_outcomes(result).items() if k != count.check_name)
    # An interval overlapping another of the same code; a member the snapshots do not have.
    pipeline.query(
        "INSERT INTO index_constituents (index_code, code, valid_from, valid_to) "
        "SELECT index_code, code, valid_from + 1, NULL FROM index_constituents "
        "WHERE index_code = 'sh.000016' ORDER BY code, valid_from LIMIT 1"
    )
    found = _run_checks(pipeline, "index_constituents")
    assert not found["index_constituents_no_overlap_check"].passed
    assert not found["index_constituents_raw_reconciliation_check"].passed
    # A bar whose high is below its low, in index_daily only.
    bar = "WHERE code = 'sh.000300' AND trade_date = %s"
    high = pipeline.query(f"SELECT high FROM index_daily {bar}", END)[0][0]
    pipeline.query(f"UPDATE index_daily SET high = low - 1 {bar}", END)
    bars = {
        name: e.passed for name, e in _run_checks(pipeline, "index_daily", (START, END)).items()
    }
    assert bars == {
        "index_daily_ohlc_sanity_check": False,
        "index_daily_key_uniqueness_check": True,
        "index_daily_raw_reconciliation_check": False,
    }
    # Repaired: the bar and the raw row back, index_constituents rebuilt.
    pipeline.query(f"UPDATE index_daily SET high = %s {bar}", high, END)
    pipeline.query(
        "INSERT INTO raw_hs300_stocks (update_date, code, code_name) VALUES (%s, %s, %s)",
        day,
        code,
        name,
    )
    assert pipeline.materialize(["index_constituents"]).success
    assert pipeline.checksums(TABLES) == before


@pytest.mark.slow
def test_dagster_cli_materializes_a_range_of_index_bars(
    synced: Synced, make_pipeline: Callable[..., Pipeline]
):
    ranged = synced[0]
    pipeline = make_pipeline(calendar=False)
    run = pipeline.cli(
        "--select",
        "key:raw_index_daily or key:index_daily",
        "--partition-range",
        f"{START}...{END}",
    )
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out[-3000:]
    bars = {t: TABLES[t] for t in BARS}
    assert pipeline.checksums(bars) == ranged.checksums(bars)
