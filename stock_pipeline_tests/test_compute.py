"""Pure transforms of compute/: no database, no network."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from stock_pipeline.compute.checks import adjust_factor_violations
from stock_pipeline.compute.daily import (
    ex_right_codes,
    factor_corrections,
    factor_in_force,
    stock_daily_rows,
)
from stock_pipeline.compute.reference import stock_universe, stocks_rows, trade_calendar_rows

T = pd.Timestamp


def _factors(*rows: tuple[str, str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "code": [r[0] for r in rows],
            "divid_operate_date": pd.to_datetime([r[1] for r in rows]),
            "back_adjust_factor": [r[2] for r in rows],
        }
    )


def test_factor_in_force_is_the_latest_ex_date_on_or_before_the_day():
    bars = pd.DataFrame(
        {
            "code": ["a", "a", "a", "a", "b", "c"],
            "trade_date": pd.to_datetime(
                ["2020-01-02", "2020-06-01", "2020-06-02", "2021-01-04", "2020-06-02", "2020-06-02"]
            ),
        }
    )
    factors = _factors(
        ("a", "2021-01-04", 1.5),
        ("a", "2020-06-01", 1.2),
        ("b", "2020-06-03", 2.0),  # after the bar: not yet in force
        ("z", "2000-01-01", 9.9),  # another code entirely
    )
    got = factor_in_force(bars, factors)
    np.testing.assert_array_equal(got, [1.0, 1.2, 1.2, 1.5, 1.0, 1.0])
    assert len(factor_in_force(bars.iloc[:0], factors)) == 0
    np.testing.assert_array_equal(factor_in_force(bars, factors.iloc[:0]), np.ones(6))


def test_stock_daily_rows_carry_bars_and_factor():
    raw = pd.DataFrame(
        {
            "code": ["a", "a"],
            "trade_date": pd.to_datetime(["2020-06-01", "2020-06-02"]),
            **{c: [10.0, np.nan] for c in ("open", "high", "low", "close", "pre_close")},
            "pct_chg": [1.0, np.nan],
            "volume": pd.array([100, pd.NA], dtype="Int64"),
            "amount": [1000.0, np.nan],
            "turnover": [0.1, np.nan],
            "trade_status": pd.array([True, False], dtype="boolean"),
            "is_st": pd.array([False, False], dtype="boolean"),
            **{c: [1.0, 1.0] for c in ("pe_ttm", "pb_mrq", "ps_ttm", "pcf_ncf_ttm")},
            "adjust_flag": pd.array([3, 3], dtype="Int64"),
        }
    )
    rows = stock_daily_rows(raw, _factors(("a", "2020-06-02", 1.1)))
    assert "adjust_flag" not in rows
    assert rows["back_adjust_factor"].tolist() == [1.0, 1.1]
    assert rows["volume"].isna().tolist() == [False, True]
    with pytest.raises(ValueError, match="adjusted"):
        stock_daily_rows(raw.assign(adjust_flag=pd.array([1, 1], dtype="Int64")), _factors())


def _bars(code: str, closes: list[float | None], pre: list[float | None]) -> pd.DataFrame:
    n = len(closes)
    return pd.DataFrame(
        {
            "code": [code] * n,
            "trade_date": pd.bdate_range("2024-01-01", periods=n),
            "close": pd.array(closes, dtype="float64"),
            "pre_close": pd.array(pre, dtype="float64"),
        }
    )


def test_ex_right_codes_compare_pre_close_with_the_last_traded_close():
    plain = _bars("plain", [10.0, 10.5, 10.4], [9.9, 10.0, 10.5])
    dividend = _bars("div", [10.0, 9.6, 9.7], [10.1, 9.5, 9.6])  # ex-right on day 2: 9.5 != 10.0
    suspended = _bars("susp", [10.0, None, 10.2], [10.1, None, 10.0])  # resumes at the old close
    resumed_ex = _bars("susp_ex", [10.0, None, 9.2], [10.1, None, 9.0])  # ex-right in suspension
    first = _bars("new", [10.0], [8.0])  # no close known before: cannot be verified
    bars = pd.concat([plain, dividend, suspended, resumed_ex, first], ignore_index=True)
    before = {"plain": 9.9, "div": 10.1, "susp": 10.1, "susp_ex": 10.1}
    assert ex_right_codes(bars, before) == {"div", "susp_ex", "new"}
    assert ex_right_codes(bars, {**before, "plain": 9.0}) == {"plain", "div", "susp_ex", "new"}
    assert ex_right_codes(bars.iloc[:0], before) == set()


def test_adjust_factor_violations():
    good = _bars("good", [10.0, 9.5, 9.6], [10.0, 9.0, 9.5]).assign(
        back_adjust_factor=[1.0, 1.1, 1.1]  # changes on the ex-right day 2 (pre 9.0 != 10.0)
    )
    suspended = _bars("susp", [10.0, None, 9.2], [10.0, None, 9.0]).assign(
        back_adjust_factor=[1.0, 1.08, 1.08]  # ex-date inside the suspension
    )
    unexplained = _bars("bad1", [10.0, 10.1, 10.2], [10.0, 10.0, 10.1]).assign(
        back_adjust_factor=[1.0, 1.2, 1.2]
    )
    decreasing = _bars("bad2", [10.0, 9.0, 9.1], [10.0, 8.0, 9.0]).assign(
        back_adjust_factor=[1.2, 1.1, 1.1]
    )
    missed = _bars("bad3", [10.0, 9.5, 9.6], [10.0, 9.0, 9.5]).assign(
        back_adjust_factor=[1.0, 1.0, 1.0]  # an ex-right on day 2, the factor never moved
    )
    missed_in_suspension = _bars("bad4", [10.0, None, 9.2], [10.0, None, 9.0]).assign(
        back_adjust_factor=[1.0, 1.0, 1.0]
    )
    # Suspended since the first stored day: its first traded bar has no close to compare with.
    suspended_from_start = _bars("unknown", [None, None, 9.2], [None, None, 9.0]).assign(
        back_adjust_factor=[1.0, 1.0, 1.3]
    )
    # An ex-date inside a suspension that outlasts the window: pending until it resumes.
    still_suspended = _bars("pending", [10.0, None, None], [10.0, None, None]).assign(
        back_adjust_factor=[1.0, 1.2, 1.2]
    )
    found = adjust_factor_violations(
        pd.concat(
            [good, suspended, unexplained, decreasing, missed, missed_in_suspension]
            + [suspended_from_start, still_suspended]
        )
    )
    assert sorted(zip(found["code"], found["rule"], strict=True)) == [
        ("bad1", "changed without an ex-right"),
        ("bad2", "decreased"),
        ("bad3", "ex-right without a factor change"),
        ("bad4", "ex-right without a factor change"),
    ]
    assert adjust_factor_violations(good.iloc[:0]).empty


def test_trade_calendar_rows_have_the_previous_open_day():
    days = pd.DataFrame(
        {
            "calendar_date": pd.to_datetime(
                ["2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04"]
            ),
            "is_trading_day": pd.array([False, True, True, False], dtype="boolean"),
        }
    )
    rows = trade_calendar_rows(days)
    assert rows["is_open"].tolist() == [False, True, True, False]
    previous = rows["prev_trade_date"].tolist()
    assert pd.isna(previous[0]) and pd.isna(previous[1])  # no open day before them
    assert previous[2:] == [T("2025-01-02"), T("2025-01-03")]
    assert (rows["exchange"] == "SSE").all()


def test_stock_universe_keeps_stocks_and_unknown_codes():
    basic = pd.DataFrame(
        {
            "code": ["sh.600000", "sh.000001", "sz.159915", "sz.000001"],
            "security_type": pd.array([1, 2, 5, 1], dtype="Int64"),
        }
    )
    listed = pd.Series(["sz.000001", "sh.000001", "sh.600000", "sh.688999", "sz.159915"])
    assert stock_universe(listed, basic) == ["sh.600000", "sh.688999", "sz.000001"]


def test_stocks_rows_map_stock_basic():
    basic = pd.DataFrame(
        {
            "code": ["sh.600000"],
            "code_name": ["浦发银行"],
            "ipo_date": pd.to_datetime(["1999-11-10"]),
            "out_date": pd.to_datetime([None]),
            "security_type": pd.array([1], dtype="Int64"),
            "status": pd.array([True], dtype="boolean"),
        }
    )
    rows = stocks_rows(basic)
    assert rows.iloc[0]["name"] == "浦发银行" and bool(rows.iloc[0]["is_listed"])
    assert pd.isna(rows.iloc[0]["delist_date"])


def test_factor_corrections_find_changed_added_and_withdrawn_past_factors():
    stored = _factors(
        ("a", "2020-06-01", 1.2), ("a", "2021-06-01", 1.5),
        ("b", "2020-06-01", 1.1),
        ("c", "2020-06-01", 1.3), ("c", "2022-06-01", 1.6),
    )  # fmt: skip
    served = _factors(
        ("a", "2020-06-01", 1.2), ("a", "2021-06-01", 1.5), ("a", "2024-06-03", 1.9),  # new
        ("b", "2019-05-06", 1.05), ("b", "2020-06-01", 1.1),  # one more, in the past
        ("c", "2020-06-01", 1.3), ("c", "2022-06-01", 1.61),  # changed
    )  # fmt: skip
    known = {"a": date(2024, 5, 31), "b": date(2024, 5, 31), "c": date(2024, 5, 31)}
    assert factor_corrections(stored, served, known) == {
        "b": date(2019, 5, 6),
        "c": date(2022, 6, 1),
    }
    withdrawn = served[~((served["code"] == "a") & (served["back_adjust_factor"] == 1.5))]
    assert factor_corrections(stored, withdrawn, known)["a"] == date(2021, 6, 1)
    assert factor_corrections(stored, stored, known) == {}
