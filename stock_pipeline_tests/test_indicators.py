"""compute/indicators.py on three years of simulated BaoStock history, fetched through the real
baostock client over TCP: checked against TA-Lib, across range / day-by-day runs, and against
dividends that arrive later. No database.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import baostock
import numpy as np
import pandas as pd
import pytest
import talib

from stock_pipeline.baostock.endpoint import point_client_at
from stock_pipeline.baostock.simulator import Market, SimulatorConfig, SimulatorServer
from stock_pipeline.compute.daily import ExRights, factor_in_force
from stock_pipeline.compute.indicators import (
    BAR_INPUTS,
    INDICATORS,
    LOOKBACK,
    STATE_COLUMNS,
    WARM_UP,
    compute_indicators,
)

RANGE_START, RANGE_END = date(2021, 1, 4), date(2023, 12, 29)
SIM = SimulatorConfig(seed=11, n_codes=400, end=RANGE_END)
KLINE_FIELDS = "date,code,high,low,close,preclose,volume,tradestatus"
OUTPUT_COLUMNS = ["code", "trade_date", *INDICATORS, *STATE_COLUMNS]
VALUE_COLUMNS = [*INDICATORS, *STATE_COLUMNS]
FRESH = pd.DataFrame(columns=["code", *INDICATORS, *STATE_COLUMNS])  # no history yet
# Split days are looked for from here: mid-range, in the simulator's dividend season.
SPLIT_SEARCH_FROM = pd.Timestamp("2022-06-01")
DAY_BY_DAY = 20


@dataclass(frozen=True)
class History:
    rows: pd.DataFrame  # stock_daily-like rows (BAR_INPUTS + pre_close), sorted by code, day
    factors: pd.DataFrame  # code, divid_operate_date, back_adjust_factor (all ex-dates to the end)
    full: pd.DataFrame  # compute_indicators over the whole range from a fresh history
    ipo_codes: list[str]  # first bar inside the range
    split: pd.Timestamp  # a day where some code is suspended across it and some code goes ex


def _pick_codes(market: Market) -> list[str]:
    """15 codes with 3+ ex-right dates in the range, 15 with 20+ suspended days, 5 listed in
    the first half of 2021 (long enough for MA250) and 5 listed later (short histories)."""
    groups: dict[str, list[str]] = {"ex": [], "suspended": [], "ipo_early": [], "ipo_late": []}
    wanted = {"ex": 15, "suspended": 15, "ipo_early": 5, "ipo_late": 5}
    for code in market.all_codes():
        listing = market.listing(code)
        if listing is None or listing.is_index or (listing.out and listing.out <= RANGE_END):
            continue
        if RANGE_START < listing.ipo <= date(2021, 6, 30):
            group = "ipo_early"
        elif date(2021, 6, 30) < listing.ipo <= date(2023, 9, 30):
            group = "ipo_late"
        elif len(market.adjust_factors(code, RANGE_START, RANGE_END)) >= 3:
            group = "ex"
        else:
            status = market.daily_columns(code, RANGE_START, RANGE_END, fields=["tradestatus"])
            group = "suspended" if status["tradestatus"].count("0") >= 20 else ""
        if group and len(groups[group]) < wanted[group]:
            groups[group].append(code)
        if all(len(groups[g]) == n for g, n in wanted.items()):
            break
    return sorted(code for codes in groups.values() for code in codes)


def _drain(result: Any) -> list[list[str]]:
    """All rows of a baostock result, across pages (its get_data() breaks on pandas >= 2)."""
    assert result.error_code == "0", (result.error_code, result.error_msg)
    rows = []
    while result.next():
        rows.append(result.get_row_data())
    return rows


def _fetch(codes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Unadjusted daily bars in the range and every adjust factor up to its end (the factor in
    force on the first day comes from an earlier ex-date), as the pipeline stores them."""
    bars, factors = [], []
    assert baostock.login().error_code == "0"
    try:
        for code in codes:
            bars += _drain(
                baostock.query_history_k_data_plus(
                    code, KLINE_FIELDS, RANGE_START.isoformat(), RANGE_END.isoformat(), "d", "3"
                )
            )
            factors += _drain(baostock.query_adjust_factor(code, "1990-01-01", str(RANGE_END)))
    finally:
        baostock.logout()
    names = ["trade_date", "code", "high", "low", "close", "pre_close", "volume", "trade_status"]
    raw = pd.DataFrame(bars, columns=names).replace("", np.nan)  # suspended: empty prices
    raw["trade_date"] = pd.to_datetime(raw["trade_date"])
    for name in ("high", "low", "close", "pre_close", "volume"):
        raw[name] = raw[name].astype(np.float64)
    # query_adjust_factor rows: code, dividOperateDate, foreAdjustFactor, backAdjustFactor, ...
    factor_frame = pd.DataFrame(
        {
            "code": [f[0] for f in factors],
            "divid_operate_date": pd.to_datetime([f[1] for f in factors]),
            "back_adjust_factor": [float(f[3]) for f in factors],
        }
    )
    return raw, factor_frame


