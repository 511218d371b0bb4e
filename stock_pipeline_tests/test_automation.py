"""The automation layer on the simulator's market: the daily schedule on trading days, weekends
and holidays; the integrity sensor against a real warehouse (deleted and incomplete days, runs in
flight, a gap lost again, downtime filled without re-fetching what exists); the `baostock` pool
keeping overlapping runs within the session budget. Real PostgreSQL, Redis and baostock client.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from stock_pipeline.automation.gaps import find_gaps, group_runs, read_counts
from stock_pipeline.automation.integrity import build_integrity_sensor
from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorServer
from stock_pipeline.calendar import load_calendar
from stock_pipeline.instance import initialize_pools, prepare_instance
from stock_pipeline.resources import WarehouseResource
from stock_pipeline.settings import Settings
from stock_pipeline.warehouse import migrate
from stock_pipeline.warehouse.urls import sqlalchemy_url
from stock_pipeline_tests.pipeline import DAILY, REFERENCE, Pipeline

D = dt.date
SHANGHAI = ZoneInfo("Asia/Shanghai")
FIRST, LAST = D(2024, 6, 3), D(2024, 7, 12)  # 29 trading days (Dragon Boat on 06-10)
SIM = SimulatorConfig(seed=11, n_codes=30, end=D(2024, 12, 31))
GRAPH = [*DAILY, "technical_daily", "redis_cache"]
FROM_STOCK_DAILY = ("stock_daily", "technical_daily", "redis_cache")
FROM_K_DAILY = ("raw_k_daily", "raw_adjust_factor", *FROM_STOCK_DAILY)


def evening(day: dt.date, hour: int = 18) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=SHANGHAI)


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SIM) as sim:
        yield sim


@pytest.fixture(scope="module")
def make_pipeline(
    simulator: SimulatorServer, make_database: Callable[[], str], redis_url: str, tmp_path_factory
) -> Callable[[dt.date], Pipeline]:
    def make(through: dt.date = LAST) -> Pipeline:
        dsn = make_database()
        migrate.upgrade(dsn)
        pipeline = Pipeline(
            simulator,
            tmp_path_factory.mktemp("home"),
            dsn,
            STOCK_PIPELINE_START_DATE=FIRST.isoformat(),
            STOCK_PIPELINE_REDIS_URL=redis_url,
            STOCK_PIPELINE_CACHE_PREFIX=f"test_{uuid.uuid4().hex[:8]}",
            STOCK_PIPELINE_INTEGRITY_DAYS="30",
        )
        assert pipeline.materialize(REFERENCE).success
        assert pipeline.materialize(GRAPH, FIRST, through).success
        return pipeline

    return make


class Sensor:
    """The integrity sensor of a pipeline, ticking at a chosen evening, with its cursor kept."""

    def __init__(self, pipeline: Pipeline, instance: dg.DagsterInstance):
        self.pipeline, self.instance = pipeline, instance
        self.cursor: str | None = None

    def tick(self, day: dt.date) -> dg.SensorResult | None:
        env = self.pipeline.env
        settings = Settings.from_env(env)
        calendar = load_calendar(self.pipeline.home)
        sensor = build_integrity_sensor(calendar, settings, "daily_job", clock=lambda: evening(day))
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            context = dg.build_sensor_context(
                instance=self.instance,
                cursor=self.cursor,
                resources={"warehouse": WarehouseResource()},
                repository_def=self.pipeline.definitions().get_repository_def(),
            )
            data = sensor.evaluate_tick(context)
        self.cursor = data.cursor
        return data

    def requested(self, day: dt.date) -> list[tuple[tuple[str, ...], str]]:
        """(selection, partition or range) of each run the tick at `day` requests."""
        return [(_selection(r), _partitions(r)) for r in self.tick(day).run_requests or []]

    def fill(self, day: dt.date) -> None:
        """Tick and run what it requests, in process (as the daemon would launch it)."""
        data = self.tick(day)
        job = self.pipeline.definitions().resolve_job_def("daily_job")
        with pytest.MonkeyPatch.context() as patch:
            for name, value in self.pipeline.env.items():
                patch.setenv(name, value)
            for request in data.run_requests or []:
                result = job.execute_in_process(
                    instance=self.instance,
                    asset_selection=request.asset_selection,
                    partition_key=request.partition_key,
                    tags=request.tags,
                )
                assert result.success


def _selection(request: dg.RunRequest) -> tuple[str, ...]:
    return tuple(k.to_user_string() for k in request.asset_selection or ())


def _partitions(request: dg.RunRequest) -> str:
    if request.partition_key:
        return request.partition_key
    return request.tags["stock_pipeline/gaps"]


# -- the schedule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (evening(D(2024, 7, 12), 17), None),  # Friday before 17:30: not due yet
        (dt.datetime(2024, 7, 12, 17, 30, tzinfo=SHANGHAI), "2024-07-12"),  # trading Friday
        (dt.datetime(2024, 7, 13, 17, 30, tzinfo=SHANGHAI), None),  # Saturday
        (dt.datetime(2024, 10, 2, 17, 30, tzinfo=SHANGHAI), None),  # National Day, a Wednesday
        (dt.datetime(2024, 10, 8, 17, 30, tzinfo=SHANGHAI), "2024-10-08"),  # first day after
    ],
)
def test_daily_schedule_requests_the_day_on_trading_days_only(
    make_database: Callable[[], str], simulator: SimulatorServer, tmp_path, when, expected
):
    pipeline = Pipeline(simulator, tmp_path, "postgresql://unused@127.0.0.1:1/none")
    defs = pipeline.definitions()
    schedule = defs.get_schedule_def("daily_schedule")
    assert schedule.cron_schedule == "30 17 * * *"
    assert schedule.execution_timezone == "Asia/Shanghai"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    if when.minute != 30:  # the schedule only fires at 17:30: off-time ticks do not exist
        return
    with dg.build_schedule_context(scheduled_execution_time=when) as context:
        data = schedule.evaluate_tick(context)
    keys = [r.partition_key for r in data.run_requests or []]
    assert keys == ([expected] if expected else [])
    if expected:
        job = defs.resolve_job_def("daily_job")
        assert data.run_requests[0].job_name in (None, job.name)
        assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} >= {
            *REFERENCE,
            *GRAPH,
        }


def test_daily_assets_declare_freshness(simulator: SimulatorServer, tmp_path):
    defs = Pipeline(simulator, tmp_path, "postgresql://unused@127.0.0.1:1/none").definitions()
    for node in defs.resolve_asset_graph().asset_nodes:
        policy = node.freshness_policy
        if node.key.to_user_string() in GRAPH:
            assert policy is not None and policy.deadline_cron == "30 18 * * 1-5"
            assert policy.lower_bound_delta == dt.timedelta(hours=1)
        else:
            assert policy is None


# -- the gap rules (pure) ---------------------------------------------------------------------


def test_gap_rules_group_consecutive_days_with_the_same_needs():
    sessions = [D(2024, 7, d) for d in (1, 2, 3, 4, 5, 8)]
    runs = group_runs(
        {"raw_all_stock": [D(2024, 7, 2), D(2024, 7, 3), D(2024, 7, 8)],
         "stock_daily": [D(2024, 7, 5)]},
        sessions,
    )  # fmt: skip
    full = ("raw_all_stock", "raw_k_daily", "raw_adjust_factor", *FROM_STOCK_DAILY)
    assert runs == [
        (full, D(2024, 7, 2), D(2024, 7, 3)),
        (FROM_STOCK_DAILY, D(2024, 7, 5), D(2024, 7, 5)),
        (full, D(2024, 7, 8), D(2024, 7, 8)),
    ]


# -- the integrity sensor ---------------------------------------------------------------------


def test_sensor_requests_exactly_the_gaps_and_nothing_in_flight(
    make_pipeline: Callable[..., Pipeline],
):
    pipeline = make_pipeline()
    instance = dg.DagsterInstance.ephemeral()
    sensor = Sensor(pipeline, instance)
    assert sensor.requested(LAST) == []
    assert "no gaps in 29 trading days" in sensor.tick(LAST).skip_message

    deleted, partial = D(2024, 7, 3), D(2024, 6, 20)
    pipeline.query("DELETE FROM stock_daily WHERE trade_date = %s", deleted)
    pipeline.query(
        "DELETE FROM raw_k_daily WHERE trade_date = %s AND code IN "
        "(SELECT code FROM raw_k_daily WHERE trade_date = %s ORDER BY code LIMIT 10)",
        partial,
        partial,
    )
    with psycopg_connection(pipeline) as conn:
        gaps = find_gaps(read_counts(conn, [partial, deleted]), tolerance=0.0)
    assert [(g.asset, g.day) for g in gaps] == [("raw_k_daily", partial), ("stock_daily", deleted)]
    assert gaps[0].reason.startswith("incomplete: ") and gaps[1].reason == "missing"

    assert sorted(sensor.requested(LAST)) == [
        (FROM_K_DAILY, "2024-06-20"),
        (FROM_STOCK_DAILY, "2024-07-03"),
    ]
    # Requested a moment ago and still missing: held back (a failing day is not hammered).
    assert sensor.requested(LAST) == []
    assert "requested less than" in sensor_log(sensor, LAST)

    # A fresh sensor (no cursor): a running run already covers the deleted day.
    fresh = Sensor(pipeline, instance)
    create_run_for_test(
        instance,
        job_name="daily_job",
        status=dg.DagsterRunStatus.STARTED,
        asset_selection=frozenset({dg.AssetKey("stock_daily")}),
        tags={"dagster/partition": "2024-07-03"},
    )
    assert fresh.requested(LAST) == [(FROM_K_DAILY, "2024-06-20")]


def test_a_gap_filled_and_lost_again_is_requested_again(make_pipeline: Callable[..., Pipeline]):
    pipeline = make_pipeline()
    sensor = Sensor(pipeline, dg.DagsterInstance.ephemeral())
    day = D(2024, 7, 10)
    before = pipeline.checksums({"stock_daily": "code, trade_date"})
    pipeline.query("DELETE FROM stock_daily WHERE trade_date = %s", day)
    sensor.fill(LAST)
    assert pipeline.checksums({"stock_daily": "code, trade_date"}) == before
    assert sensor.requested(LAST) == []
    pipeline.query("DELETE FROM stock_daily WHERE trade_date = %s", day)  # lost again
    assert sensor.requested(LAST) == [(FROM_STOCK_DAILY, "2024-07-10")]


def test_downtime_is_filled_without_refetching_present_days(
    make_pipeline: Callable[..., Pipeline], simulator: SimulatorServer
):
    """The daemon stopped after 2024-07-09; three trading days later it starts again."""
    pipeline = make_pipeline(through=D(2024, 7, 9))
    present = pipeline.query("SELECT count(*) FROM stock_daily")[0][0]
    sensor = Sensor(pipeline, dg.DagsterInstance.ephemeral())
    assert sensor.requested(LAST) == [(("raw_all_stock", *FROM_K_DAILY), "2024-07-10..2024-07-12")]
    sensor.cursor = None
    served = simulator.stats.requests.copy()
    sensor.fill(LAST)
    after = simulator.stats.requests
    listed = pipeline.query(
        "SELECT count(DISTINCT code) FROM raw_all_stock WHERE trade_date = %s", LAST
    )[0][0]
    assert after["query_all_stock"] - served["query_all_stock"] == 3  # one per missing day
    k_requests = after["query_history_k_data_plus"] - served["query_history_k_data_plus"]
    assert 0 < k_requests <= listed  # one ranged request per code at most, none for old days
    rows = dict(
        pipeline.query(
            "SELECT trade_date, count(*) FROM stock_daily WHERE trade_date > %s "
            "GROUP BY trade_date",
            D(2024, 7, 9),
        )
    )
    assert set(rows) == {D(2024, 7, 10), D(2024, 7, 11), D(2024, 7, 12)}
    assert pipeline.query("SELECT count(*) FROM stock_daily WHERE trade_date <= %s",
                          D(2024, 7, 9))[0][0] == present  # fmt: skip
    assert sensor.requested(LAST) == []


@pytest.mark.slow
def test_backfill_command_fills_only_the_gaps_and_status_names_them(
    make_pipeline: Callable[..., Pipeline], capsys: pytest.CaptureFixture[str]
):
    from stock_pipeline.cli import main

    pipeline = make_pipeline(through=D(2024, 6, 28))
    deleted = D(2024, 6, 19)
    pipeline.query("DELETE FROM stock_daily WHERE trade_date = %s", deleted)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in pipeline.env.items():
            patch.setenv(name, value)
        assert main(["backfill", "--start", "2024-06-17", "--end", "2024-06-28"]) == 0
        out = capsys.readouterr().out
        assert "1 run(s) to fill:\n  2024-06-19: stock_daily, technical_daily, redis_cache" in out
        assert "[" + "#" * 30 + "] 1/1" in out  # the progress bar, full
        assert pipeline.query("SELECT count(*) FROM stock_daily WHERE trade_date = %s", deleted)
        assert main(["backfill", "--start", "2024-06-17", "--end", "2024-06-28"]) == 0
        assert "nothing to do: 2024-06-17..2024-06-28 is complete" in capsys.readouterr().out
        assert main(["backfill", "--start", "2024-06-17", "--end", "2099-01-05"]) == 2
        assert "is not published yet" in capsys.readouterr().err
        assert main(["backfill", "--start", "2024-06-17", "--end", "2024-06-28",
                     "--select", "nope"]) == 2  # fmt: skip
        assert "unknown daily asset(s) nope" in capsys.readouterr().err


def test_status_reads_the_cache_day_from_its_version(redis_url: str):
    import redis

    from stock_pipeline.cache.keys import CacheKeys, make_version
    from stock_pipeline.status import _cache_day

    prefix = f"test_{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(CacheKeys(prefix).current, make_version(LAST, dt.datetime.now(dt.UTC)))
        assert _cache_day(Settings(cache_prefix=prefix), redis_url) == LAST
    finally:
        client.delete(CacheKeys(prefix).current)
        client.close()


def sensor_log(sensor: Sensor, day: dt.date) -> str:
    """The tick's skip message (what its log line also says)."""
    return sensor.tick(day).skip_message or ""


