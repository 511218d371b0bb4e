"""Benchmark: the daily graph through Dagster (P0 raw, ETL, indicators, cache), from an empty
warehouse.

    uv run python benchmarks/backfill.py [--years 5] [--codes 5000] [--skip-latency]

1. backfill: `dagster asset materialize --select 'group:p0 or group:etl or group:indicators or
   group:cache' --partition-range` over `--years` years of trading days for every simulator
   code, into a fresh embedded PostgreSQL and Redis, with the simulator in its own process at
   0 ms latency (prewarmed: it serves precomputed markets, as a real server would). Measured:
   wall time of the CLI run, seconds per stage from the run's metadata and step events (the
   indicator stage is technical_daily's step: its read, compute and write), peak memory of the
   run process and all its workers (sum of RSS over the process tree, sampled), BaoStock k-line
   requests per code;
2. increment: the next trading day on top, the same way; BaoStock messages per code (queries,
   pages and logins, from the assets' metadata);
3. indicator throughput: bars per second of compute/indicators.py over every stored bar (in
   the asset's code batches) against the original's way, pandas one stock at a time with KDJ
   in a Python loop (indicator_baseline.py), on a sample of codes;
4. daily job: the next trading day through the automation: the daily schedule evaluated at
   that day's run time (17:30 Shanghai) must request exactly that partition of `daily_job`
   (references + the daily graph), which then runs on the benchmark's Dagster instance, in
   this process (in-process executor: no worker processes, unlike the CLI runs above).
   Measured: wall time of the run, BaoStock messages, steps;
5. integrity sensor: three gaps cut into the last 30 trading days (one day's stock_daily rows
   deleted, half of another day's raw_k_daily rows, a third day's technical_daily rows), then
   the sensor's tick at that evening, several times with a fresh cursor: seconds per tick, gaps
   found and runs requested, and the seconds of its counting query alone. The requested runs
   are executed afterwards, and a last tick should request nothing;
6. fetch stage alone against a simulator with 50 ms latency and 8 sessions: requests/s against
   the bound C/L, for the daily increment's requests (one day per code) and for the backfill's
   (the whole range per code, on a subset of codes).

Prints one JSON object per line; the last line is the summary. Later issues add their stages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import groups
import psutil
from common import emit

from stock_pipeline.baostock.fetch import fetch_daily_bars
from stock_pipeline.baostock.pool import BaostockPool, PoolConfig
from stock_pipeline.baostock.simulator import SimulatorConfig, SimulatorProcess
from stock_pipeline.calendar import load_calendar
from stock_pipeline.instance import embedded_storage_url, prepare_instance
from stock_pipeline.settings import Settings

SELECTION = f"group:p0 or group:etl or group:indicators or group:cache or {groups.DAY_EXTRA}"
RAW_ASSETS = ("raw_trade_dates", "raw_stock_basic", "raw_all_stock", "raw_k_daily",
              "raw_adjust_factor")  # fmt: skip
ETL_ASSETS = ("stocks", "trade_calendar", "stock_daily")
INDICATOR_ASSET, CACHE_ASSET = "technical_daily", "redis_cache"


class TreeMemory:
    """Peak summed RSS of a process and all its descendants, sampled every `every` s."""

    def __init__(self, pid: int, every: float = 0.2):
        self.root = psutil.Process(pid)
        self.every = every
        self.peak_sum = 0
        self.peak_single = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            sizes = []
            for process in processes:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            self.peak_sum = max(self.peak_sum, sum(sizes))
            self.peak_single = max([self.peak_single, *sizes])
            time.sleep(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_cli(env: dict[str, str], *args: str, log: Path, select: str = SELECTION) -> dict[str, Any]:
    """One `dagster asset materialize` run; wall time, peak memory, exit code."""
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m",
               "stock_pipeline.definitions", "--select", select, *args]  # fmt: skip
    began = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        memory = TreeMemory(child.pid)
        try:
            code = child.wait()
        finally:
            memory.stop()
            if child.poll() is None:  # interrupted: stop the run and everything it started
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    wall = time.perf_counter() - began
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"run failed (exit {code}); {log}:\n" + "\n".join(tail))
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(memory.peak_sum / 2**20),
        "peak_single_process_rss_mb": round(memory.peak_single / 2**20),
    }


def run_report(dagster_home: Path) -> dict[str, Any]:
    """Metadata per asset and step durations of the newest run in the instance."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.get()
    run = instance.get_runs(limit=1)[0]
    metadata: dict[str, dict[str, Any]] = {}
    for record in instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records:
        materialization = (
            record.event_log_entry.dagster_event.step_materialization_data.materialization
        )
        metadata[materialization.asset_key.to_user_string()] = {
            k: getattr(v, "value", v) for k, v in materialization.metadata.items()
        }
    starts: dict[str, float] = {}
    steps: dict[str, float] = {}
    for record in instance.get_records_for_run(run.run_id).records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[entry.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            steps[entry.step_key] = entry.timestamp - starts.get(entry.step_key, entry.timestamp)
    return {"run_id": run.run_id, "metadata": metadata, "steps": steps}


def stage_seconds(report: dict[str, Any]) -> dict[str, float]:
    metadata, steps = report["metadata"], report["steps"]

    def total(assets: tuple[str, ...], key: str) -> float:
        return sum(metadata.get(a, {}).get(key, 0.0) for a in assets)

    checks = sum(s for name, s in steps.items() if name.endswith("_check"))
    indicators = metadata.get(INDICATOR_ASSET, {})
    return {
        "fetch": round(total(RAW_ASSETS, "seconds_fetch"), 1),
        "raw_write": round(total(RAW_ASSETS, "seconds_write"), 1),
        "etl": round(sum(steps.get(a, 0.0) for a in ETL_ASSETS), 1),
        "indicators": round(steps.get(INDICATOR_ASSET, 0.0), 1),
        "indicators_read": round(indicators.get("seconds_read", 0.0), 1),
        "indicators_compute": round(indicators.get("seconds_compute", 0.0), 1),
        "indicators_write": round(indicators.get("seconds_write", 0.0), 1),
        "cache": round(steps.get(CACHE_ASSET, 0.0), 1),
        "checks": round(checks, 1),
    }


def messages(report: dict[str, Any]) -> int:
    """BaoStock messages of the run: queries (pages included) and logins."""
    metadata = report["metadata"]
    return sum(
        metadata.get(a, {}).get("baostock_requests", 0)
        + metadata.get(a, {}).get("baostock_logins", 0)
        for a in RAW_ASSETS
    )


async def fetch_alone(
    endpoint: tuple[str, int], codes: list[str], start: dt.date, end: dt.date, sessions: int
) -> dict[str, Any]:
    config = PoolConfig(endpoint=endpoint, concurrency=sessions, qps=100_000, request_timeout_s=60)
    async with BaostockPool(config) as pool:
        began = time.perf_counter()
        result = await fetch_daily_bars(pool, codes, start, end, on_batch=lambda frame: None)
        seconds = time.perf_counter() - began
    return {"requests": result.server_requests, "seconds": seconds, "failed": len(result.failures)}


def latency_stage(
    market: SimulatorConfig,
    codes: list[str],
    backfill: tuple[dt.date, dt.date],
    day: dt.date,
    sample: int,
) -> dict[str, Any]:
    """The same market served with 50 ms added to every request."""
    config = replace(market, latency_ms=50)
    bound = 8 / 0.050
    out: dict[str, Any] = {}
    with SimulatorProcess(config) as sim:
        endpoint = (sim.host, sim.port)
        for key, stage, subset, (start, end) in (
            ("daily", "fetch_c8_50ms_one_day", codes, (day, day)),
            ("range", "fetch_c8_50ms_backfill_range", codes[:sample], backfill),
        ):
            measured = asyncio.run(fetch_alone(endpoint, subset, start, end, 8))
            rate = measured["requests"] / measured["seconds"]
            out[key] = {
                "codes": len(subset),
                **measured,
                "requests_per_s": round(rate, 1),
                "bound_ratio": round(rate / bound, 3),
            }
            emit({"stage": stage, **out[key]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--codes", type=int, default=5000)
    parser.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2025, 12, 31))
    parser.add_argument(
        "--latency-sample", type=int, default=800, help="codes for the 50 ms range fetch"
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--baseline-codes", type=int, default=200, help="codes for the per-code pandas baseline"
    )
    parser.add_argument(
        "--sensor-ticks", type=int, default=5, help="integrity sensor ticks to time"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="sp-backfill-"))
    os.chmod(home, 0o711)  # the embedded PostgreSQL's user must reach its data under root
    calendar = load_calendar(None)
    first = calendar.first_session_on_or_after(dt.date(args.end.year - args.years + 1, 1, 1))
    last = max(calendar.sessions_between(first, args.end))
    increment = calendar.next_session(last)
    assert first and increment
    daily_day = calendar.next_session(increment)  # the daily job's day, after the increment
    assert daily_day
    emit(
        {
            "stage": "plan",
            "start": first,
            "end": last,
            "trading_days": len(calendar.sessions_between(first, last)),
            "increment": increment,
            "daily_job_day": daily_day,
            "home": home,
        }
    )

    from stock_pipeline.embedded.postgres import EmbeddedPostgres
    from stock_pipeline.embedded.redis import EmbeddedRedis
    from stock_pipeline.warehouse import migrate

    postgres = EmbeddedPostgres(home / "postgres").start()
    redis = EmbeddedRedis(home / "redis").start()
    config = SimulatorConfig(
        seed=7, n_codes=args.codes, end=daily_day + dt.timedelta(days=7), prewarm=True
    )
    try:
        began = time.perf_counter()
        with SimulatorProcess(config) as sim:
            emit(
                {
                    "stage": "simulator",
                    "endpoint": sim.endpoint,
                    "prewarm_s": round(time.perf_counter() - began, 1),
                }
            )
            url = postgres.ensure_database("stock_pipeline")
            migrate.upgrade(url)
            # The Dagster instance as the demo keeps it: run storage in its own database on the
            # embedded PostgreSQL.
            dagster_home = prepare_instance(home, embedded_storage_url(postgres), Settings())
            env = {
                **os.environ,
                "DAGSTER_HOME": str(dagster_home),
                "STOCK_PIPELINE_HOME": str(home),
                "STOCK_PIPELINE_DATABASE_URL": url,
                "STOCK_PIPELINE_REDIS_URL": redis.url(),
                "STOCK_PIPELINE_BAOSTOCK_ENDPOINT": sim.endpoint,
                "STOCK_PIPELINE_BAOSTOCK_QPS": "100000",
                "STOCK_PIPELINE_START_DATE": first.isoformat(),
            }
            backfill = run_cli(
                env, "--partition-range", f"{first}...{last}", log=home / "backfill.log"
            )
            report = run_report(dagster_home)
            raw_k = report["metadata"]["raw_k_daily"]
            backfill.update(
                stages=stage_seconds(report),
                bars=raw_k["dagster/row_count"],
                codes=raw_k["keys_requested"],
                kline_requests_per_code=raw_k["kline_requests_per_code"],
                steps={k: round(v, 1) for k, v in report["steps"].items()},
            )
            emit({"stage": "backfill", **backfill})
            slower = groups.run_groups(
                first,
                last,
                lambda *a, **k: run_cli(env, *a, **k),
                lambda: run_report(dagster_home),
                home,
            )
            p1_latency = (
                {}
                if args.skip_latency
                else groups.p1_latency_stage(config, url, *groups.periods(first, last)[-2])
            )
            inc = run_cli(env, "--partition", increment.isoformat(), log=home / "increment.log")
            inc_report = run_report(dagster_home)
            codes = inc_report["metadata"]["raw_k_daily"]["keys_requested"]
            inc.update(
                stages=stage_seconds(inc_report),
                codes=codes,
                baostock_messages=messages(inc_report),
                requests_per_code=round(messages(inc_report) / codes, 4),
                steps={k: round(v, 1) for k, v in inc_report["steps"].items()},
            )
            emit({"stage": "increment", **inc})
            universe = sorted(c for c in sim_codes(url))
            throughput = indicator_throughput(url, args.baseline_codes)
            emit({"stage": "indicator_throughput", **throughput})
            # Last: they add a day and then cut holes into the warehouse the stages above read.
            daily = daily_job_stage(env, dagster_home, daily_day)
            emit({"stage": "daily_job", **daily})
            sensor = sensor_stage(env, dagster_home, url, daily_day, args.sensor_ticks)
            emit({"stage": "integrity_sensor", **sensor})
    finally:
        redis.stop()
        postgres.stop()
    latency = (
        {}
        if args.skip_latency
        else latency_stage(config, universe, (first, last), increment, args.latency_sample)
    )
    emit(
        {
            "summary": "backfill",
            "years": args.years,
            "codes": backfill["codes"],
            "bars": backfill["bars"],
            "wall_s": backfill["wall_s"],
            "whole_graph_wall_s": round(
                backfill["wall_s"] + sum(r["wall_s"] for r in slower.values()), 1
            ),
            "whole_graph_peak_rss_mb": max(
                [backfill["peak_rss_mb"], *(r["peak_rss_mb"] for r in slower.values())]
            ),
            "group_wall_s": {k: r["wall_s"] for k, r in slower.items()},
            "group_baostock_messages": {k: r["baostock_messages"] for k, r in slower.items()},
            "p1_quarter_requests": p1_latency.get("requests"),
            "p1_quarter_bound_ratio_c8_50ms": p1_latency.get("bound_ratio"),
            "p1_requests_saved_unlisted_min": p1_latency.get("requests_saved_unlisted_min"),
            "stage_s": backfill["stages"],
            "peak_rss_mb": backfill["peak_rss_mb"],
            "indicators_s": backfill["stages"]["indicators"],
            "indicator_bars_per_s": throughput["vectorised_bars_per_s"],
            "indicator_per_code_loop_bars_per_s": throughput["per_code_loop_bars_per_s"],
            "indicator_speedup": throughput["speedup"],
            "cache_s": backfill["stages"]["cache"],
            "kline_requests_per_code": backfill["kline_requests_per_code"],
            "increment_wall_s": inc["wall_s"],
            "increment_requests_per_code": inc["requests_per_code"],
            "daily_job_wall_s": daily["wall_s"],
            "daily_job_requests": daily["baostock_messages"],
            "sensor_tick_s_median": sensor["tick_s_median"],
            "sensor_tick_s_max": sensor["tick_s_max"],
            "sensor_gaps": sensor["gaps"],
            "sensor_runs_requested": sensor["runs_requested"],
            "sensor_count_query_s": sensor["count_query_s_median"],
            "fetch_bound_ratio_c8_50ms": latency.get("daily", {}).get("bound_ratio"),
            "fetch_bound_ratio_c8_50ms_backfill_range": latency.get("range", {}).get("bound_ratio"),
            "load_avg": load_average(),
        }
    )
    if not args.keep:
        import shutil

        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ as `env` while runs and ticks execute in this process: the definitions and
    resources read the STOCK_PIPELINE_* settings from it."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def daily_job_stage(env: dict[str, str], dagster_home: Path, day: dt.date) -> dict[str, Any]:
    """The daily schedule's tick at `day`'s run time, and the run it requests, in process."""
    import dagster as dg

    from stock_pipeline.assets.partitions import SHANGHAI
    from stock_pipeline.automation.daily import DAILY_JOB, DAILY_SCHEDULE
    from stock_pipeline.definitions import build_definitions

    with environment(env):
        settings = Settings.from_env()
        defs = build_definitions(settings)
        instance = dg.DagsterInstance.get()
        at = dt.datetime.combine(day, settings.daily_run_time, tzinfo=SHANGHAI)
        began = time.perf_counter()
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=at) as context:
            requests = defs.resolve_schedule_def(DAILY_SCHEDULE).evaluate_tick(context).run_requests
        tick = time.perf_counter() - began
        keys = [(r.job_name or DAILY_JOB, r.partition_key) for r in requests or []]
        if keys != [(DAILY_JOB, day.isoformat())]:
            raise SystemExit(f"the daily schedule at {at} requested {keys}, not {day}'s run")
        request = requests[0]
        job = defs.resolve_job_def(DAILY_JOB)
        began = time.perf_counter()
        result = job.execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            tags=request.tags,
            raise_on_error=False,
        )
        wall = time.perf_counter() - began
    if not result.success:
        raise SystemExit(f"{DAILY_JOB} for {day} failed (run {result.run_id})")
    report = run_report(dagster_home)
    codes = report["metadata"]["raw_k_daily"]["keys_requested"]
    return {
        "day": day,
        "schedule_tick_s": round(tick, 3),
        "wall_s": round(wall, 1),
        "stages": stage_seconds(report),
        "codes": codes,
        "baostock_messages": messages(report),
        "requests_per_code": round(messages(report) / codes, 4),
        "steps": {k: round(v, 1) for k, v in report["steps"].items()},
        "load_avg": load_average(),
    }