def _stock_daily(raw: pd.DataFrame, factors: pd.DataFrame) -> pd.DataFrame:
    rows = raw.sort_values(["code", "trade_date"], ignore_index=True)
    rows["back_adjust_factor"] = factor_in_force(rows, factors)
    return rows[[*BAR_INPUTS, "pre_close"]]


def _factor_steps(rows: pd.DataFrame) -> pd.Series:
    """Per row: the back-adjust factor differs from the code's previous row (an ex-date)."""
    first = rows["code"].ne(rows["code"].shift())
    return rows["back_adjust_factor"].ne(rows["back_adjust_factor"].shift()) & ~first


def _find_split(rows: pd.DataFrame) -> pd.Timestamp:
    """The first day from SPLIT_SEARCH_FROM where some code is suspended on it and on the day
    before, and some code's ex-date is that day (its lookback holds the old factor)."""
    first = rows["code"].ne(rows["code"].shift())
    suspended = rows["close"].isna()
    across = suspended & suspended.shift(fill_value=False) & ~first
    days = set(rows.loc[_factor_steps(rows), "trade_date"]) & set(rows.loc[across, "trade_date"])
    return min(day for day in days if day >= SPLIT_SEARCH_FROM)


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    with SimulatorServer(SIM, port=0) as sim:
        codes = _pick_codes(sim.market)
        point_client_at(sim.host, sim.port)
        raw, factors = _fetch(codes)
    rows = _stock_daily(raw, factors)
    assert sorted(pd.unique(rows["code"])) == codes and len(codes) == 40

    # What the set provably contains, from the fetched data alone.
    steps = _factor_steps(rows)
    assert (steps.groupby(rows["code"]).sum() >= 3).sum() >= 10  # several ex-dates in range
    # Each factor step shows in the prices as an ex-right (pre_close != last close), and only
    # there: the factors and the bars agree.
    np.testing.assert_array_equal(ExRights.of(rows).ex_right, steps.to_numpy())
    assert (rows["close"].isna().groupby(rows["code"]).sum() >= 20).sum() >= 10  # suspensions
    first_day = rows.groupby("code")["trade_date"].min()
    ipo_codes = sorted(first_day.index[first_day > pd.Timestamp(RANGE_START)])
    assert len(ipo_codes) >= 8
    traded_bars = rows["close"].notna().groupby(rows["code"]).sum()
    assert traded_bars[ipo_codes].max() > 300  # one listed early enough for every warm-up

    full = compute_indicators(rows, rows.iloc[:0], FRESH)
    # Output rows come sorted by code and day, like `rows`: the same index addresses both.
    assert (full[["code", "trade_date"]] == rows[["code", "trade_date"]]).all(axis=None)
    yield History(rows, factors, full, ipo_codes, _find_split(rows))


