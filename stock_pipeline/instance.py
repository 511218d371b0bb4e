"""The Dagster instance of a STOCK_PIPELINE_HOME: `<home>/dagster`, with its dagster.yaml.

Dagster keeps runs, event logs and schedules in its instance. With the embedded PostgreSQL they
go to a database of their own on it (`dagster`, next to the warehouse's), where a range run's
thousands of per-partition events are written in batches; elsewhere Dagster's default SQLite
files under `<home>/dagster` are used.
"""

from __future__ import annotations

import os
from pathlib import Path

DAGSTER_DATABASE = "dagster"
DAGSTER_FOLDER = "dagster"

# Per-partition asset events of a single-run range (one per partition and asset) are stored in
# batches (PostgreSQL event storage supports it), and a range run plans one event per asset
# instead of one per partition: a 5-year range otherwise spends minutes on event bookkeeping.
# The cost of the second: partitions of a run that fails show as missing, not failed.
EVENT_SETTINGS = {
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
}


def apply_event_settings() -> None:
    """Dagster's event batching for this process (whoever set them keeps their values)."""
    for name, value in EVENT_SETTINGS.items():
        os.environ.setdefault(name, value)


def instance_yaml(storage_url: str | None) -> str:
    lines = [
        "# Written by stock-pipeline: the Dagster instance of this STOCK_PIPELINE_HOME.",
        "telemetry:",
        "  enabled: false",
        "python_logs:",
        "  # The pipeline's own progress lines (batches, retries) go to each run's event log.",
        "  managed_python_loggers: [stock_pipeline]",
        "  python_log_level: INFO",
    ]
    if storage_url:
        lines += ["storage:", "  postgres:", f"    postgres_url: {storage_url}"]
    return "\n".join(lines) + "\n"


def prepare_instance(home: Path, storage_url: str | None) -> Path:
    """`<home>/dagster` with a dagster.yaml for `storage_url` (a postgresql+psycopg2:// URL, or
    None for SQLite files); returns the folder to use as DAGSTER_HOME."""
    folder = home / DAGSTER_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(instance_yaml(storage_url), encoding="utf-8")
    return folder


def embedded_storage_url(postgres) -> str:  # postgres: EmbeddedPostgres
    """The `dagster` database on the embedded server, created if missing. Its commits do not
    wait for the disk: it holds run bookkeeping, which a crash may cut short, never warehouse
    data."""
    import psycopg2

    from stock_pipeline.warehouse.urls import asyncpg_dsn, sqlalchemy_url

    url = postgres.ensure_database(DAGSTER_DATABASE)
    conn = psycopg2.connect(asyncpg_dsn(url))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"ALTER DATABASE {DAGSTER_DATABASE} SET synchronous_commit = off")
    finally:
        conn.close()
    return sqlalchemy_url(url, "psycopg2").render_as_string(hide_password=False)
