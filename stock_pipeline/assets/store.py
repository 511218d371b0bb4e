"""What asset bodies read and write: the writer with the configured chunking, index management
for big ranges, frames read by table spec, and the bookkeeping tables (fetch_log, sync_state).
Imported by the bodies, not by definitions (see runtime.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from stock_pipeline.assets.runtime import Window
from stock_pipeline.warehouse import indexes, reader, writer
from stock_pipeline.warehouse.engine import Warehouse


async def replace_window(
    wh: Warehouse,
    name: str,
    rows: pd.DataFrame,
    *,
    start: dt.date,
    end: dt.date,
    codes: Sequence[str] | None = None,
    date_column: str | None = None,
) -> writer.WriteResult:
    return await writer.replace_window(
        wh.copy_pool,
        name,
        rows,
        start=start,
        end=end,
        codes=codes,
        date_column=date_column,
        chunk_rows=wh.settings.copy_chunk_rows,
        streams=wh.settings.copy_streams,
    )


async def upsert(wh: Warehouse, name: str, rows: pd.DataFrame) -> writer.WriteResult:
    return await writer.upsert(wh.copy_pool, name, rows, chunk_rows=wh.settings.copy_chunk_rows)


@contextlib.asynccontextmanager
async def bulk_load_if_large(
    wh: Warehouse, name: str, window: Window, expected_rows: int
) -> AsyncIterator[bool]:
    """Index management around a big range: secondary indexes are dropped for the load and
    rebuilt once after it, when the range has at least STOCK_PIPELINE_BULK_LOAD_MIN_DAYS days
    and would at least double the table (rebuilding a big table's indexes for a small addition
    costs more than maintaining them)."""
    stored = await wh.copy_pool.fetchval(
        "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c "
        "WHERE c.oid = $1::regclass OR c.oid IN "
        "(SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::regclass)",
        name,
    )
    large = window.days >= wh.settings.bulk_load_min_days and expected_rows >= stored
    if not large:
        # Indexes an interrupted bulk load dropped come back first (bulk_load does it itself).
        await indexes.repair_indexes(wh.copy_pool)
        yield False
        return
    async with indexes.bulk_load(wh.copy_pool, name):
        yield True


async def record_fetch(
    wh: Warehouse,
    *,
    run_id: str,
    dataset: str,
    window: Window | None,
    requested: int,
    failures: Mapping[str, str],
    rows: int,
    seconds: float,
    error: str | None = None,
) -> None:
    """One fetch_log row: what was fetched, when, and how it went (`error`: the sync failed as
    a whole, recorded under the key "*" of failures)."""
    if error:
        status, failures = "failed", {"*": error, **failures}
    elif not failures:
        status = "ok"
    else:
        status = "failed" if len(failures) >= requested else "partial"
    await wh.copy_pool.execute(
        "INSERT INTO fetch_log (run_id, dataset, window_start, window_end, codes_requested, "
        "codes_failed, rows, seconds, status, failures) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        run_id,
        dataset,
        window.start if window else None,
        window.end if window else None,
        requested,
        len(failures),
        rows,
        seconds,
        status,
        json.dumps(dict(failures), ensure_ascii=False) if failures else None,
    )


async def record_sync_state(
    wh: Warehouse,
    dataset: str,
    *,
    through: dt.date | None,
    ok: Iterable[str] = ("",),
    failures: Mapping[str, str] | None = None,
) -> None:
    """Where `dataset` stands per code ('' for datasets not fetched per code).

    Codes in `ok` were fetched (or verified) through `through`; last_fetched_date only ever
    moves forward, so a backfill of older days never hides newer ones. Failed codes keep
    their date and count consecutive failures.
    """
    failures = failures or {}
    codes = [*ok, *failures]
    if not codes:
        return
    statuses = ["ok"] * (len(codes) - len(failures)) + ["failed"] * len(failures)
    errors = [None] * (len(codes) - len(failures)) + list(failures.values())
    await wh.copy_pool.execute(
        """
        INSERT INTO sync_state AS s (dataset, code, last_fetched_date, last_success_at,
            last_attempt_at, last_status, last_error, consecutive_failures)
        SELECT $1, c.code, CASE WHEN c.status = 'ok' THEN $4::date END,
            CASE WHEN c.status = 'ok' THEN now() END, now(), c.status, c.error,
            CASE WHEN c.status = 'ok' THEN 0 ELSE 1 END
        FROM unnest($2::text[], $3::text[], $5::text[]) AS c(code, status, error)
        ON CONFLICT (dataset, code) DO UPDATE SET
            last_fetched_date = CASE WHEN excluded.last_status = 'ok'
                THEN greatest(s.last_fetched_date, excluded.last_fetched_date)
                ELSE s.last_fetched_date END,
            last_success_at = coalesce(excluded.last_success_at, s.last_success_at),
            last_attempt_at = excluded.last_attempt_at,
            last_status = excluded.last_status,
            last_error = excluded.last_error,
            consecutive_failures = CASE WHEN excluded.last_status = 'ok' THEN 0
                ELSE s.consecutive_failures + 1 END
        """,
        dataset,
        codes,
        statuses,
        through,
        errors,
    )


async def read_sync_dates(
    wh: Warehouse, dataset: str, codes: Sequence[str]
) -> dict[str, dt.date | None]:
    """last_fetched_date per code of `dataset` (codes never fetched are absent)."""
    rows = await wh.copy_pool.fetch(
        "SELECT code, last_fetched_date FROM sync_state WHERE dataset = $1 "
        "AND code = ANY($2::text[])",
        dataset,
        list(codes),
    )
    return {r["code"]: r["last_fetched_date"] for r in rows}


async def read_frame(wh: Warehouse, name: str, sql: str, *args: Any) -> pd.DataFrame:
    """Rows of `sql` as a DataFrame typed by the columns of warehouse table `name`."""
    return await reader.read_frame(wh.copy_pool, name, sql, *args)
