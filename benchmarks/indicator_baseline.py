"""The original system's way of computing indicators, as the baseline of the indicator stage:
one stock at a time, pandas over its history, KDJ in a Python loop over the days.

Same conventions as compute/indicators.py (so the work is the same), none of its vectorisation
across codes. Used by backfill.py; `throughput()` times both on the same bars.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from stock_pipeline.assets.indicators.build import CODES_PER_BATCH
from stock_pipeline.compute.indicators import INDICATORS, STATE_COLUMNS, compute_indicators


def one_stock(bars: pd.DataFrame) -> pd.DataFrame:
    """Indicators of one code's traded bars (hfq high/low/close, volume), pandas per column."""
    factor = bars["back_adjust_factor"]
    close, high, low = bars["close"] * factor, bars["high"] * factor, bars["low"] * factor
    volume = bars["volume"].astype(float)
    out = pd.DataFrame({"close_hfq": close})
    for n in (5, 10, 20, 60, 120, 250):
        out[f"ma{n}"] = close.rolling(n).mean()
    ema12, ema26 = close.ewm(span=12, adjust=False).mean(), close.ewm(span=26, adjust=False).mean()
    out["macd_dif"] = ema12 - ema26
    out["macd_dea"] = out["macd_dif"].ewm(span=9, adjust=False).mean()
    out["macd_hist"] = 2 * (out["macd_dif"] - out["macd_dea"])
    top, bottom = high.rolling(9, min_periods=1).max(), low.rolling(9, min_periods=1).min()
    rsv = ((close - bottom) / (top - bottom) * 100).where(top != bottom, 50.0)
    k_values, d_values, k, d = [], [], 50.0, 50.0
    for value in rsv:  # the original's loop over the days
        k = (2 * k + value) / 3
        d = (2 * d + k) / 3
        k_values.append(k)
        d_values.append(d)
    out["kdj_k"], out["kdj_d"] = k_values, d_values
    out["kdj_j"] = 3 * out["kdj_k"] - 2 * out["kdj_d"]
    change = close.diff()
    for n in (6, 12, 24):
        gain = change.clip(lower=0).ewm(alpha=1 / n, adjust=False).mean()
        loss = (-change).clip(lower=0).ewm(alpha=1 / n, adjust=False).mean()
        out[f"rsi{n}"] = 100 * gain / (gain + loss)
    mid, std = close.rolling(20).mean(), close.rolling(20).std(ddof=0)
    out["boll_mid"], out["boll_upper"], out["boll_lower"] = mid, mid + 2 * std, mid - 2 * std
    out["vol_ma5"], out["vol_ma10"] = volume.rolling(5).mean(), volume.rolling(10).mean()
    out["vol_ratio"] = volume / out["vol_ma5"]
    previous = close.shift()
    true_range = pd.concat(
        [high - low, (high - previous).abs(), (low - previous).abs()], axis=1
    ).max(axis=1)
    out["atr14"] = true_range.ewm(alpha=1 / 14, adjust=False).mean()
    top14, bottom14 = high.rolling(14).max(), low.rolling(14).min()
    out["wr14"] = (top14 - close) / (top14 - bottom14) * 100
    typical = (high + low + close) / 3
    mean = typical.rolling(14).mean()
    deviation = typical.rolling(14).apply(lambda x: np.abs(x - x.mean()).mean(), raw=True)
    out["cci14"] = (typical - mean) / (0.015 * deviation)
    out["bias20"] = (close - mid) / mid * 100
    out["obv"] = (np.sign(change).fillna(1) * volume).cumsum()
    out["donchian_upper20"] = high.rolling(20).max().shift()
    out["donchian_lower20"] = low.rolling(20).min().shift()
    out["high_20"], out["high_60"] = high.rolling(20).max(), high.rolling(60).max()
    return out


def per_code_loop(bars: pd.DataFrame) -> int:
    """The baseline over every code of `bars`; returns the bars computed."""
    done = 0
    for _, group in bars[bars["close"].notna()].groupby("code", sort=False):
        done += len(one_stock(group))
    return done


def throughput(bars: pd.DataFrame, sample_codes: int) -> dict[str, Any]:
    """Bars per second: compute_indicators over all of `bars`, the per-code loop over a sample
    of its codes (the loop's rate does not depend on how many codes it is given)."""
    empty = pd.DataFrame(columns=["code", *INDICATORS, *STATE_COLUMNS])
    codes = pd.unique(bars["code"])
    ours, ours_s = 0, 0.0
    for start in range(0, len(codes), CODES_PER_BATCH):  # as the asset batches them
        batch = bars[bars["code"].isin(codes[start : start + CODES_PER_BATCH])]
        began = time.perf_counter()
        ours += len(compute_indicators(batch, batch.iloc[:0], empty))
        ours_s += time.perf_counter() - began
    codes = codes[:sample_codes]
    sample = bars[bars["code"].isin(codes)]
    began = time.perf_counter()
    theirs = per_code_loop(sample)
    theirs_s = time.perf_counter() - began
    return {
        "vectorised_bars": ours,
        "vectorised_bars_per_s": round(ours / ours_s),
        "per_code_loop_codes": len(codes),
        "per_code_loop_bars_per_s": round(theirs / theirs_s),
        "speedup": round((ours / ours_s) / (theirs / theirs_s), 1),
    }
