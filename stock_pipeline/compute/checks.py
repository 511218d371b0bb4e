"""Checks over frames already in memory (the ETL step has them): pure, tested without a database."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stock_pipeline.compute.daily import ExRights

FACTOR_TOLERANCE = 1e-9  # relative

DECREASED = "decreased"
UNEXPLAINED_CHANGE = "changed without an ex-right"
MISSED_CHANGE = "ex-right without a factor change"


def adjust_factor_violations(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows where the back-adjust factor breaks its rules, with the rule broken.

    `rows`: code, trade_date, pre_close, close, back_adjust_factor, for every day of each code
    (including the last stored row before the window, so the window's first day is compared
    too). Rules:
    - the factor never decreases along a code's history;
    - it changes only on an ex-right: the first traded bar on or after the change shows one (a
      change within a suspension shows at the first traded bar after it, and waits for it while
      the suspension lasts; a code's first traded bar with no close before it cannot show one
      and is taken as it is);
    - an ex-right changes it: its factor differs from the last traded bar's (a factor BaoStock
      had not published yet would otherwise be missed for good).
    """
    frame = rows.sort_values(["code", "trade_date"], kind="stable").reset_index(drop=True)
    if frame.empty:
        return frame.assign(rule=pd.Series([], dtype="str"))
    rights = ExRights.of(frame)
    factor = frame["back_adjust_factor"].to_numpy(np.float64)
    previous_factor = np.roll(factor, 1)
    previous_factor[rights.first] = np.nan
    # For each row: is the first traded row at or after it an ex-right, or one that cannot be
    # told (no traded close before it in the history given: a code suspended since its first
    # stored day)? Back-filled per code.
    unverifiable = rights.traded & np.isnan(rights.last_close)
    marker = pd.Series(np.where(rights.traded, rights.ex_right | unverifiable, np.nan))
    # A change with no traded bar after it yet (a suspension still running) is pending: the
    # first traded bar after the suspension verifies it, in the run that stores it.
    evidence = marker.groupby(rights.group).bfill().fillna(1).to_numpy(bool)
    scale = np.maximum(np.abs(previous_factor), 1.0)
    changed = np.abs(factor - previous_factor) > FACTOR_TOLERANCE * scale
    decreased = factor < previous_factor - FACTOR_TOLERANCE * scale
    unexplained = changed & ~decreased & ~evidence
    # The factor of the last traded bar before each row, within the code.
    traded_factor = np.where(rights.traded, factor, np.nan)
    shifted = np.roll(traded_factor, 1)
    shifted[rights.first] = np.nan
    factor_before = pd.Series(shifted).groupby(rights.group).ffill().to_numpy(np.float64)
    missed = rights.ex_right & (np.abs(factor - factor_before) <= FACTOR_TOLERANCE * scale)
    bad = decreased | unexplained | missed
    out = frame.loc[bad, ["code", "trade_date", "back_adjust_factor"]].copy()
    out["previous_factor"] = previous_factor[bad]
    out["rule"] = np.select(
        [decreased[bad], unexplained[bad]], [DECREASED, UNEXPLAINED_CHANGE], MISSED_CHANGE
    )
    return out.reset_index(drop=True)
