"""Daily bars: raw k-lines to stock_daily rows, and the back-adjust factor in force on each day.

BaoStock publishes one back-adjust (hfq) factor per ex-right date (query_adjust_factor); the
factor of a day is that of the latest ex-right date on or before it, 1.0 before the first one.
Storing unadjusted prices with that factor keeps both adjusted series one multiplication away:
back-adjusted = price * factor; forward-adjusted = price * factor / latest factor.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Columns stock_daily takes from raw_k_daily under the same name.
BAR_COLUMNS = (
    "code",
    "trade_date",
    "open",
    "high",
    "low",
    "close",
    "pre_close",
    "pct_chg",
    "volume",
    "amount",
    "turnover",
    "trade_status",
    "is_st",
    "pe_ttm",
    "pb_mrq",
    "ps_ttm",
    "pcf_ncf_ttm",
)


def factor_in_force(
    bars: pd.DataFrame, factors: pd.DataFrame, *, date_column: str = "trade_date"
) -> np.ndarray:
    """The back-adjust factor in force for each bar (code, `date_column`).

    `factors` has code, divid_operate_date and back_adjust_factor (any order, any codes);
    a bar before its code's first ex-right date, or of a code without factors, gets 1.0.
    """
    if bars.empty:
        return np.empty(0)
    usable = factors.dropna(subset=["divid_operate_date", "back_adjust_factor"])
    if usable.empty:
        return np.ones(len(bars))
    categories = pd.Index(pd.unique(pd.concat([bars["code"], usable["code"]], ignore_index=True)))
    day0 = np.datetime64(min(bars[date_column].min(), usable["divid_operate_date"].min()), "D")

    def keys(codes: pd.Series, days: pd.Series) -> np.ndarray:
        position = pd.Categorical(codes, categories=categories).codes.astype(np.int64)
        offset = (days.to_numpy("datetime64[D]") - day0).astype(np.int64)
        return position * 1_000_000 + offset

    factor_keys = keys(usable["code"], usable["divid_operate_date"])
    order = np.argsort(factor_keys, kind="stable")
    factor_keys = factor_keys[order]
    values = usable["back_adjust_factor"].to_numpy(np.float64)[order]
    bar_keys = keys(bars["code"], bars[date_column])
    at = np.searchsorted(factor_keys, bar_keys, side="right") - 1
    found = at >= 0
    same_code = np.zeros(len(bar_keys), dtype=bool)
    same_code[found] = factor_keys[at[found]] // 1_000_000 == bar_keys[found] // 1_000_000
    return np.where(same_code, values[np.clip(at, 0, None)], 1.0)


def stock_daily_rows(raw_bars: pd.DataFrame, factors: pd.DataFrame) -> pd.DataFrame:
    """stock_daily rows from raw_k_daily rows (unadjusted, adjustflag 3) and the code's factors.

    Prices, volume (shares), amount (CNY), turnover (%), valuation and flags pass through as
    BaoStock sends them; back_adjust_factor is the factor in force on the day.
    """
    adjust = raw_bars.get("adjust_flag")
    if adjust is not None and adjust.notna().any() and (adjust.dropna() != 3).any():
        raise ValueError("raw_k_daily holds adjusted bars (adjust_flag != 3): expected unadjusted")
    rows = raw_bars.loc[:, list(BAR_COLUMNS)].copy()
    rows["back_adjust_factor"] = factor_in_force(raw_bars, factors)
    return rows.reset_index(drop=True)


PRICE_TOLERANCE = 5e-5  # BaoStock's prices have 2-4 decimals


@dataclass(frozen=True)
class ExRights:
    """Per bar of one or more codes' histories (sorted by code, then day): the last traded close
    strictly before the bar, and whether the bar shows an ex-right.

    An ex-right (dividend, bonus shares, split, rights issue) shows in BaoStock's bars as a
    `pre_close` that differs from the previous traded close: on an ex-date pre_close is the
    ex-right reference price. Suspended bars (no close) show nothing: the first traded bar after
    them compares with the last traded close before them.
    """

    first: np.ndarray  # bool: the code's first bar
    group: np.ndarray  # int: one number per code
    traded: np.ndarray  # bool: the bar has a close
    last_close: np.ndarray  # float: last traded close before the bar (NaN: unknown)
    ex_right: np.ndarray  # bool: traded, last close known, pre_close differs from it

    @classmethod
    def of(cls, bars: pd.DataFrame, close_before: np.ndarray | None = None) -> ExRights:
        """`bars` sorted by code and day; `close_before[i]` is the last traded close before
        the first bar of row i's code (read where row i is a code's first bar; NaN: unknown)."""
        codes = bars["code"].to_numpy(object)
        first = np.ones(len(codes), dtype=bool)
        first[1:] = codes[1:] != codes[:-1]
        group = np.cumsum(first)
        close = bars["close"].to_numpy(np.float64)
        shifted = np.roll(close, 1)
        shifted[first] = np.nan if close_before is None else close_before[first]
        last_close = pd.Series(shifted).groupby(group).ffill().to_numpy(np.float64)
        traded = ~np.isnan(close)
        differs = ~(np.abs(bars["pre_close"].to_numpy(np.float64) - last_close) <= PRICE_TOLERANCE)
        ex_right = traded & differs & ~np.isnan(last_close)
        return cls(first, group, traded, last_close, ex_right)


def ex_right_codes(bars: pd.DataFrame, last_close_before: dict[str, float]) -> set[str]:
    """Codes whose adjust factor can have changed within `bars`' days.

    A factor changes by prev close / pre_close (the percentage-change method), so a code whose
    every traded bar has pre_close equal to the previous traded close kept its factor (see
    ExRights). `last_close_before` gives each code's last traded close before the first bar; a
    code without one (first listing, history not stored) counts as changed: it cannot be
    verified.
    """
    ordered = bars.sort_values(["code", "trade_date"], kind="stable")
    codes = ordered["code"].to_numpy(object)
    before = np.array([last_close_before.get(c, np.nan) for c in codes], dtype=np.float64)
    rights = ExRights.of(ordered, before)
    # A code's first traded bar with no close known before it cannot be verified.
    first_traded = rights.traded & (
        pd.Series(rights.traded).groupby(rights.group).cumsum().to_numpy() == 1
    )
    unknown = first_traded & np.isnan(rights.last_close)
    return set(codes[rights.ex_right | unknown].tolist())


def factor_corrections(
    stored: pd.DataFrame, served: pd.DataFrame, known_through: dict[str, dt.date]
) -> dict[str, dt.date]:
    """Per code, the earliest ex-date on or before `known_through[code]` where BaoStock's
    factors (`served`) differ from the stored ones: a factor added, withdrawn or changed.

    Both frames: code, divid_operate_date, back_adjust_factor. Back-adjust factors of past
    ex-dates never change in a correct history, so any difference is a correction.
    """
    columns = ["code", "divid_operate_date", "back_adjust_factor"]
    both = stored[columns].merge(
        served[columns], on=["code", "divid_operate_date"], how="outer", suffixes=("_s", "_n")
    )
    limit = both["code"].map(lambda c: np.datetime64(known_through.get(c, dt.date.min), "D"))
    within = both["divid_operate_date"].to_numpy("datetime64[D]") <= limit.to_numpy("datetime64[D]")
    old = both["back_adjust_factor_s"].to_numpy(np.float64)
    new = both["back_adjust_factor_n"].to_numpy(np.float64)
    same = np.abs(old - new) <= 1e-9 * np.maximum(np.abs(old), 1.0)  # NaN: one side missing
    changed = both.loc[within & ~same]
    earliest = changed.groupby("code")["divid_operate_date"].min()
    return {str(code): day.date() for code, day in earliest.items()}
