"""Industry history from BaoStock's snapshots: which days to sample, and the intervals.

query_stock_industry answers, for a day D, every listed stock's CSRC industry as BaoStock
knew it on D. Its updateDate is BaoStock's last refresh of the whole list (a weekly date, or a
new stock's listing day), not the day a company's industry changed, and two days asked in the
same week share it while their answers can differ. A snapshot is therefore one answer,
identified by the day asked for (snapshot_date). The history samples the first trading day of
each month plus the latest published day; a change is known from the first snapshot that
shows it (between two samples the day of the change is unknown), so an interval starts on a
snapshot date, never earlier.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

import pandas as pd

from stock_pipeline.compute.membership import (
    KEY,
    MEMBER,
    SNAPSHOT_DATE,
    intervals_from_snapshots,
    snapshot_sample_days,
)

# Every answer lists all stocks under one classification (证监会行业分类): one snapshot key.
CSRC = "csrc"
MEMBERSHIP_COLUMNS = ["code", "valid_from", "valid_to", "industry", "classification"]


def sample_days(sessions: Sequence[dt.date], stored: Collection[dt.date]) -> list[dt.date]:
    """The days to ask query_stock_industry for, out of `sessions` (the trading days from the
    start date through the latest published day, in order): the first session and the first
    session of each later month that are not `stored` yet, and the last session always (its
    answer can still change that day, when BaoStock refreshes the list after a first ask).

    A sample that failed or came back empty is simply not stored, so the next run asks it
    again; a start date moved earlier adds the months before it."""
    if not sessions:
        return []
    latest = sessions[-1]
    return [d for d in snapshot_sample_days(sessions) if d == latest or d not in stored]


def membership_intervals(snapshots: pd.DataFrame) -> pd.DataFrame:
    """industry_membership rows (code, valid_from, valid_to, industry, classification) from
    raw_stock_industry rows (snapshot_date, code, industry, industry_classification).

    Consecutive snapshots of a code with the same industry and classification make one
    interval; another industry starts a new one, and a snapshot without the code (delisted)
    ends it. valid_to is the snapshot_date of the first snapshot that no longer shows the
    interval, NaT while the code is in the latest snapshot with that industry.
    """
    rows = pd.DataFrame(
        {
            KEY: CSRC,
            MEMBER: snapshots["code"].to_numpy(object),
            SNAPSHOT_DATE: pd.to_datetime(snapshots["snapshot_date"]).to_numpy("datetime64[ns]"),
            "industry": snapshots["industry"].to_numpy(object),
            "classification": snapshots["industry_classification"].to_numpy(object),
        }
    )
    intervals = intervals_from_snapshots(rows).rename(columns={MEMBER: "code"})
    for column in ("valid_from", "valid_to"):
        intervals[column] = pd.to_datetime(intervals[column])
    return intervals[MEMBERSHIP_COLUMNS].reset_index(drop=True)
