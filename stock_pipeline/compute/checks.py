"""Checks over frames already in memory (the ETL step has them): pure, tested without a database."""

from __future__ import annotations

import numpy as np
import pandas as pd

PRICE_TOLERANCE = 5e-5  # prices come with 2-4 decimals
FACTOR_TOLERANCE = 1e-9  # relative


def adjust_factor_violations(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows where the back-adjust factor breaks its rules, with the rule broken.

    `rows`: code, trade_date, pre_close, close, back_adjust_factor, for every day of each code
    in order (including the last stored row before the window, so the window's first day is
    compared too). Rules: the factor never decreases along a code's history, and it changes only
    on an ex-right date: the first traded bar on or after the change has a pre_close different
    from the last traded close before it (the ex-right reference price). A change within a
    suspension shows at the first traded bar after it.
    """
    frame = rows.sort_values(["code", "trade_date"], kind="stable").reset_index(drop=True)
    if frame.empty:
        return frame.assign(rule=pd.Series([], dtype="str"))
    codes = frame["code"].to_numpy(object)
    first = np.ones(len(frame), dtype=bool)
    first[1:] = codes[1:] != codes[:-1]
    group = np.cumsum(first)
    factor = frame["back_adjust_factor"].to_numpy(np.float64)
    previous_factor = np.roll(factor, 1)
    previous_factor[first] = np.nan
    close = frame["close"].to_numpy(np.float64)
    # The last traded close strictly before each row, within the code.
    shifted = np.roll(close, 1)
    shifted[first] = np.nan
    last_close = pd.Series(shifted).groupby(group).ffill().to_numpy(np.float64)
    pre_close = frame["pre_close"].to_numpy(np.float64)
    traded = ~np.isnan(close)
    ex_right = traded & ~(np.abs(pre_close - last_close) <= PRICE_TOLERANCE)
    ex_right &= ~np.isnan(last_close)
    # For each row: is the first traded row at or after it an ex-right? (back-fill per code)
    marker = pd.Series(np.where(traded, ex_right, np.nan))
    evidence = marker.groupby(group).bfill().fillna(0).to_numpy(bool)
    scale = np.maximum(np.abs(previous_factor), 1.0)
    changed = np.abs(factor - previous_factor) > FACTOR_TOLERANCE * scale
    decreased = factor < previous_factor - FACTOR_TOLERANCE * scale
    unexplained = changed & ~decreased & ~evidence
    out = frame.loc[decreased | unexplained, ["code", "trade_date", "back_adjust_factor"]].copy()
    out["previous_factor"] = previous_factor[decreased | unexplained]
    out["rule"] = np.where(
        decreased[decreased | unexplained], "decreased", "changed without an ex-right"
    )
    return out.reset_index(drop=True)