# The holes cut for the sensor, by position among the checked days (from the newest): each
# one gap of its own, none adjacent to another.
HOLES = (
    ("stock_daily", 5, "DELETE FROM stock_daily WHERE trade_date = %(day)s"),
    (
        "raw_k_daily",
        12,
        "DELETE FROM raw_k_daily WHERE trade_date = %(day)s AND code IN ("
        " SELECT code FROM raw_k_daily WHERE trade_date = %(day)s ORDER BY code"
        " LIMIT (SELECT count(*) / 2 FROM raw_k_daily WHERE trade_date = %(day)s))",
    ),
    ("technical_daily", 20, "DELETE FROM technical_daily WHERE trade_date = %(day)s"),
)


def cut_holes(url: str, days: list[dt.date]) -> dict[str, Any]:
    """Delete the HOLES' rows; what was deleted, by table."""
    import psycopg2

    holes = {}
    with contextlib.closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        for table, back, sql in HOLES:
            cur.execute(sql, {"day": days[-back]})
            holes[table] = {"day": days[-back], "rows_deleted": cur.rowcount}
    return holes


def sensor_stage(
    env: dict[str, str], dagster_home: Path, url: str, day: dt.date, ticks: int
) -> dict[str, Any]:
    """The integrity sensor at `day`'s evening on the warehouse with three holes cut."""
    import statistics

    import dagster as dg
    import psycopg2

    from stock_pipeline.assets.partitions import SHANGHAI
    from stock_pipeline.automation import gaps as gap_rules
    from stock_pipeline.automation.daily import DAILY_JOB
    from stock_pipeline.automation.integrity import (
        GAP_TAG,
        build_integrity_sensor,
        checked_days,
    )
    from stock_pipeline.definitions import build_definitions
    from stock_pipeline.resources import WarehouseResource

    now = dt.datetime.combine(day, dt.time(20), tzinfo=SHANGHAI)
    with environment(env):
        settings = Settings.from_env()
        calendar = load_calendar(settings.home)
        defs = build_definitions(settings)
        repository = defs.get_repository_def()
        instance = dg.DagsterInstance.get()
        days = checked_days(calendar, settings, now)
        holes = cut_holes(url, days)
        sensor = build_integrity_sensor(calendar, settings, DAILY_JOB, clock=lambda: now)

        def tick() -> tuple[float, Any]:
            context = dg.build_sensor_context(
                instance=instance,
                cursor=None,
                resources={"warehouse": WarehouseResource()},
                repository_def=repository,
            )
            began = time.perf_counter()
            data = sensor.evaluate_tick(context)
            return time.perf_counter() - began, data

        seconds, requests = [], []
        for _ in range(ticks):
            elapsed, data = tick()
            seconds.append(elapsed)
            requests = data.run_requests or []
        query_seconds = []
        with contextlib.closing(psycopg2.connect(url)) as conn:
            for _ in range(ticks):
                began = time.perf_counter()
                counts = gap_rules.read_counts(conn, days)
                query_seconds.append(time.perf_counter() - began)
        found = gap_rules.find_gaps(counts, settings.coverage_tolerance)

        job = defs.resolve_job_def(DAILY_JOB)
        refill_messages = 0
        began = time.perf_counter()
        for request in requests:
            result = job.execute_in_process(
                instance=instance,
                asset_selection=request.asset_selection,
                partition_key=request.partition_key,
                tags=request.tags,
                raise_on_error=False,
            )
            if not result.success:
                raise SystemExit(f"the sensor's run {request.tags} failed (run {result.run_id})")
            refill_messages += messages(run_report(dagster_home))
        refill = time.perf_counter() - began
        after = tick()[1].run_requests or []
    return {
        "checked_days": len(days),
        "holes": holes,
        "ticks": ticks,
        "tick_s": [round(s, 3) for s in seconds],
        "tick_s_median": round(statistics.median(seconds), 3),
        "tick_s_max": round(max(seconds), 3),
        "count_query_s_median": round(statistics.median(query_seconds), 3),
        "count_query_s_max": round(max(query_seconds), 3),
        "gaps": len(found),
        "gap_list": [f"{g.asset} {g.day} {g.reason}" for g in found],
        "runs_requested": len(requests),
        "runs": [
            {
                "assets": [k.to_user_string() for k in r.asset_selection or ()],
                "days": r.tags.get(GAP_TAG),
            }
            for r in requests
        ],
        "refill_s": round(refill, 1),
        "refill_baostock_messages": refill_messages,
        "runs_requested_after_refill": len(after),
        "load_avg": load_average(),
    }


def indicator_throughput(url: str, baseline_codes: int) -> dict[str, Any]:
    """compute/indicators.py against the per-code pandas loop, on the stored bars."""
    from indicator_baseline import throughput

    from stock_pipeline.assets.indicators.build import RANGE_SQL
    from stock_pipeline.warehouse.reader import read_frame

    async def read() -> Any:
        import asyncpg

        connection = await asyncpg.connect(url)
        try:
            codes = [r["code"] for r in await connection.fetch(
                "SELECT DISTINCT code FROM stock_daily")]  # fmt: skip
            return await read_frame(
                connection, "stock_daily", RANGE_SQL, codes, dt.date.min, dt.date.max
            )
        finally:
            await connection.close()

    return throughput(asyncio.run(read()), baseline_codes)


def sim_codes(url: str) -> list[str]:
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT code FROM stocks WHERE security_type = 1")
        return [r[0] for r in cur.fetchall()]


if __name__ == "__main__":
    main()
