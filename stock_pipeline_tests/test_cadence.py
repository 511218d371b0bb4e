"""The slower groups' schedules (automation/cadence.py): which partitions each one requests on
its day, and the runs that cover a range (what the demo launches). No server needed: schedules
are evaluated on the definitions the code location builds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from stock_pipeline.assets.partitions import build_partitions
from stock_pipeline.automation import cadence
from stock_pipeline.calendar import load_calendar
from stock_pipeline.definitions import build_definitions
from stock_pipeline.settings import Settings

D = dt.date
SHANGHAI = ZoneInfo("Asia/Shanghai")
RANGE = (cadence.RANGE_START, cadence.RANGE_END)


@pytest.fixture(scope="module")
def defs(tmp_path_factory) -> dg.Definitions:
    home: Path = tmp_path_factory.mktemp("home")
    return build_definitions(
        Settings.from_env(
            {"STOCK_PIPELINE_HOME": str(home), "STOCK_PIPELINE_START_DATE": "2021-01-04"}
        )
    )


def tick(defs: dg.Definitions, name: str, at: dt.datetime) -> list[dg.RunRequest]:
    schedule = defs.resolve_schedule_def(name)
    with dg.build_schedule_context(
        instance=dg.DagsterInstance.ephemeral(), scheduled_execution_time=at
    ) as context:
        data = schedule.evaluate_tick(context)
    return list(data.run_requests or [])


def at(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=SHANGHAI)


def test_financials_refetch_the_periods_still_unsettled(defs: dg.Definitions):
    # Saturday 2026-05-09, 60 days of grace: the annual report 2025 and Q1 2026 (both due by
    # April 30) are unsettled; Q3 2025 (due Oct 31 + 60 days) settled long ago.
    (request,) = tick(defs, cadence.FINANCIALS_SCHEDULE, at(D(2026, 5, 9), 9))
    assert request.job_name == cadence.FINANCIALS_JOB
    assert tuple(request.tags[t] for t in RANGE) == ("2025-10-01", "2026-01-01")
    # On the last Saturday of Q3 2025's grace it is re-fetched once more, then never again.
    settled = D(2025, 10, 31) + dt.timedelta(days=60)
    periods = cadence.unsettled_periods(D(2026, 1, 3), 60, since=D(2025, 12, 27))
    assert (2025, 3) in periods and settled < D(2026, 1, 3)
    assert (2025, 3) not in cadence.unsettled_periods(D(2026, 1, 10), 60, since=D(2026, 1, 3))


def test_corporate_actions_take_the_years_of_the_past_week(defs: dg.Definitions):
    (request,) = tick(defs, cadence.CORPORATE_SCHEDULE, at(D(2026, 1, 3), 9))
    assert tuple(request.tags[t] for t in RANGE) == ("2025-01-01", "2026-01-01")
    (request,) = tick(defs, cadence.CORPORATE_SCHEDULE, at(D(2026, 6, 6), 9))
    assert tuple(request.tags[t] for t in RANGE) == ("2026-01-01", "2026-01-01")


def test_weekly_and_monthly_bars_take_the_period_that_ended(defs: dg.Definitions):
    (week,) = tick(defs, cadence.WEEKLY_BARS_SCHEDULE, at(D(2026, 6, 8), 8))  # a Monday
    assert week.partition_key == "2026-06-01"
    (month,) = tick(defs, cadence.MONTHLY_BARS_SCHEDULE, at(D(2026, 7, 1), 8))
    assert month.partition_key == "2026-06-01"


def test_every_slower_group_has_a_job_and_a_schedule(defs: dg.Definitions):
    repository = defs.get_repository_def()
    schedules = {s.name: s.job_name for s in repository.schedule_defs}
    for job, schedule in (
        (cadence.FINANCIALS_JOB, cadence.FINANCIALS_SCHEDULE),
        (cadence.CORPORATE_JOB, cadence.CORPORATE_SCHEDULE),
        (cadence.SNAPSHOTS_JOB, cadence.SNAPSHOTS_SCHEDULE),
        (cadence.WEEKLY_BARS_JOB, cadence.WEEKLY_BARS_SCHEDULE),
        (cadence.MONTHLY_BARS_JOB, cadence.MONTHLY_BARS_SCHEDULE),
        (cadence.MACRO_JOB, cadence.MACRO_SCHEDULE),
    ):
        assert schedules[schedule] == job
        assert repository.get_job(job).asset_layer.executable_asset_keys


def test_covering_runs_of_a_range(tmp_path: Path):
    partitions = build_partitions(load_calendar(tmp_path), D(2021, 1, 4))
    runs = {
        r.selection: r.keys
        for r in cadence.covering_runs(partitions, D(2025, 3, 3), D(2025, 6, 30))
    }
    # Statements: the periods in the range and the half year before it.
    assert runs[cadence.FINANCIALS_SELECTION] == ("2024-10-01", "2025-04-01")
    assert runs[cadence.CORPORATE_SELECTION] == ("2025-01-01", "2025-01-01")
    assert runs[cadence.WEEKLY_SELECTION] == ("2025-03-03", "2025-06-23")
    assert runs[cadence.MONTHLY_SELECTION] == ("2025-04-01", "2025-06-01")  # whole months
    assert runs[cadence.UNPARTITIONED_SELECTION] is None