def _traded(history: History, code: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A code's traded input rows and their output rows (same order)."""
    rows = history.rows
    bars = rows.loc[(rows["code"] == code) & rows["close"].notna()]
    return bars, history.full.loc[bars.index]


# ----- 1. against TA-Lib ---------------------------------------------------------------------

# Quantities that cross zero: an error relative to the value itself is meaningless near zero,
# so these compare relative to the code's typical size (median |reference|).
CROSSES_ZERO = {"macd_dif", "macd_dea", "macd_hist", "cci14", "bias20", "kdj_j"}
# TA-Lib seeds each MACD EMA with an SMA, ours with the first close: the gap shrinks by
# 25/27 a bar (EMA26), below 1e-10 of itself after 300 bars.
MACD_SETTLED = 300
# TA-Lib's STOCH seeds K with the mean of its first 5 fast-K values and has no partial windows,
# ours starts at 50: the gap shrinks by 2/3 a bar, to 1e-17 after 100 bars.
KDJ_SETTLED = 100
TALIB_TOLERANCE = 1e-6


def _talib_reference(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
) -> dict[str, tuple[np.ndarray, int]]:
    """Per indicator: TA-Lib's values on one code's traded bars, and the traded bars after
    which ours must match them."""
    ref: dict[str, tuple[np.ndarray, int]] = {"close_hfq": (close, 1)}
    for n in (5, 10, 20, 60, 120, 250):
        ref[f"ma{n}"] = (talib.SMA(close, n), n)
    dif, dea, hist = talib.MACD(close, 12, 26, 9)
    ref.update(macd_dif=(dif, MACD_SETTLED), macd_dea=(dea, MACD_SETTLED))
    ref["macd_hist"] = (2.0 * hist, MACD_SETTLED)  # TA-Lib's histogram is DIF - DEA, ours 2x
    # EMA of period 5 has alpha 1/3: KDJ's 9/3/3 smoothing.
    k, d = talib.STOCH(
        high, low, close, 9, slowk_period=5, slowk_matype=1, slowd_period=5, slowd_matype=1
    )
    ref.update(kdj_k=(k, KDJ_SETTLED), kdj_d=(d, KDJ_SETTLED), kdj_j=(3 * k - 2 * d, KDJ_SETTLED))
    for n in (6, 12, 24):
        ref[f"rsi{n}"] = (talib.RSI(close, n), n + 1)
    upper, mid, lower = talib.BBANDS(close, 20, 2.0, 2.0, matype=0)
    ref.update(boll_upper=(upper, 20), boll_mid=(mid, 20), boll_lower=(lower, 20))
    vol_ma5 = talib.SMA(volume, 5)
    ref.update(vol_ma5=(vol_ma5, 5), vol_ma10=(talib.SMA(volume, 10), 10))
    ref["vol_ratio"] = (volume / vol_ma5, 5)
    ref["atr14"] = (talib.ATR(high, low, close, 14), 15)
    ref["wr14"] = (-talib.WILLR(high, low, close, 14), 14)
    ref["cci14"] = (talib.CCI(high, low, close, 14), 14)
    ma20 = talib.SMA(close, 20)
    ref["bias20"] = ((close - ma20) / ma20 * 100.0, 20)
    ref["obv"] = (talib.OBV(close, volume), 1)
    high_20, low_20 = talib.MAX(high, 20), talib.MIN(low, 20)
    ref.update(high_20=(high_20, 20), high_60=(talib.MAX(high, 60), 60))
    # Donchian: the 20 bars BEFORE the day.
    ref["donchian_upper20"] = (np.r_[np.nan, high_20[:-1]], 21)
    ref["donchian_lower20"] = (np.r_[np.nan, low_20[:-1]], 21)
    return ref


def talib_errors(history: History) -> dict[str, float]:
    """Per indicator: the largest error against TA-Lib over every code's traded days after
    warm-up (relative, or relative to the series' scale for CROSSES_ZERO)."""
    worst = dict.fromkeys(INDICATORS, 0.0)
    compared = dict.fromkeys(INDICATORS, 0)
    for code in pd.unique(history.rows["code"]):
        bars, out = _traded(history, code)
        factor = bars["back_adjust_factor"].to_numpy()
        high, low, close = (bars[name].to_numpy() * factor for name in ("high", "low", "close"))
        volume = bars["volume"].to_numpy()
        for name, (reference, settled) in _talib_reference(high, low, close, volume).items():
            expected = reference[settled - 1 :]
            actual = out[name].to_numpy()[settled - 1 :]
            if not len(expected):
                continue
            assert not np.isnan(expected).any(), (code, name)
            floor = np.median(np.abs(expected)) if name in CROSSES_ZERO else 0.0
            scale = np.maximum(np.abs(expected), floor)
            with np.errstate(invalid="ignore", divide="ignore"):
                error = np.where(actual == expected, 0.0, np.abs(actual - expected) / scale)
            worst[name] = max(worst[name], float(np.max(np.nan_to_num(error, nan=np.inf))))
            compared[name] += len(expected)
    assert all(compared.values()), compared  # every indicator had days to compare
    assert compared["ma250"] > 10_000
    return worst


def test_indicators_match_talib_after_warm_up(history: History):
    errors = talib_errors(history)
    too_far = {name: error for name, error in errors.items() if not error <= TALIB_TOLERANCE}
    assert not too_far, too_far


def test_suspended_days_repeat_the_last_traded_day(history: History):
    rows, full = history.rows, history.full
    traded = rows["close"].notna()
    position = pd.Series(np.where(traded, np.arange(len(rows)), np.nan))
    source = position.groupby(rows["code"]).ffill()  # the code's last traded row
    repeat = ~traded & source.notna()
    before_first = ~traded & source.isna()
    assert repeat.sum() > 500 and before_first.sum() > 0
    values = full[VALUE_COLUMNS].to_numpy()
    np.testing.assert_array_equal(
        values[repeat.to_numpy()], values[source[repeat].to_numpy(np.int64)]
    )
    # Before a code's first traded bar there is nothing to repeat.
    assert np.isnan(full.loc[before_first, INDICATORS].to_numpy()).all()
    assert (full.loc[before_first, "traded_bars"] == 0).all()


def test_values_start_exactly_after_warm_up(history: History):
    checked = set()
    for code in history.ipo_codes:
        _, out = _traded(history, code)
        for name, bars_needed in WARM_UP.items():
            values = out[name].to_numpy()
            assert np.isnan(values[: bars_needed - 1]).all(), (code, name)
            assert not np.isnan(values[bars_needed - 1 :]).any(), (code, name)
            if len(values) >= bars_needed:
                checked.add(name)
        np.testing.assert_array_equal(out["traded_bars"], np.arange(1, len(out) + 1))
    assert checked == set(INDICATORS)


def _flat_bars(price: float, factor: float, days: int = 30) -> pd.DataFrame:
    """One code whose price never moves: high == low == close every day."""
    return pd.DataFrame(
        {
            "code": "sh.600000",
            "trade_date": pd.bdate_range("2024-01-02", periods=days),
            "high": price,
            "low": price,
            "close": price,
            "volume": 1000.0,
            "back_adjust_factor": factor,
        }
    )


# A price whose hfq value and its sums are not exact in binary, besides a round one.
@pytest.mark.parametrize(("price", "factor"), [(10.0, 1.0), (10.37, 1.515835)])
def test_flat_prices_give_the_neutral_values(price: float, factor: float):
    bars = _flat_bars(price, factor)
    out = compute_indicators(bars, bars.iloc[:0], FRESH)
    # RSV is 50 when the 9-bar high equals the low, so K and D stay at their seed 50.
    for name in ("kdj_k", "kdj_d", "kdj_j"):
        assert (out[name] == 50.0).all(), name
    # RSI is 50 when nothing moved; WR 50 when high == low; no true range.
    for name in ("rsi6", "rsi12", "rsi24", "wr14", "atr14"):
        expected = 0.0 if name == "atr14" else 50.0
        warm = out[name].iloc[WARM_UP[name] - 1 :]
        assert (warm == expected).all() and out[name].iloc[: WARM_UP[name] - 1].isna().all(), name
    assert (out["obv"] == 1000.0).all()  # no change: volume is neither added nor subtracted


def test_rsv_is_50_once_the_window_goes_flat():
    bars = _flat_bars(10.0, 1.0)
    bars.loc[:9, ["high", "low", "close"]] = np.linspace(8.0, 12.0, 10)[:, None] + [0.1, -0.1, 0]
    out = compute_indicators(bars, bars.iloc[:0], FRESH)
    k, d = out["kdj_k"].to_numpy(), out["kdj_d"].to_numpy()
    flat = np.arange(18, len(out))  # the 9 bars up to these are all at 10.0
    np.testing.assert_array_equal(k[flat], (2.0 * k[flat - 1] + 50.0) / 3.0)
    np.testing.assert_array_equal(d[flat], (2.0 * d[flat - 1] + k[flat]) / 3.0)
    assert (k[flat] != 50.0).all()  # still decaying towards 50 from the rally


def test_flat_prices_give_cci_zero():
    bars = _flat_bars(10.37, 1.515835)
    out = compute_indicators(bars, bars.iloc[:0], FRESH)
    assert (out["cci14"].iloc[WARM_UP["cci14"] - 1 :] == 0.0).all()


# ----- 2. range runs agree with a full recompute ----------------------------------------------


def _lookback_before(rows: pd.DataFrame, day: pd.Timestamp) -> pd.DataFrame:
    """Per code, its last LOOKBACK traded rows before `day` (what the asset reads)."""
    before = rows[(rows["trade_date"] < day) & rows["close"].notna()]
    return before.groupby("code").tail(LOOKBACK)[list(BAR_INPUTS)]


def _previous_before(outputs: pd.DataFrame, day: pd.Timestamp) -> pd.DataFrame:
    """Per code, its last output row before `day` (the stored state the asset reads)."""
    before = outputs[outputs["trade_date"] < day].sort_values(["code", "trade_date"])
    return before.groupby("code").tail(1)[["code", *VALUE_COLUMNS]]


def _continue(
    rows: pd.DataFrame, outputs: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """compute_indicators over rows [start, end], continuing from `outputs` before `start`."""
    window = rows[(rows["trade_date"] >= start) & (rows["trade_date"] <= end)]
    return compute_indicators(
        window[list(BAR_INPUTS)], _lookback_before(rows, start), _previous_before(outputs, start)
    )


def _assert_same(actual: pd.DataFrame, expected: pd.DataFrame, rtol: float = 1e-9) -> None:
    """Same rows; every value within rtol, NaN in exactly the same places."""
    actual = actual.sort_values(["code", "trade_date"], ignore_index=True)
    expected = expected.sort_values(["code", "trade_date"], ignore_index=True)
    assert list(actual.columns) == OUTPUT_COLUMNS
    pd.testing.assert_frame_equal(actual[["code", "trade_date"]], expected[["code", "trade_date"]])
    for name in VALUE_COLUMNS:
        np.testing.assert_allclose(
            actual[name].to_numpy(np.float64),
            expected[name].to_numpy(np.float64),
            rtol=rtol,
            atol=0,
            equal_nan=True,
            err_msg=name,
        )


def test_split_and_day_by_day_runs_equal_the_full_recompute(history: History):
    rows, full, split = history.rows, history.full, history.split
    days = np.sort(pd.unique(rows["trade_date"]))
    end = pd.Timestamp(days[-1])
    before_split = rows[rows["trade_date"] < split]
    first = compute_indicators(before_split[list(BAR_INPUTS)], rows.iloc[:0], FRESH)
    second = _continue(rows, first, split, end)
    _assert_same(pd.concat([first, second]), full)

    # What the split crosses: a suspension, an ex-date, a lookback cut at LOOKBACK bars, and
    # codes listed after it (no lookback, no previous row).
    at_split = rows[rows["trade_date"] == split]
    assert _factor_steps(rows)[at_split.index].any()
    assert at_split["close"].isna().any()
    assert (before_split["close"].notna().groupby(before_split["code"]).sum() > LOOKBACK).any()
    assert set(rows["code"]) - set(before_split["code"])

    # The last DAY_BY_DAY days one at a time, each continuing from the split run's rows.
    chained = pd.concat([first, second])
    chained = chained[chained["trade_date"] < days[-DAY_BY_DAY]]
    for day in days[-DAY_BY_DAY:]:
        chained = pd.concat([chained, _continue(rows, chained, day, day)], ignore_index=True)
    _assert_same(chained, full)


# ----- 3. later dividends change no past indicator --------------------------------------------


def test_a_later_dividend_changes_no_past_indicator(history: History):
    rows, factors, cut = history.rows, history.factors, history.split
    end = rows["trade_date"].max()
    # The first part as it was computed before the cut: only the ex-dates known then.
    known_then = factors[factors["divid_operate_date"] < cut]
    assert len(known_then) < len(factors)
    then = rows[rows["trade_date"] < cut].drop(columns="back_adjust_factor")
    then = then.assign(back_adjust_factor=factor_in_force(then, known_then))
    first = compute_indicators(then[list(BAR_INPUTS)], rows.iloc[:0], FRESH)

    # Later days arrive, with new ex-dates (the cut day is one); stored rows stay as they were.
    later = rows[rows["trade_date"] >= cut]
    assert _factor_steps(rows)[later.index].sum() >= 5
    stored = pd.concat([then, later], ignore_index=True)
    continuation = _continue(stored, first, cut, end)

    # hfq history never changes: the new factors leave every earlier day's factor as stored,
    # so a full recompute with everything known now gives the same past values.
    np.testing.assert_array_equal(
        then["back_adjust_factor"], rows.loc[then.index, "back_adjust_factor"]
    )
    _assert_same(first, history.full[history.full["trade_date"] < cut])
    _assert_same(continuation, history.full[history.full["trade_date"] >= cut])


def test_unadjusted_ma20_jumps_at_an_ex_date_where_hfq_does_not(history: History):
    rows, full = history.rows, history.full
    traded = rows[rows["close"].notna()]
    factor = traded["back_adjust_factor"]
    same_code = traded["code"].eq(traded["code"].shift())
    step = (factor / factor.shift()).where(same_code, 1.0)
    # The factor 20 traded bars before each bar: one factor over the window before the ex-date.
    settled = factor.groupby(traded["code"]).shift(20) == factor.shift()
    ex_day = (step[settled & (step > 1.0)]).idxmax()  # the largest step with a clean window
    code = traded.at[ex_day, "code"]
    mine = traded[traded["code"] == code]
    raw_ma20 = mine["close"].rolling(20).mean()
    # The raw mean in today's hfq units: equal to the hfq MA20 while the window has one factor.
    drift = raw_ma20 * mine["back_adjust_factor"] / full.loc[mine.index, "ma20"] - 1.0
    before = mine.index[mine.index.get_loc(ex_day) - 1]
    assert abs(drift[before]) < 1e-12
    # At the ex-date 19 of the 20 raw closes are still pre-ex: off by about the factor's step.
    assert drift[ex_day] > 0.5 * (step[ex_day] - 1.0) > 0.1


# ----- 4. bad input ---------------------------------------------------------------------------


def test_empty_rows_give_an_empty_frame_with_every_column(history: History):
    out = compute_indicators(history.rows.iloc[:0][list(BAR_INPUTS)], history.rows.iloc[:0], FRESH)
    assert out.empty and list(out.columns) == OUTPUT_COLUMNS


def test_lookback_longer_than_lookback_bars_is_refused(history: History):
    rows = history.rows
    code = rows.loc[rows["code"].isin(history.ipo_codes), "code"].iloc[0]
    bars = rows[(rows["code"] == code) & rows["close"].notna()][list(BAR_INPUTS)]
    day = bars["trade_date"].iloc[LOOKBACK + 1]
    next_day = bars[bars["trade_date"] == day]
    earlier = bars[bars["trade_date"] < day]
    assert len(earlier) == LOOKBACK + 1
    with pytest.raises(ValueError, match=str(LOOKBACK)):
        compute_indicators(next_day, earlier, FRESH)
    assert len(compute_indicators(next_day, earlier.tail(LOOKBACK), FRESH)) == 1


def test_a_range_without_traded_bars_repeats_the_previous_rows(history: History):
    rows, full = history.rows, history.full
    # A day-by-day run of one code (the last of a batch, say) on a day it is suspended.
    suspended = rows.index[rows["close"].isna() & (full["traded_bars"] > 0)]
    code, day = rows.loc[suspended[-1], ["code", "trade_date"]]
    mine = rows[rows["code"] == code]
    out = _continue(mine, full[full["code"] == code], day, day)
    _assert_same(out, full[(full["code"] == code) & (full["trade_date"] == day)])
