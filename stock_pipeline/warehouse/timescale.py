"""TimescaleDB, when a server has it with compression; native yearly partitions otherwise.

The only place that knows about TimescaleDB. Migrations create stock_daily and technical_daily
through `create_time_series_table`: a hypertable (1-month chunks, compressed after 30 days,
segment by code, order by trade_date DESC: seed 000 D3) where the extension is installable under
the Timescale license, else the native RANGE-partitioned table declared in tables.py. The
Apache-licensed build can create hypertables but not compress them, so it counts as missing.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.engine import Connection

log = logging.getLogger("stock_pipeline.warehouse")

Mode = Literal["hypertable", "native"]
_reported: set[str] = set()


def detect_mode(bind: Connection) -> tuple[Mode, str]:
    """('hypertable', why) if TimescaleDB can compress here, else ('native', why)."""
    available = bind.execute(
        text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).scalar()
    if not available:
        return "native", "TimescaleDB is not installed on this server"
    try:
        with bind.begin_nested():
            installed_before = bind.execute(
                text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
            ).scalar()
            bind.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
            license_ = bind.execute(text("SHOW timescaledb.license")).scalar()
            if license_ != "timescale" and not installed_before:
                bind.execute(text("DROP EXTENSION timescaledb"))
    except Exception as exc:  # e.g. not in shared_preload_libraries
        return "native", f"TimescaleDB could not be enabled ({str(exc).splitlines()[0]})"
    if license_ != "timescale":
        return "native", f"TimescaleDB is the {license_!r}-licensed build, which cannot compress"
    return "hypertable", "TimescaleDB with compression"


def create_time_series_table(op: Any, name: str, *elements: Any, **kw: Any) -> Mode:
    """op.create_table for a trade_date table, as a compressed hypertable where possible."""
    mode, why = detect_mode(op.get_bind())
    if why not in _reported:  # say it once per process, not once per table
        _reported.add(why)
        if mode == "native":
            log.warning("[schema] %s: trade_date tables use native yearly partitions", why)
        else:
            log.info("[schema] %s: trade_date tables become hypertables", why)
    if mode == "native":
        op.create_table(name, *elements, **kw)
        return mode
    kw.pop("postgresql_partition_by", None)
    op.create_table(name, *elements, **kw)
    op.execute(
        f"SELECT create_hypertable('{name}', 'trade_date', "
        "chunk_time_interval => INTERVAL '1 month')"
    )
    op.execute(
        f"ALTER TABLE {name} SET (timescaledb.compress, "
        "timescaledb.compress_segmentby = 'code', "
        "timescaledb.compress_orderby = 'trade_date DESC')"
    )
    op.execute(f"SELECT add_compression_policy('{name}', INTERVAL '30 days')")
    return mode
