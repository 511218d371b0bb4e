"""Technical indicators on back-adjusted (hfq) prices, for every code at once.

Conventions (reference-design.md), all on hfq prices (price x back-adjust factor), which never
change when a later dividend arrives:
- MA n: simple mean of the last n closes. vol_ma n: the same over volume (shares, as stored).
- MACD 12/26/9: EMAs with alpha = 2 / (n + 1), seeded with the first value (pandas
  adjust=False); dif = EMA12 - EMA26, dea = EMA9 of dif, hist = 2 x (dif - dea).
- KDJ 9/3/3: RSV = (close - lowest low) / (highest high - lowest low) x 100 over the last 9
  bars (fewer at the start of a history), 50 when high == low; K = (2 K + RSV) / 3,
  D = (2 D + K) / 3, both seeded at 50; J = 3 K - 2 D.
- RSI 6/12/24 and ATR 14, Wilder: the average gain / loss / true range is the plain mean of the
  first n values, then avg = (avg x (n - 1) + value) / n; RSI = 100 x gain / (gain + loss)
  (50 when nothing moved). True range needs the previous close, so ATR starts one bar later.
- BOLL 20/2: mid = MA20, bands = mid +- 2 population standard deviations.
- vol_ratio = volume / vol_ma5; WR14 = (highest high - close) / (highest high - lowest low) x
  100 (50 when high == low); CCI14 = (TP - MA14(TP)) / (0.015 x mean deviation), TP = (high +
  low + close) / 3 (0 when the mean deviation is 0); bias20 = (close - MA20) / MA20 x 100.
- OBV starts at the first bar's volume, then adds or subtracts each bar's volume by the sign of
  the close's change.
- Donchian 20: highest high / lowest low of the 20 bars BEFORE the day; high_20 / high_60:
  highest high of the last 20 / 60 bars including the day.

Suspended days carry no price. Every indicator counts traded bars only: windows span the last n
traded bars and the recursive averages advance on traded bars only, so a suspension neither
drags a mean towards zero nor decays an EMA. A suspended day's row repeats the values of the
code's last traded day (what a screen sees on that day); before a code's first traded bar every
value is NULL.

Incremental and exact: a range needs, per code, the last LOOKBACK traded bars before it (the
windows) and the code's last technical_daily row before it (the recursive state in
STATE_COLUMNS, and the values a suspended first day repeats). A range run, day-by-day runs and a
full recompute then agree to rounding: the recursions replay the same arithmetic from the same
stored state; only the rolling sums may differ in the last bits.

Vectorised: bars go into a (bar number x code) panel; the rolling windows are array operations
on it and the recursions loop over bar numbers, each step covering every code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

# The longest window (MA250) needs 249 traded bars before the day.
LOOKBACK = 249

MA_WINDOWS = (5, 10, 20, 60, 120, 250)
RSI_WINDOWS = (6, 12, 24)
ATR_WINDOW = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
KDJ_WINDOW = 9
BOLL_WINDOW, BOLL_WIDTH = 20, 2.0
WR_WINDOW = CCI_WINDOW = 14
DONCHIAN_WINDOW = 20
SHORT_WINDOW = 20  # windows up to this length are summed exactly (see _rolling_mean)

# What a later range continues from, stored with each technical_daily row besides the
# indicators that are their own state (close_hfq, macd_dea, kdj_k, kdj_d, obv).
RECURSIVE_STATE: tuple[str, ...] = (
    "ema12",
    "ema26",
    *(f"avg_{side}{n}" for n in RSI_WINDOWS for side in ("gain", "loss")),
    "tr_avg14",
)
STATE_COLUMNS: tuple[str, ...] = ("traded_bars", *RECURSIVE_STATE)

# Traded bars a code needs before each indicator has a value (warm-up).
WARM_UP: dict[str, int] = {
    "close_hfq": 1,
    **{f"ma{n}": n for n in MA_WINDOWS},
    "macd_dif": 1,
    "macd_dea": 1,
    "macd_hist": 1,
    "kdj_k": 1,
    "kdj_d": 1,
    "kdj_j": 1,
    **{f"rsi{n}": n + 1 for n in RSI_WINDOWS},
    "boll_upper": BOLL_WINDOW,
    "boll_mid": BOLL_WINDOW,
    "boll_lower": BOLL_WINDOW,
    "vol_ma5": 5,
    "vol_ma10": 10,
    "vol_ratio": 5,
    "atr14": ATR_WINDOW + 1,
    "wr14": WR_WINDOW,
    "cci14": CCI_WINDOW,
    "bias20": 20,
    "obv": 1,
    "donchian_upper20": DONCHIAN_WINDOW + 1,
    "donchian_lower20": DONCHIAN_WINDOW + 1,
    "high_20": 20,
    "high_60": 60,
}
INDICATORS: tuple[str, ...] = tuple(WARM_UP)

# Inputs: stock_daily columns.
BAR_INPUTS = ("code", "trade_date", "high", "low", "close", "volume", "back_adjust_factor")


@dataclass
class _Panel:
    """Traded bars as (bar number x code) arrays: the range's bars start at row LOOKBACK of
    every column, the lookback's end just above it; NaN where a code has no bar."""

    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    row: np.ndarray  # per traded range bar (in input order): its panel row
    column: np.ndarray  # ... and its panel column


