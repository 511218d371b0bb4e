"""`stock-pipeline demo`, the Quickstart's main job, end to end in a process of its own: its own
simulator, the warehouse and Redis of the test session (configured URLs, as a user with servers
of their own would run it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest

from stock_pipeline.read import MarketReader
from stock_pipeline.settings import Settings


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_materializes_the_graph_and_reads_it_back(
    make_database: Callable[[], str], redis_url: str, tmp_path: Path
):
    dsn = make_database()
    env = {
        **os.environ,
        "STOCK_PIPELINE_HOME": str(tmp_path),
        "STOCK_PIPELINE_DATABASE_URL": dsn,
        "STOCK_PIPELINE_REDIS_URL": redis_url,
        "STOCK_PIPELINE_CACHE_PREFIX": f"demo_{uuid.uuid4().hex[:8]}",
        "STOCK_PIPELINE_START_DATE": "2024-06-03",
    }
    command = [
        sys.executable,
        "-c",
        "from stock_pipeline.cli import main; raise SystemExit(main())",
    ]
    demo = subprocess.run(
        [*command, "demo", "--codes", "900", "--start", "2024-07-01", "--end", "2024-07-31"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = demo.stdout
    assert demo.returncode == 0, out[-3000:] + demo.stderr[-3000:]
    for asset in (
        "stock_daily",
        "technical_daily",
        "redis_cache",
        "index_daily",
        "finance",
        "corporate_actions",
        "raw_k_weekly",
        "raw_k_monthly",
        "index_constituents",
        "industry_membership",
        "macro_series",
    ):
        assert f"+ {asset}:" in out, out
    for read in ("universe", "index_members", "finance_as_of", "industry_as_of"):
        assert f"read.{read}(" in out and "not available" not in out, out
    assert "FAILED" not in out and re.search(r"checks: (\d+)/\1 passed", out), out
    assert "Read it back" in out and "read.cross_section" in out and "by Redis" in out, out
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), max(trade_date)::text FROM technical_daily")
        rows, last = cur.fetchone()
    assert rows > 0 and last == "2024-07-31"
    with MarketReader(Settings.from_env(env)) as reader:
        day = reader.cross_section()
        assert len(day) > 20 and reader.served["redis"] == 1
