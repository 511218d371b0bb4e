"""Macro series in long form: the five raw macro tables reshaped into (series, period_date, value).

A series is "<raw table without raw_>.<column>" (e.g. "loan_rate.loan_rate_above5_year"), one per
numeric column of the raw table that is not part of its key. Each row is dated by:
- deposit and loan rates: pub_date, the day the change was announced (BaoStock gives no other);
- required reserve ratios: effective_date, the day the new ratio applies (the announcement,
  pub_date, stays in the raw table);
- monthly money supply: the last day of (stat_year, stat_month);
- yearly money supply: December 31 of stat_year.
Empty raw values (e.g. a year-on-year change in a series' first year) give no row.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

# Columns of the raw tables that date a row or key it, never a series of their own.
KEY_COLUMNS = frozenset({"pub_date", "effective_date", "stat_year", "stat_month"})
# Series with a fixed cadence (every period between the first and the last must be there); the
# rate tables change on announcements, at no fixed cadence.
CADENCE = {"money_supply_month": "month", "money_supply_year": "year"}
SOURCES = ("deposit_rate", "loan_rate", "required_reserve_ratio", *CADENCE)
COLUMNS = ["series", "period_date", "value"]


class MacroShapeError(ValueError):
    """Raw macro rows that cannot be put in long form (a missing column, a repeated date)."""


def period_dates(source: str, frame: pd.DataFrame) -> np.ndarray:
    """The period_date (datetime64[D]) of each row of raw table `source` (without raw_)."""
    if source in ("deposit_rate", "loan_rate"):
        return _dates(frame, source, "pub_date")
    if source == "required_reserve_ratio":
        return _dates(frame, source, "effective_date")
    if source == "money_supply_month":
        years, months = _ints(frame, source, "stat_year"), _ints(frame, source, "stat_month")
        if ((months < 1) | (months > 12)).any():
            raise MacroShapeError(f"raw_{source}: stat_month outside 1..12")
        # The day before the next month's first day.
        next_month = ((years - 1970) * 12 + months).astype("datetime64[M]")
        return next_month.astype("datetime64[D]") - np.timedelta64(1, "D")
    if source == "money_supply_year":
        next_year = (_ints(frame, source, "stat_year") - 1970 + 1).astype("datetime64[Y]")
        return next_year.astype("datetime64[D]") - np.timedelta64(1, "D")
    raise MacroShapeError(f"unknown macro source {source!r}: one of {SOURCES}")


def _dates(frame: pd.DataFrame, source: str, column: str) -> np.ndarray:
    _require(frame, source, column)
    dates = pd.to_datetime(frame[column]).to_numpy("datetime64[D]")
    empty = int(np.isnat(dates).sum())
    if empty:
        raise MacroShapeError(f"raw_{source}: {column} is empty in {empty} rows")
    return dates


def _ints(frame: pd.DataFrame, source: str, column: str) -> np.ndarray:
    _require(frame, source, column)
    values = pd.to_numeric(frame[column])
    empty = int(values.isna().sum())
    if empty:
        raise MacroShapeError(f"raw_{source}: {column} is empty in {empty} rows")
    return values.to_numpy(np.int64)


def _require(frame: pd.DataFrame, source: str, column: str) -> None:
    if column not in frame.columns:
        raise MacroShapeError(f"raw_{source} has no column {column!r}")


def value_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric columns of a raw macro frame that are series (its keys and dates are not)."""
    return [
        c
        for c in frame.columns
        if c not in KEY_COLUMNS
        and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]


def long_form(source: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The series of one raw macro table, one row per (series, period_date) with a value."""
    dates = period_dates(source, frame)
    parts = []
    for column in value_columns(frame):
        values = frame[column].to_numpy(np.float64, na_value=np.nan)
        present = ~np.isnan(values)
        parts.append(
            pd.DataFrame(
                {
                    "series": f"{source}.{column}",
                    "period_date": dates[present],
                    "value": values[present],
                }
            )
        )
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _DTYPES.items()})
    return pd.concat(parts, ignore_index=True)


_DTYPES = {"series": "object", "period_date": "datetime64[ns]", "value": "float64"}


def macro_series_rows(raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every series of the raw macro tables (`raw`: source without raw_ -> its rows) in long
    form, sorted by series and date. Raises MacroShapeError when two rows of one series fall on
    the same date (e.g. two reserve-ratio announcements effective the same day), naming them."""
    unknown = set(raw) - set(SOURCES)
    if unknown:
        raise MacroShapeError(f"unknown macro sources {sorted(unknown)}: one of {SOURCES}")
    frames = [long_form(source, frame) for source, frame in raw.items() if len(frame)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _DTYPES.items()})
    rows = pd.concat(frames, ignore_index=True)
    rows["period_date"] = rows["period_date"].astype("datetime64[ns]")
    repeated = rows[rows.duplicated(["series", "period_date"], keep=False)]
    if len(repeated):
        examples = repeated.drop_duplicates(["series", "period_date"]).head(5)
        listed = ", ".join(
            f"{r.series} {r.period_date:%Y-%m-%d}" for r in examples.itertuples(index=False)
        )
        raise MacroShapeError(
            f"{len(repeated)} raw macro rows share a series and date with another, e.g. {listed}"
        )
    return rows.sort_values(["series", "period_date"], kind="stable").reset_index(drop=True)


def series_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per series: first and last period_date and the number of rows."""
    grouped = rows.groupby("series", sort=True)["period_date"]
    summary = grouped.agg(first="min", last="max", count="count").reset_index()
    return summary.astype({"count": "int64"})


def cadence_of(series: str) -> str | None:
    """ "month" or "year" for the money-supply series, None for the rate series."""
    return CADENCE.get(series.split(".", 1)[0])


def cadence_gaps(rows: pd.DataFrame) -> pd.DataFrame:
    """(series, missing period_date) of every period missing between a series' first and last
    date, for series with a cadence (money supply: every month-end or every Dec 31)."""
    missing = []
    for series, dates in rows.groupby("series", sort=True)["period_date"]:
        cadence = cadence_of(str(series))
        if cadence is None or dates.empty:
            continue
        unit = "M" if cadence == "month" else "Y"
        periods = pd.to_datetime(dates).to_numpy("datetime64[D]").astype(f"datetime64[{unit}]")
        expected = np.arange(periods.min(), periods.max() + 1)
        absent = np.setdiff1d(expected, periods)
        ends = (absent + 1).astype("datetime64[D]") - np.timedelta64(1, "D")
        missing.append(pd.DataFrame({"series": series, "period_date": ends}))
    if not missing:
        return pd.DataFrame({"series": pd.Series(dtype="object"), "period_date": []}).astype(
            {"period_date": "datetime64[ns]"}
        )
    out = pd.concat(missing, ignore_index=True)
    out["period_date"] = out["period_date"].astype("datetime64[ns]")
    return out