def compute_indicators(
    rows: pd.DataFrame, lookback: pd.DataFrame, previous: pd.DataFrame
) -> pd.DataFrame:
    """technical_daily rows (code, trade_date, INDICATORS, STATE_COLUMNS) for `rows`, one per
    row, sorted by code and trade_date.

    rows: stock_daily rows of the range (BAR_INPUTS; suspended days with NULL prices);
    lookback: up to LOOKBACK traded stock_daily rows per code before the range (BAR_INPUTS);
    previous: per code, its last technical_daily row before the range (code, INDICATORS,
    STATE_COLUMNS); a code without one starts its history in this range.
    """
    rows = rows.sort_values(["code", "trade_date"], kind="stable", ignore_index=True)
    codes = pd.Index(pd.unique(rows["code"]))
    columns = [*INDICATORS, *STATE_COLUMNS]
    previous = previous.set_index("code").reindex(index=codes, columns=columns)
    previous = previous.astype({name: np.float64 for name in columns})
    traded = rows["close"].notna().to_numpy()
    panel = _build_panel(rows.loc[traded], lookback, codes)
    rolling = _rolling(panel)
    values = {**rolling, **_recursive(panel, previous, rolling.pop("rsv"))}
    return _assemble(rows, traded, codes, panel, values, previous)


def hfq_prices(bars: pd.DataFrame) -> dict[str, np.ndarray]:
    """Back-adjusted high, low and close: price x the back-adjust factor in force."""
    factor = bars["back_adjust_factor"].to_numpy(np.float64)
    return {name: bars[name].to_numpy(np.float64) * factor for name in ("high", "low", "close")}


def _build_panel(traded: pd.DataFrame, lookback: pd.DataFrame, codes: pd.Index) -> _Panel:
    lookback = lookback[lookback["code"].isin(codes) & lookback["close"].notna()]
    lookback = lookback.sort_values(["code", "trade_date"], kind="stable")
    range_column = codes.get_indexer(traded["code"])
    range_row = LOOKBACK + traded.groupby("code", sort=False).cumcount().to_numpy()
    back_column = codes.get_indexer(lookback["code"])
    # The lookback's last bar sits just above row LOOKBACK.
    from_end = lookback.groupby("code", sort=False).cumcount(ascending=False).to_numpy()
    back_row = LOOKBACK - 1 - from_end
    if (back_row < 0).any():
        code = lookback["code"].to_numpy()[np.flatnonzero(back_row < 0)[0]]
        raise ValueError(f"lookback holds more than {LOOKBACK} traded bars for {code}")
    height = LOOKBACK + (int(range_row.max()) - LOOKBACK + 1 if len(range_row) else 0)
    shape = (height, len(codes))
    arrays = {}
    range_prices, back_prices = hfq_prices(traded), hfq_prices(lookback)
    range_prices["volume"] = traded["volume"].to_numpy(np.float64)
    back_prices["volume"] = lookback["volume"].to_numpy(np.float64)
    for name in ("high", "low", "close", "volume"):
        array = np.full(shape, np.nan)
        array[back_row, back_column] = back_prices[name]
        array[range_row, range_column] = range_prices[name]
        arrays[name] = array
    return _Panel(**arrays, row=range_row, column=range_column)


