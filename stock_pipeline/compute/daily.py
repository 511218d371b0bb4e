"""Daily bars: raw k-lines to stock_daily rows, and the back-adjust factor in force on each day.

BaoStock publishes one back-adjust (hfq) factor per ex-right date (query_adjust_factor); the
factor of a day is that of the latest ex-right date on or before it, 1.0 before the first one.
Storing unadjusted prices with that factor keeps both adjusted series one multiplication away:
back-adjusted = price * factor; forward-adjusted = price * factor / latest factor.
"""

from __future__ import annotations

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


def ex_right_codes(
    bars: pd.DataFrame, last_close_before: dict[str, float], *, tolerance: float = 5e-5
) -> set[str]:
    """Codes whose adjust factor can have changed within `bars`' days.

    An ex-right (dividend, bonus shares, split, rights issue) shows in BaoStock's bars as a
    `pre_close` that differs from the previous traded close: on an ex-date pre_close is the
    ex-right reference price. A factor changes by prev close / pre_close (the percentage-change
    method), so a code whose every traded bar has pre_close equal to the previous close kept its
    factor. `last_close_before` gives each code's last traded close before the first bar; a code
    without one (first listing, history not stored) counts as changed: it cannot be verified.
    Suspended bars (no close) are skipped: the first traded bar after them compares with the last
    traded close before them.
    """
    traded = bars.loc[bars["close"].notna(), ["code", "trade_date", "pre_close", "close"]]
    traded = traded.sort_values(["code", "trade_date"], kind="stable")
    codes = traded["code"].to_numpy(object)
    if len(codes) == 0:
        return set()
    first = np.ones(len(codes), dtype=bool)
    first[1:] = codes[1:] != codes[:-1]
    close = traded["close"].to_numpy(np.float64)
    previous = np.empty(len(codes))
    previous[1:] = close[:-1]
    previous[first] = [last_close_before.get(c, np.nan) for c in codes[first]]
    pre = traded["pre_close"].to_numpy(np.float64)
    changed = ~(np.abs(pre - previous) <= tolerance)  # NaN (unknown) counts as changed
    return set(codes[changed].tolist())
