"""Membership history from dated snapshots: index constituents (P3), industries (P4).

BaoStock answers "who is a member on day D" with the snapshot in force on D, dated by the day it
took effect. Asked on a few sample days, the answers are a series of dated snapshots; turned
into intervals [valid_from, valid_to) they answer "who was a member on D" for every day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd

KEY, MEMBER, SNAPSHOT_DATE = "key", "member", "snapshot_date"


def intervals_from_snapshots(snapshots: pd.DataFrame) -> pd.DataFrame:
    """Membership intervals from dated snapshots.

    `snapshots` has one row per (key, member, snapshot_date): `key` names what members belong
    to (an index, a classification), `snapshot_date` the day a snapshot of that key took
    effect; every other column is a value of the membership (e.g. the industry), and may be
    absent. Each key's snapshots are complete lists: a member missing from one has left.

    Returns key, member, valid_from, valid_to and the value columns, one row per interval: it
    starts at the first snapshot showing the member (with those values) and ends, exclusive, at
    the first later snapshot of the same key that does not show it or shows other values;
    valid_to is NaT while the member is in the key's latest snapshot. Rows sorted by key,
    member, valid_from. Raises ValueError for a member shown twice in one snapshot with
    different values.
    """
    missing = {KEY, MEMBER, SNAPSHOT_DATE} - set(snapshots.columns)
    if missing:
        raise ValueError(f"snapshots lack the columns {sorted(missing)}")
    values = [c for c in snapshots.columns if c not in (KEY, MEMBER, SNAPSHOT_DATE)]
    rows = snapshots.drop_duplicates().copy()
    rows[SNAPSHOT_DATE] = pd.to_datetime(rows[SNAPSHOT_DATE])
    doubled = rows.duplicated([KEY, MEMBER, SNAPSHOT_DATE], keep=False)
    if doubled.any():
        example = rows.loc[doubled, [KEY, MEMBER, SNAPSHOT_DATE]].iloc[0].tolist()
        raise ValueError(f"a member appears twice in one snapshot with different values: {example}")
    output = [KEY, MEMBER, "valid_from", "valid_to", *values]
    if rows.empty:
        return pd.DataFrame({c: rows[c] for c in (KEY, MEMBER)}).reindex(columns=output)
    # Each key's snapshots in order, with the date of the next one (NaT after the latest).
    dates = rows[[KEY, SNAPSHOT_DATE]].drop_duplicates().sort_values([KEY, SNAPSHOT_DATE])
    dates["ordinal"] = dates.groupby(KEY).cumcount()
    dates["next_date"] = dates.groupby(KEY)[SNAPSHOT_DATE].shift(-1)
    rows = rows.merge(dates, on=[KEY, SNAPSHOT_DATE]).sort_values(
        [KEY, MEMBER, "ordinal"], kind="stable", ignore_index=True
    )
    # A run of consecutive snapshots with the same values is one interval.
    same_member = rows[[KEY, MEMBER]].eq(rows[[KEY, MEMBER]].shift()).all(axis=1)
    follows = rows["ordinal"].eq(rows["ordinal"].shift() + 1)
    unchanged = pd.Series(True, index=rows.index)
    for column in values:
        before = rows[column].shift()
        unchanged &= rows[column].eq(before) | (rows[column].isna() & before.isna())
    interval = (~(same_member & follows & unchanged)).cumsum()
    first = rows[~interval.duplicated(keep="first")].reset_index(drop=True)
    last = rows[~interval.duplicated(keep="last")].reset_index(drop=True)
    intervals = first.rename(columns={SNAPSHOT_DATE: "valid_from"})
    intervals["valid_to"] = last["next_date"]
    return intervals[output]


def snapshot_sample_days(
    sessions: Sequence[dt.date],
    *,
    asked_through: dt.date | None = None,
    first_stored: dt.date | None = None,
) -> list[dt.date]:
    """The days to ask for the snapshot in force, out of `sessions` (the trading days from the
    start date to the latest published day, in order).

    Every snapshot takes effect on some day and stays in force until the next: asking on the
    first session, the first session of each later month and the last session finds every
    snapshot that lasts at least a month, dated exactly. An answer for a past day does not
    change, so when earlier asks went through `asked_through` (and stored snapshots reach back
    to `first_stored`), only the later sample days, the last session and any sample day before
    the first stored snapshot (the start date moved earlier) are asked again.
    """
    if not sessions:
        return []
    samples = [sessions[0]]
    for day in sessions[1:]:
        if (day.year, day.month) != (samples[-1].year, samples[-1].month):
            samples.append(day)
    if samples[-1] != sessions[-1]:
        samples.append(sessions[-1])
    if asked_through is None or first_stored is None:
        return samples
    return [d for d in samples if d > asked_through or d < first_stored or d == sessions[-1]]