def _lagged(x: np.ndarray, lag: int) -> np.ndarray:
    """x moved `lag` rows down each column (NaN above)."""
    out = np.full(x.shape, np.nan)
    out[lag:] = x[: x.shape[0] - lag]
    return out


def _rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    """Mean of the last n values down each column; NaN unless all n exist.

    Short windows add their n values in a fixed order, so a value never depends on where the
    panel starts: differences from it (close - MA20, CCI's TP - mean) stay exact across range
    runs however close to zero they are. Long windows (MA60+, always far from zero) use running
    sums: the same to about 1e-14 relative, at a fraction of the cost.
    """
    if n <= SHORT_WINDOW:
        total = x.copy()
        for lag in range(1, n):
            total[lag:] += x[: x.shape[0] - lag]
        total[: n - 1] = np.nan
        return total / n
    present = ~np.isnan(x)
    sums = np.zeros((x.shape[0] + 1, x.shape[1]))
    np.cumsum(np.where(present, x, 0.0), axis=0, out=sums[1:])
    counts = np.zeros((x.shape[0] + 1, x.shape[1]), dtype=np.int64)
    np.cumsum(present, axis=0, out=counts[1:])
    out = np.full(x.shape, np.nan)
    if x.shape[0] >= n:
        full = counts[n:] - counts[:-n] == n
        out[n - 1 :] = np.where(full, (sums[n:] - sums[:-n]) / n, np.nan)
    return out


def _rolling_extreme(x: np.ndarray, n: int, *, highest: bool, partial: bool = False) -> np.ndarray:
    """Highest / lowest of the last n values down each column. NaN unless all n exist, or
    (partial) unless at least one does."""
    padded = np.vstack([np.full((n - 1, x.shape[1]), np.nan), x])
    windows = sliding_window_view(padded, n, axis=0)
    # fmax / fmin skip missing bars; maximum / minimum turn any missing bar into NaN.
    reduce = {
        (True, True): np.fmax,
        (False, True): np.fmin,
        (True, False): np.maximum,
        (False, False): np.minimum,
    }[highest, partial]
    return reduce.reduce(windows, axis=-1)


def _mean_deviation(x: np.ndarray, mean: np.ndarray, n: int, *, squared: bool) -> np.ndarray:
    """Mean (absolute or squared) deviation of the last n values from `mean` (per row)."""
    total = np.zeros(x.shape)
    rows = x.shape[0]
    for lag in range(n):
        deviation = x[: rows - lag] - mean[lag:]
        total[lag:] += deviation * deviation if squared else np.abs(deviation)
    total[: n - 1] = np.nan
    return total / n


