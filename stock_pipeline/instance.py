"""The Dagster instance of a STOCK_PIPELINE_HOME: `<home>/dagster`, with its dagster.yaml.

Dagster keeps runs, event logs and schedules in its instance. With the embedded PostgreSQL they
go to a database of their own on it (`dagster`, next to the warehouse's), where a range run's
thousands of per-partition events are written in batches; elsewhere Dagster's default SQLite
files under `<home>/dagster` are used.
"""

from __future__ import annotations

import os
from pathlib import Path

from stock_pipeline.settings import Settings

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


# The code location the webserver and the daemon load: the installed package, so neither a
# checkout nor a working directory is needed (`stock-pipeline dev` and the OS services).
WORKSPACE_YAML = """\
# Written by stock-pipeline: the code the webserver and the daemon load
# (the installed package, so no checkout is needed).
load_from:
  - python_module:
      module_name: stock_pipeline.definitions
"""


def write_workspace(dagster_home: Path) -> Path:
    """`<dagster home>/workspace.yaml` (WORKSPACE_YAML); returns its path."""
    path = dagster_home / "workspace.yaml"
    path.write_text(WORKSPACE_YAML, encoding="utf-8")
    return path


def instance_yaml(storage_url: str | None, settings: Settings) -> str:
    """dagster.yaml: storage, the run queue, the `baostock` pool and run retries."""
    lines = [
        "# Written by stock-pipeline from the STOCK_PIPELINE_* settings: the Dagster instance of",
        "# this STOCK_PIPELINE_HOME. Edits are overwritten; change the settings instead.",
        "telemetry:",
        "  enabled: false",
        "python_logs:",
        "  # The pipeline's own progress lines (batches, retries) go to each run's event log.",
        "  managed_python_loggers: [stock_pipeline]",
        "  python_log_level: INFO",
        "concurrency:",
        "  runs:",
        "    # Runs beyond this wait in the queue (a 5-year range run peaks near 1.3 GB).",
        f"    max_concurrent_runs: {settings.max_concurrent_runs}",
        "  pools:",
        "    # Enforced per step: a run waits for a slot only while it would open sessions.",
        "    granularity: op",
        "    # Every raw step is in the `baostock` pool and opens up to BAOSTOCK_CONCURRENCY",
        "    # sessions: the limit keeps all runs together within BAOSTOCK_SESSION_BUDGET",
        f"    # ({settings.baostock_pool_limit} x {settings.baostock_concurrency} <= "
        f"{settings.baostock_session_budget}). The only pool, so the default limit is its limit.",
        f"    default_limit: {settings.baostock_pool_limit}",
        "run_retries:",
        "  # A run whose worker died is retried; a failed asset is retried by its own retry",
        "  # policy (with backoff) inside the run, never a second time by the run.",
        f"  enabled: {'true' if settings.run_retries else 'false'}",
        f"  max_retries: {settings.run_retries}",
        "  retry_on_asset_or_op_failure: false",
    ]
    if storage_url:
        lines += ["storage:", "  postgres:", f"    postgres_url: {storage_url}"]
    return "\n".join(lines) + "\n"


def prepare_instance(home: Path, storage_url: str | None, settings: Settings) -> Path:
    """`<home>/dagster` with a dagster.yaml for `storage_url` (a postgresql+psycopg2:// URL, or
    None for SQLite files) and `settings`; returns the folder to use as DAGSTER_HOME."""
    folder = home / DAGSTER_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(instance_yaml(storage_url, settings), encoding="utf-8")
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


def external_storage_url(settings: Settings, warehouse_url: str) -> str:
    """Dagster's storage beside an external warehouse: STOCK_PIPELINE_DAGSTER_DATABASE_URL, else
    a `dagster` database on the warehouse's server (created if the role may; otherwise the
    error says to set the variable)."""
    import psycopg2
    from psycopg2 import errors, sql

    from stock_pipeline.warehouse.urls import asyncpg_dsn, display_url, sqlalchemy_url

    if settings.dagster_database_url:
        return _psycopg2_url(settings.dagster_database_url)
    conn = psycopg2.connect(asyncpg_dsn(warehouse_url), connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DAGSTER_DATABASE,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DAGSTER_DATABASE)))
    except errors.InsufficientPrivilege as exc:
        raise DagsterStorageError(
            f"cannot create database {DAGSTER_DATABASE!r} for Dagster's runs on "
            f"{display_url(warehouse_url)} ({exc.pgerror or exc}): create it, or set "
            "STOCK_PIPELINE_DAGSTER_DATABASE_URL to a database Dagster may use"
        ) from exc
    except errors.DuplicateDatabase:
        pass  # created by another process between the check and the create
    finally:
        conn.close()
    url = sqlalchemy_url(warehouse_url, "psycopg2", database=DAGSTER_DATABASE)
    return url.render_as_string(hide_password=False)


def _psycopg2_url(url: str) -> str:
    from stock_pipeline.warehouse.urls import sqlalchemy_url

    return sqlalchemy_url(url, "psycopg2").render_as_string(hide_password=False)


class DagsterStorageError(RuntimeError):
    """Dagster's storage database cannot be prepared; the message says what to do."""


BAOSTOCK_POOL = "baostock"  # the concurrency pool of every raw step (assets/raw)


def initialize_pools(instance) -> None:  # instance: dagster.DagsterInstance
    """Create the `baostock` pool's limit in the instance's storage before any run: runs
    starting together otherwise race to create it, and Dagster fails the loser with a
    unique-key violation (seen with two overlapping `dagster asset materialize` runs)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    if BAOSTOCK_POOL in storage.get_concurrency_keys():
        return  # Dagster's initializer fails on PostgreSQL when the row exists already
    try:
        storage.initialize_concurrency_limit_to_default(BAOSTOCK_POOL)
    except Exception:
        if BAOSTOCK_POOL not in storage.get_concurrency_keys():
            raise  # not the race with another initializer: a real failure