class psycopg_connection:  # noqa: N801 (used as a context manager, like the driver's own)
    def __init__(self, pipeline: Pipeline):
        import psycopg2

        self.connection = psycopg2.connect(pipeline.dsn)

    def __enter__(self):
        return self.connection

    def __exit__(self, *exc) -> None:
        self.connection.close()


# -- the session budget across runs -----------------------------------------------------------


def _overlapping_raw_runs(
    make_database: Callable[[], str], tmp_path, budget: int
) -> tuple[int, list[int]]:
    """Two `dagster asset materialize` runs of raw_k_daily started together against one
    instance whose dagster.yaml is written from the settings; the simulator's peak of open
    connections (= BaoStock sessions held at once) and the runs' exit codes."""
    config = SimulatorConfig(seed=3, n_codes=48, end=D(2024, 12, 31), latency_ms=250)
    with SimulatorServer(config) as sim:
        dsn = make_database()
        migrate.upgrade(dsn)
        pipeline = Pipeline(
            sim, tmp_path / "home", dsn,
            STOCK_PIPELINE_START_DATE=FIRST.isoformat(),
            STOCK_PIPELINE_BAOSTOCK_SESSION_BUDGET=str(budget),
        )  # fmt: skip
        assert pipeline.materialize(REFERENCE).success
        assert pipeline.materialize(["raw_all_stock"], FIRST, D(2024, 6, 14)).success
        storage = make_database()
        settings = Settings.from_env(pipeline.env)
        home = prepare_instance(
            pipeline.home,
            sqlalchemy_url(storage, "psycopg2").render_as_string(hide_password=False),
            settings,
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DAGSTER_HOME", str(home))
            with dg.DagsterInstance.get() as instance:
                initialize_pools(instance)  # as stock-pipeline dev/demo/backfill do
        env = {**os.environ, **pipeline.env, "DAGSTER_HOME": str(home)}
        command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m",
                   "stock_pipeline.definitions", "--select", "raw_k_daily",
                   "--partition-range"]  # fmt: skip
        ranges = ("2024-06-03...2024-06-07", "2024-06-11...2024-06-14")
        logs = [tmp_path / f"run{i}.log" for i in range(len(ranges))]
        children = [
            subprocess.Popen([*command, r], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
            for r, log in zip(ranges, logs, strict=True)
        ]
        codes = [child.wait(timeout=240) for child in children]
        for code, log in zip(codes, logs, strict=True):
            if code:
                print(log.read_text()[-3000:])
        return sim.stats.peak_connections, codes


@pytest.mark.slow
def test_overlapping_runs_hold_no_more_sessions_than_the_budget(
    make_database: Callable[[], str], tmp_path
):
    peak, codes = _overlapping_raw_runs(make_database, tmp_path / "budget4", budget=4)
    assert codes == [0, 0]
    assert peak <= 4, f"{peak} BaoStock sessions open at once with a budget of 4"
    # The measure can fail: with room for two raw steps, the two runs do overlap.
    peak, codes = _overlapping_raw_runs(make_database, tmp_path / "budget8", budget=8)
    assert codes == [0, 0]
    assert peak > 4, f"the runs did not overlap (peak {peak}): the test proves nothing"