def _ratio_or(numerator: np.ndarray, denominator: np.ndarray, fallback: float) -> np.ndarray:
    """numerator / denominator, `fallback` where the denominator is 0 (NaN stays NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator / denominator
    return np.where(denominator == 0, fallback, out)


def _rolling(panel: _Panel) -> dict[str, np.ndarray]:
    """The window indicators over the whole panel (lookback rows give the windows history)."""
    high, low, close, volume = panel.high, panel.low, panel.close, panel.volume
    out = {f"ma{n}": _rolling_mean(close, n) for n in MA_WINDOWS}
    mid = out["ma20"]
    width = BOLL_WIDTH * np.sqrt(_mean_deviation(close, mid, BOLL_WINDOW, squared=True))
    out.update(boll_mid=mid, boll_upper=mid + width, boll_lower=mid - width)
    out["vol_ma5"] = _rolling_mean(volume, 5)
    out["vol_ma10"] = _rolling_mean(volume, 10)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["vol_ratio"] = volume / out["vol_ma5"]
        out["bias20"] = (close - mid) / mid * 100.0
    top = _rolling_extreme(high, WR_WINDOW, highest=True)
    bottom = _rolling_extreme(low, WR_WINDOW, highest=False)
    out["wr14"] = _ratio_or((top - close) * 100.0, top - bottom, 50.0)
    typical = (high + low + close) / 3.0
    typical_mean = _rolling_mean(typical, CCI_WINDOW)
    deviation = _mean_deviation(typical, typical_mean, CCI_WINDOW, squared=False)
    cci = _ratio_or(typical - typical_mean, 0.015 * deviation, 0.0)
    # A flat window's mean is inexact in binary: its leftover would divide by itself.
    flat = _rolling_extreme(typical, CCI_WINDOW, highest=True) == _rolling_extreme(
        typical, CCI_WINDOW, highest=False
    )
    out["cci14"] = np.where(flat, 0.0, cci)
    high_20 = _rolling_extreme(high, DONCHIAN_WINDOW, highest=True)
    low_20 = _rolling_extreme(low, DONCHIAN_WINDOW, highest=False)
    out.update(high_20=high_20, high_60=_rolling_extreme(high, 60, highest=True))
    out["donchian_upper20"] = _lagged(high_20, 1)
    out["donchian_lower20"] = _lagged(low_20, 1)
    kdj_top = _rolling_extreme(high, KDJ_WINDOW, highest=True, partial=True)
    kdj_bottom = _rolling_extreme(low, KDJ_WINDOW, highest=False, partial=True)
    out["rsv"] = _ratio_or((close - kdj_bottom) * 100.0, kdj_top - kdj_bottom, 50.0)
    # Only the range's rows are kept.
    return {name: values[LOOKBACK:] for name, values in out.items()}


def _state(previous: pd.DataFrame, name: str, default: float = np.nan) -> np.ndarray:
    """A state column per code; `default` where a code has none yet."""
    values = previous[name].to_numpy(np.float64)
    return np.where(np.isnan(values), default, values)


def _ema_step(previous: np.ndarray, value: np.ndarray, alpha: float) -> np.ndarray:
    """One step of an EMA seeded with its first value (pandas ewm adjust=False)."""
    return np.where(np.isnan(previous), value, (1.0 - alpha) * previous + alpha * value)


def _wilder_step(average: np.ndarray, value: np.ndarray, count: np.ndarray, n: int) -> np.ndarray:
    """Wilder's average after its `count`-th value: the plain mean of the first n values,
    then (average x (n - 1) + value) / n."""
    k = np.minimum(count, n).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(count <= 1, value, (average * (k - 1.0) + value) / k)


def _recursive(panel: _Panel, previous: pd.DataFrame, rsv: np.ndarray) -> dict[str, np.ndarray]:
    """The recursive indicators, continued from each code's previous state, one bar number
    at a time for all codes (a step leaves codes without a bar at that number unchanged)."""
    close, high = panel.close[LOOKBACK:], panel.high[LOOKBACK:]
    low, volume = panel.low[LOOKBACK:], panel.volume[LOOKBACK:]
    bars = _state(previous, "traded_bars", 0.0)
    last_close = _state(previous, "close_hfq")
    state = {name: _state(previous, name) for name in RECURSIVE_STATE}
    state.update(
        macd_dea=_state(previous, "macd_dea"),
        kdj_k=_state(previous, "kdj_k", 50.0),
        kdj_d=_state(previous, "kdj_d", 50.0),
        obv=_state(previous, "obv"),
    )
    names = ("traded_bars", "macd_dif", "macd_hist", "kdj_j", "atr14", *RECURSIVE_STATE)
    names += (*(f"rsi{n}" for n in RSI_WINDOWS), "macd_dea", "kdj_k", "kdj_d", "obv")
    out = {name: np.full(close.shape, np.nan) for name in dict.fromkeys(names)}
    for i in range(close.shape[0]):
        c, traded = close[i], ~np.isnan(close[i])
        bars = bars + traded
        changes = bars - 1.0  # price changes seen, this bar's included
        step = {}
        step["ema12"] = _ema_step(state["ema12"], c, 2.0 / (MACD_FAST + 1))
        step["ema26"] = _ema_step(state["ema26"], c, 2.0 / (MACD_SLOW + 1))
        dif = step["ema12"] - step["ema26"]
        step["macd_dea"] = _ema_step(state["macd_dea"], dif, 2.0 / (MACD_SIGNAL + 1))
        step["kdj_k"] = (2.0 * state["kdj_k"] + rsv[i]) / 3.0
        step["kdj_d"] = (2.0 * state["kdj_d"] + step["kdj_k"]) / 3.0
        change = c - last_close
        for n in RSI_WINDOWS:
            gain, loss = np.maximum(change, 0.0), np.maximum(-change, 0.0)
            step[f"avg_gain{n}"] = _wilder_step(state[f"avg_gain{n}"], gain, changes, n)
            step[f"avg_loss{n}"] = _wilder_step(state[f"avg_loss{n}"], loss, changes, n)
        true_range = np.fmax(high[i] - low[i], np.abs(high[i] - last_close))
        true_range = np.maximum(true_range, np.abs(low[i] - last_close))
        step["tr_avg14"] = _wilder_step(state["tr_avg14"], true_range, changes, ATR_WINDOW)
        step["obv"] = np.where(
            np.isnan(state["obv"]), volume[i], state["obv"] + np.sign(change) * volume[i]
        )
        for name, value in step.items():
            state[name] = np.where(traded, value, state[name])
        last_close = np.where(traded, c, last_close)
        _record(out, i, state, bars, dif)
    return out


def _record(
    out: dict[str, np.ndarray],
    i: int,
    state: dict[str, np.ndarray],
    bars: np.ndarray,
    dif: np.ndarray,
) -> None:
    """Row i of the recursive outputs (codes without a bar there are never read back)."""
    for name, value in state.items():
        out[name][i] = value
    out["traded_bars"][i] = bars
    out["macd_dif"][i] = dif
    out["macd_hist"][i] = 2.0 * (dif - state["macd_dea"])
    out["kdj_j"][i] = 3.0 * state["kdj_k"] - 2.0 * state["kdj_d"]
    changes = bars - 1.0
    out["atr14"][i] = np.where(changes >= ATR_WINDOW, state["tr_avg14"], np.nan)
    for n in RSI_WINDOWS:
        gain, loss = state[f"avg_gain{n}"], state[f"avg_loss{n}"]
        rsi = _ratio_or(100.0 * gain, gain + loss, 50.0)
        out[f"rsi{n}"][i] = np.where(changes >= n, rsi, np.nan)


def _assemble(
    rows: pd.DataFrame,
    traded: np.ndarray,
    codes: pd.Index,
    panel: _Panel,
    values: dict[str, np.ndarray],
    previous: pd.DataFrame,
) -> pd.DataFrame:
    """One output row per input row: a traded day its own values, a suspended day those of
    the code's last traded day (in the range, or the previous row before it)."""
    n = len(rows)
    position = np.arange(n)
    code_numbers = codes.get_indexer(rows["code"])
    first = np.ones(n, dtype=bool)
    first[1:] = code_numbers[1:] != code_numbers[:-1]
    group_start = np.maximum.accumulate(np.where(first, position, 0))
    source = np.maximum.accumulate(np.where(traded, position, -1))
    from_previous = source < group_start
    # Where each row's values sit in the flattened (bar number x code) range panel.
    own = np.zeros(n, dtype=np.int64)
    own[traded] = (panel.row - LOOKBACK) * len(codes) + panel.column
    in_range = ~from_previous
    flat = own[source[in_range]]
    values["close_hfq"] = panel.close[LOOKBACK:]
    names = [*INDICATORS, *STATE_COLUMNS]
    matrix = np.full((n, len(names)), np.nan, order="F")  # column writes stay contiguous
    for k, name in enumerate(names):
        if in_range.all():
            matrix[:, k] = values[name].ravel()[flat]
        else:
            matrix[in_range, k] = values[name].ravel()[flat]
        if from_previous.any():
            before = previous[name].to_numpy(np.float64)
            matrix[from_previous, k] = before[code_numbers[from_previous]]
    out = pd.DataFrame(matrix, columns=names, copy=False)
    out.insert(0, "code", rows["code"].to_numpy(object))
    out.insert(1, "trade_date", rows["trade_date"].to_numpy())
    out["traded_bars"] = np.nan_to_num(out["traded_bars"].to_numpy()).astype(np.int64)
    return out
