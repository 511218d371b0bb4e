"""Quarterly statements: statement periods and their legal deadlines, who is expected to report,
the finance rows joined from the six quarterly APIs, and their revisions (pure, no I/O).

A statement period is (year, quarter); its stat_date is the quarter's last day. Reports are due
by law: Q1 by April 30, H1 by August 31, Q3 by October 31, the annual report by April 30 of the
next year. BaoStock serves only the latest values of a statement, so a correction (更正公告)
silently changes a past one; `diff_revisions` turns such a change into a new version and keeps
the superseded one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stock_pipeline.periods import (  # noqa: F401 (the statement calendar, re-exported)
    Period,
    deadline,
    period_label,
    periods_between,
    quarter_end,
    quarter_start,
    settled,
)

KEY = ["code", "stat_date"]
# query_stock_basic's `type` of stocks (the only securities with statements).
STOCK_TYPE = 1
# The API every statement is anchored on: the five others come from the same report.
ANCHOR = "profit"


def listed_codes(stock_basic: pd.DataFrame, year: int, quarter: int) -> list[str]:
    """The stocks listed during a period (raw_stock_basic: type 1, IPO on or before its end,
    not delisted before its start), sorted: the only ones that can report for it. A stock with
    an unknown IPO date is kept (asked rather than missed)."""
    first, last = (
        pd.Timestamp(quarter_start(year, quarter)),
        pd.Timestamp(quarter_end(year, quarter)),
    )
    basic = stock_basic
    ipo, out = basic["ipo_date"], basic["out_date"]
    stock = basic["security_type"].astype("Int64").eq(STOCK_TYPE).fillna(False)
    listed = stock & (ipo.isna() | (ipo <= last)) & (out.isna() | (out >= first))
    return sorted(basic.loc[listed.to_numpy(bool), "code"].astype(str))


def join_statements(frames: Mapping[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Finance rows from the six quarterly APIs' rows (name -> frame of code, stat_date,
    pub_date and that API's values).

    A row is built only for a (code, stat_date) every API has a row for, with pub_date the
    earliest of theirs: a statement missing an API's part (its request failed) waits, rather
    than being stored incomplete and later "revised" when the part arrives. Returns (rows,
    incomplete): the waiting keys with the APIs they lack, as `missing` ("balance, dupont").
    """
    keyed = {name: frame.set_index(KEY) for name, frame in frames.items()}
    everywhere = None
    anywhere = pd.MultiIndex.from_tuples([], names=KEY)
    for frame in keyed.values():
        everywhere = frame.index if everywhere is None else everywhere.intersection(frame.index)
        anywhere = anywhere.union(frame.index)
    assert everywhere is not None, "join_statements needs at least one frame"
    pub_dates = pd.concat(
        [frame.loc[everywhere, "pub_date"].rename(name) for name, frame in keyed.items()], axis=1
    )
    parts = [pub_dates.min(axis=1).rename("pub_date")]
    parts += [frame.loc[everywhere].drop(columns="pub_date") for frame in keyed.values()]
    rows = pd.concat(parts, axis=1).reset_index().sort_values(KEY, kind="stable")
    waiting = anywhere.difference(everywhere)
    missing = [
        ", ".join(name for name, frame in keyed.items() if key not in frame.index)
        for key in waiting
    ]
    incomplete = pd.DataFrame(
        {
            "code": waiting.get_level_values("code").astype(object),
            "stat_date": waiting.get_level_values("stat_date"),
            "missing": missing,
        }
    )
    return rows.reset_index(drop=True), incomplete


