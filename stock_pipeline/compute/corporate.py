"""Corporate actions and reports (P2): the raw rows' key validation, the business tables'
mapping, and the cross-check of dividend ex-dates against the back-adjust factor (pure).

The cross-check compares two sources that must tell the same story: every cash dividend,
bonus issue or conversion of capital reserve (query_dividend_data, corporate_actions) moves
the back-adjust factor on its ex-date (query_adjust_factor, stock_daily), and the factor moves
on no other day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Relative difference above which two back-adjust factors differ (compute.checks uses the same).
FACTOR_TOLERANCE = 1e-9
# BaoStock's prices have 2-4 decimals: a pre_close this close to the previous close is equal.
PRICE_TOLERANCE = 5e-5

CORPORATE_ACTION_COLUMNS = {
    "code": "code",
    "divid_plan_announce_date": "announce_date",
    "divid_regist_date": "record_date",
    "divid_operate_date": "ex_date",
    "divid_pay_date": "pay_date",
    "divid_stock_market_date": "listing_date",
    "divid_cash_ps_before_tax": "cash_per_share",
    "divid_stocks_ps": "bonus_shares_per_share",
    "divid_reserve_to_stock_ps": "reserve_to_stock_per_share",
}
PERFORMANCE_EXPRESS_COLUMNS = {
    "code": "code",
    "performance_exp_stat_date": "stat_date",
    "performance_exp_pub_date": "pub_date",
    "performance_exp_update_date": "update_date",
    "performance_express_total_asset": "total_asset",
    "performance_express_net_asset": "net_asset",
    "performance_express_eps_chg_pct": "eps_chg_pct",
    "performance_express_roe_wa": "roe_wa",
    "performance_express_eps_diluted": "eps_diluted",
    "performance_express_gr_yoy": "gr_yoy",
    "performance_express_op_yoy": "op_yoy",
}
EARNINGS_FORECAST_COLUMNS = {
    "code": "code",
    "profit_forcast_exp_stat_date": "stat_date",
    "profit_forcast_exp_pub_date": "pub_date",
    "profit_forcast_type": "forecast_type",
    "profit_forcast_abstract": "abstract",
    "profit_forcast_chg_pct_up": "chg_pct_up",
    "profit_forcast_chg_pct_dwn": "chg_pct_down",
}
AMOUNT_COLUMNS = ("cash_per_share", "bonus_shares_per_share", "reserve_to_stock_per_share")


def _renamed(raw: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    return raw.loc[:, list(columns)].rename(columns=dict(columns)).reset_index(drop=True)


def corporate_action_rows(raw_dividend: pd.DataFrame) -> pd.DataFrame:
    """corporate_actions rows from raw_dividend rows (one per plan, keyed by its announcement)."""
    return _renamed(raw_dividend, CORPORATE_ACTION_COLUMNS)


def performance_express_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """performance_express rows from raw_performance_express rows."""
    return _renamed(raw, PERFORMANCE_EXPRESS_COLUMNS)


def earnings_forecast_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """earnings_forecast rows from raw_forecast rows."""
    return _renamed(raw, EARNINGS_FORECAST_COLUMNS)


def split_bad_rows(
    frame: pd.DataFrame,
    key: Sequence[str],
    *,
    date_column: str,
    start: dt.date,
    end: dt.date,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows that can be stored, rows that cannot with the `problem`).

    A row cannot be stored when a key column is empty (BaoStock sends "" for an unknown date),
    when its `date_column` lies outside [start, end] (the key range the write replaces), or
    when an earlier row of the reply has the same key (only the first is kept).
    """
    problem = pd.Series("", index=frame.index, dtype=object)
    for column in key:
        empty = frame[column].isna()
        problem[empty & (problem == "")] = f"{column} is empty"
    day = frame[date_column]
    outside = day.notna() & ((day < pd.Timestamp(start)) | (day > pd.Timestamp(end)))
    problem[outside & (problem == "")] = f"{date_column} outside {start}..{end}"
    duplicate = frame.duplicated(subset=list(key), keep="first")
    problem[duplicate & (problem == "")] = "same key as an earlier row of the reply"
    bad = problem != ""
    rejected = frame.loc[bad, list(key)].assign(problem=problem[bad])
    return frame.loc[~bad].reset_index(drop=True), rejected.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Which (code, year) of raw_dividend were fetched: from fetch_log.


@dataclass(frozen=True)
class FetchedYears:
    """The announcement years raw_dividend holds, and per year the codes no fetch got.

    A year counts once a fetch that was not failed as a whole covered it; a code is missing
    from a year when every such fetch of the year failed it (a failed code keeps what an
    earlier fetch stored).
    """

    years: frozenset[int]
    missing: Mapping[int, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, fetches: Iterable[tuple[dt.date, dt.date, Mapping[str, str]]]) -> FetchedYears:
        """`fetches`: (window_start, window_end, failures) of raw_dividend's fetch_log rows
        that were not failed as a whole; failure keys are "<code> <year>"."""
        years: set[int] = set()
        failed: dict[int, list[set[str]]] = {}
        for start, end, failures in fetches:
            by_year: dict[int, set[str]] = {}
            for key in failures:
                code, _, year = key.partition(" ")
                if year.isdigit():
                    by_year.setdefault(int(year), set()).add(code)
            for year in range(start.year, end.year + 1):
                years.add(year)
                failed.setdefault(year, []).append(by_year.get(year, set()))
        missing = {y: frozenset(set.intersection(*sets)) for y, sets in failed.items()}
        return cls(frozenset(years), {y: codes for y, codes in missing.items() if codes})

    def holds(self, code: str, year: int) -> bool:
        return year in self.years and code not in self.missing.get(year, frozenset())


