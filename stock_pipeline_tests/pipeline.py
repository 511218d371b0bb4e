"""A warehouse, a STOCK_PIPELINE_HOME and the Dagster definitions built for them, run in
process or through the `dagster asset materialize` CLI: the asset tests' harness."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg2
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from stock_pipeline.baostock.simulator import SimulatorServer
from stock_pipeline.definitions import build_definitions
from stock_pipeline.settings import Settings

# Tables compared by checksum, without bookkeeping columns (fetched_at, updated_at).
CHECKSUMMED = {
    "raw_all_stock": "trade_date, code",
    "raw_k_daily": "code, trade_date",
    "raw_adjust_factor": "code, divid_operate_date",
    "stock_daily": "code, trade_date",
    "stocks": "code",
    "trade_calendar": "cal_date",
}
REFERENCE = ["raw_trade_dates", "raw_stock_basic", "trade_calendar", "stocks"]
DAILY = ["raw_all_stock", "raw_k_daily", "raw_adjust_factor", "stock_daily"]


def pipeline_env(
    sim: SimulatorServer, home: Path, dsn: str, start_date: str = "2024-06-03"
) -> dict[str, str]:
    return {
        "STOCK_PIPELINE_HOME": str(home),
        "STOCK_PIPELINE_START_DATE": start_date,
        "STOCK_PIPELINE_BAOSTOCK_ENDPOINT": sim.endpoint,
        "STOCK_PIPELINE_DATABASE_URL": dsn,
        "STOCK_PIPELINE_BAOSTOCK_QPS": "100000",
        "STOCK_PIPELINE_BAOSTOCK_CONCURRENCY": "4",
        "STOCK_PIPELINE_BAOSTOCK_REQUEST_TIMEOUT_S": "10",
        "STOCK_PIPELINE_BAOSTOCK_BACKOFF_BASE_S": "0.05",
        "STOCK_PIPELINE_BAOSTOCK_BACKOFF_MAX_S": "0.2",
        "STOCK_PIPELINE_BAOSTOCK_BATCH_SIZE": "25",
    }


class Pipeline:
    """A warehouse database, a STOCK_PIPELINE_HOME and the definitions built for them."""

    def __init__(self, sim: SimulatorServer, home: Path, dsn: str, **env: str):
        self.sim, self.home, self.dsn = sim, home, dsn
        self.env = pipeline_env(sim, home, dsn)
        self.env.update(env)

    def definitions(self) -> dg.Definitions:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in self.env.items():
                patch.setenv(name, value)
            return build_definitions(Settings.from_env())

    def materialize(
        self, assets: list[str], start: dt.date | None = None, end: dt.date | None = None
    ) -> dg.ExecuteInProcessResult:
        """One in-process run of `assets` (a partition range when start is given)."""
        defs = self.definitions()
        keys = [dg.AssetKey(a) for a in assets]
        job = defs.get_repository_def().get_implicit_job_def_for_assets(keys)
        assert job is not None
        tags = {}
        if start is not None:
            tags = {
                ASSET_PARTITION_RANGE_START_TAG: start.isoformat(),
                ASSET_PARTITION_RANGE_END_TAG: (end or start).isoformat(),
            }
        with pytest.MonkeyPatch.context() as patch:
            for name, value in self.env.items():
                patch.setenv(name, value)
            return job.execute_in_process(
                instance=dg.DagsterInstance.ephemeral(),
                asset_selection=keys,
                tags=tags,
                raise_on_error=False,
            )

    def cli(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        # An instance of the test's own (a run killed mid-way leaves nothing in the checkout).
        dagster_home = self.home / "dagster"
        dagster_home.mkdir(exist_ok=True)
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {**os.environ, **self.env, **(extra_env or {}), "DAGSTER_HOME": str(dagster_home)}
        return subprocess.Popen(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m",
             "stock_pipeline.definitions", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip

    def query(self, sql: str, *args: Any) -> list[tuple]:
        """Rows of `sql` (none for a statement that returns none), committed."""
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def checksums(self, tables: dict[str, str] | None = None) -> dict[str, tuple[int, str]]:
        """count and md5 of each table's rows in key order (`tables`: name -> ORDER BY)."""
        out = {}
        for name, order in (tables or CHECKSUMMED).items():
            columns = self.query(
                "SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position) "
                "FROM information_schema.columns WHERE table_name = %s "
                "AND column_name NOT IN ('fetched_at', 'updated_at')",
                name,
            )[0][0]
            out[name] = self.query(
                f"SELECT count(*), md5(coalesce(string_agg(row({columns})::text, '|' "
                f"ORDER BY {order}), '')) FROM {name}"
            )[0]
        return out


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    out = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        out[materialization.asset_key.to_user_string()] = {
            k: getattr(v, "value", v) for k, v in materialization.metadata.items()
        }
    return out


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