def _equal(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Exact equality with NULL equal to NULL (no tolerance: a correction may be tiny)."""
    both_null = a.isna().to_numpy(bool) & b.isna().to_numpy(bool)
    same = (a == b).astype("boolean").fillna(False).to_numpy(bool)
    return both_null | same


@dataclass(frozen=True)
class Revisions:
    """What a rebuild changes: `rows` to write into finance (new ones with revised_on NULL,
    revised ones with revised_on = the day), `superseded` (the stored versions they replace,
    with superseded_on = the day, for finance_revisions), and counts."""

    rows: pd.DataFrame
    superseded: pd.DataFrame
    new: int
    revised: int
    unchanged: int
    stored_only: int  # stored rows the rebuild has no statement for (left as they are)


def diff_revisions(
    stored: pd.DataFrame, built: pd.DataFrame, day: dt.date, value_columns: Sequence[str]
) -> Revisions:
    """Compare freshly built finance rows with the stored ones of the same keys.

    `stored` holds code, stat_date, pub_date, revised_on and `value_columns`; `built` the same
    without revised_on. A built row equal to its stored row (pub_date and every value, NULL
    equal to NULL) is left out: unchanged rows are not rewritten. A stored version revised on
    `day` itself and replaced again the same day was valid on no day: it is not kept.
    """
    compared = ["pub_date", *value_columns]
    old = stored[[*KEY, "revised_on", *compared]].rename(
        columns={c: f"stored_{c}" for c in ["revised_on", *compared]}
    )
    merged = built.merge(old, on=KEY, how="left", indicator=True)
    is_new = (merged["_merge"] == "left_only").to_numpy(bool)
    same = np.ones(len(merged), dtype=bool)
    for column in compared:
        same &= _equal(merged[column], merged[f"stored_{column}"])
    revised = ~is_new & ~same
    when = pd.Timestamp(day)
    rows = built.loc[is_new | revised, [*KEY, *compared]].copy()
    rows.insert(3, "revised_on", pd.Series(pd.NaT, index=rows.index, dtype="datetime64[ns]"))
    rows.loc[revised[is_new | revised], "revised_on"] = when
    replaced = merged.loc[revised, [*KEY, *(f"stored_{c}" for c in ["revised_on", *compared])]]
    replaced = replaced.rename(columns=lambda c: c.removeprefix("stored_"))
    replaced = replaced[replaced["revised_on"].isna() | (replaced["revised_on"] != when)]
    replaced.insert(2, "superseded_on", when)
    stored_keys = pd.MultiIndex.from_frame(stored[KEY])
    built_keys = pd.MultiIndex.from_frame(built[KEY])
    return Revisions(
        rows=rows.reset_index(drop=True),
        superseded=replaced.reset_index(drop=True),
        new=int(is_new.sum()),
        revised=int(revised.sum()),
        unchanged=int((~is_new & same).sum()),
        stored_only=int((~stored_keys.isin(built_keys)).sum()),
    )


COVERAGE_OPEN, COVERAGE_DUE, COVERAGE_SETTLED = "open", "due", "settled"


def coverage(
    listed: Mapping[Period, int],
    reported: Mapping[Period, int],
    today: dt.date,
    minimum: float,
    grace_days: int = 30,
) -> pd.DataFrame:
    """Per period: stocks listed in it, statements held, their share, and the verdict.

    `state` is open (before the deadline: reports still arriving, nothing expected), due
    (deadline passed, within the grace days: a low share is a warning) or settled (a low share
    fails). verdict: ok, warn or fail.
    """
    records = []
    for period in sorted(listed):
        year, quarter = period
        share = reported.get(period, 0) / listed[period] if listed[period] else 1.0
        if settled(year, quarter, today, grace_days):
            state = COVERAGE_SETTLED
        elif today > deadline(year, quarter):
            state = COVERAGE_DUE
        else:
            state = COVERAGE_OPEN
        low = share < minimum
        verdict = "fail" if low and state == COVERAGE_SETTLED else "ok"
        if low and state == COVERAGE_DUE:
            verdict = "warn"
        records.append(
            {
                "period": period_label(period),
                "deadline": deadline(year, quarter).isoformat(),
                "state": state,
                "listed": listed[period],
                "reported": reported.get(period, 0),
                "coverage": round(share, 4),
                "verdict": verdict,
            }
        )
    columns = ["period", "deadline", "state", "listed", "reported", "coverage", "verdict"]
    return pd.DataFrame(records, columns=columns)