# ---------------------------------------------------------------------------------------------
# The cross-check: dividend ex-dates against back-adjust factor changes.


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    scale = np.maximum(np.abs(b), 1.0)
    return np.abs(a - b) > FACTOR_TOLERANCE * scale


@dataclass
class FactorAgreement:
    """Outcome of the ex-date / factor cross-check, with the rows behind each count."""

    matched_ex_dates: int
    matched_changes: int
    only_in_p2: pd.DataFrame  # ex-dates whose bar shows no factor change
    only_in_p0: pd.DataFrame  # factor changes without an ex-date
    no_price_effect: pd.DataFrame  # ex-dates whose amount rounds away in the prices
    unverifiable: pd.DataFrame  # changes whose plan may lie in a year P2 does not hold
    ex_dates_outside_stock_daily: int
    changes_outside_p2_years: int

    @property
    def passed(self) -> bool:
        return self.only_in_p2.empty and self.only_in_p0.empty


def factor_agreement(
    actions: pd.DataFrame,
    changes: pd.DataFrame,
    ex_dates: pd.DataFrame,
    fetched: FetchedYears,
) -> FactorAgreement:
    """Every ex-date with a non-zero amount against stock_daily's factor changes, both ways.

    `actions`: code, ex_date, announce_date, the bar the ex-date takes effect on (bar_date:
    the code's first stored day on or after it, with factor and pre_close), the stored row
    before the ex-date (previous_date, previous_factor) and the last traded close before it
    (last_close). An ex-date outside the code's stored days (no bar on or after it, or none
    before it) cannot be compared and is only counted.
    `changes`: code, trade_date, previous_date, factor, previous_factor: the days whose factor
    differs from the code's previous stored row.
    `ex_dates`: code, ex_date of every action with a non-zero amount that can explain those
    changes (a change is explained by an ex-date in (previous_date, trade_date]).
    `fetched`: which announcement years raw_dividend holds per code. A change in year Y is
    compared when P2 holds (code, Y); when it does not hold (code, Y-1) too, an unexplained
    change is unverifiable rather than wrong: its plan may have been announced in Y-1 (plans
    announced late in a year go ex early in the next).
    """
    covered = actions["bar_date"].notna() & actions["previous_date"].notna()
    compared = actions.loc[covered].reset_index(drop=True)
    moved = _differs(
        compared["factor"].to_numpy(np.float64), compared["previous_factor"].to_numpy(np.float64)
    )
    # An amount too small to move the ex-right reference price by a cent leaves the price,
    # and so BaoStock's factor, as it was (e.g. 0.001 CNY a share).
    flat = (compared["pre_close"] - compared["last_close"]).abs().to_numpy(np.float64)
    no_effect = ~moved & (flat <= PRICE_TOLERANCE)
    explained = _explained(changes, ex_dates)
    years = changes["trade_date"].dt.year.to_numpy(int)
    codes = changes["code"].to_numpy(object)
    held = np.array([fetched.holds(c, y) for c, y in zip(codes, years, strict=True)], bool)
    held_before = np.array(
        [fetched.holds(c, y - 1) for c, y in zip(codes, years, strict=True)], bool
    )
    unexplained = held & ~explained
    return FactorAgreement(
        matched_ex_dates=int(moved.sum()),
        matched_changes=int((held & explained).sum()),
        only_in_p2=compared.loc[~moved & ~no_effect].reset_index(drop=True),
        only_in_p0=changes.loc[unexplained & held_before].reset_index(drop=True),
        no_price_effect=compared.loc[no_effect].reset_index(drop=True),
        unverifiable=changes.loc[unexplained & ~held_before].reset_index(drop=True),
        ex_dates_outside_stock_daily=int((~covered).sum()),
        changes_outside_p2_years=int((~held).sum()),
    )


def _explained(changes: pd.DataFrame, ex_dates: pd.DataFrame) -> np.ndarray:
    """Per change: does an ex-date of its code lie in (previous_date, trade_date]?"""
    if changes.empty or ex_dates.empty:
        return np.zeros(len(changes), dtype=bool)
    pairs = changes[["code", "previous_date", "trade_date"]].reset_index(drop=True)
    pairs["change"] = np.arange(len(pairs))
    joined = pairs.merge(ex_dates[["code", "ex_date"]], on="code")
    hit = (joined["ex_date"] > joined["previous_date"]) & (
        joined["ex_date"] <= joined["trade_date"]
    )
    explained = np.zeros(len(changes), dtype=bool)
    explained[joined.loc[hit, "change"].to_numpy(int)] = True
    return explained
