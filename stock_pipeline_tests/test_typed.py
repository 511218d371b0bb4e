"""Typed-row conversion: catalog types, NULLs, strict failures naming api/code/field/value."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from stock_pipeline.baostock.apis import APIS, K_DAILY_FIELDS, K_INDEX_FIELDS
from stock_pipeline.baostock.typed import (
    MalformedValueError,
    empty_frame,
    to_frame,
    to_frame_by_key,
    to_frame_or_reason,
)

KLINE = "query_history_k_data_plus"
FIELDS = [f.name for f in K_DAILY_FIELDS]
TRADED = [
    "2024-01-05", "sh.600000", "10.1000", "10.5000", "9.9000", "10.2000", "10.0000",
    "123456789012", "1234567.8900", "3", "0.512300", "1", "2.000000", "8.123400",
    "0.700000", "1.100000", "5.500000", "0",
]  # fmt: skip
# A suspended day: BaoStock sends empty strings for prices and volume, tradestatus 0.
SUSPENDED = [
    "2024-01-08", "sz.000001", "", "", "", "", "10.0000", "", "", "3", "", "0", "",
    "8.1", "0.7", "1.1", "5.5", "1",
]  # fmt: skip


def test_daily_kline_dtypes_and_values() -> None:
    frame = to_frame(KLINE, FIELDS, [TRADED, SUSPENDED])
    assert list(frame.columns) == [f.column for f in K_DAILY_FIELDS]
    dtypes = {c: str(t) for c, t in frame.dtypes.items()}
    assert dtypes["trade_date"] == "datetime64[ns]"
    assert dtypes["open"] == dtypes["pe_ttm"] == "float64"
    assert dtypes["volume"] == dtypes["adjust_flag"] == "Int64"
    assert dtypes["trade_status"] == dtypes["is_st"] == "boolean"
    assert dtypes["code"] == "str"
    first = frame.iloc[0]
    assert first["trade_date"] == pd.Timestamp("2024-01-05")
    assert first["open"] == 10.1 and first["amount"] == 1234567.89
    assert first["volume"] == 123456789012  # beyond int32, exact
    assert bool(first["trade_status"]) is True and bool(first["is_st"]) is False


def test_empty_strings_become_null_of_each_type() -> None:
    frame = to_frame(KLINE, FIELDS, [SUSPENDED])
    row = frame.iloc[0]
    assert np.isnan(row["open"]) and np.isnan(row["turnover"])
    assert row["volume"] is pd.NA
    assert row["pre_close"] == 10.0  # present values stay
    assert bool(row["trade_status"]) is False and bool(row["is_st"]) is True

    basic = to_frame(
        "query_stock_basic",
        ["code", "code_name", "ipoDate", "outDate", "type", "status"],
        [["sh.600000", "浦发银行", "1999-11-10", "", "1", "1"], ["sh.600001", "", "", "", "", ""]],
    )
    assert pd.isna(basic.loc[0, "out_date"]) and basic.loc[0, "ipo_date"] == pd.Timestamp(
        "1999-11-10"
    )
    assert pd.isna(basic.loc[1, "code_name"]) and basic.loc[1, "security_type"] is pd.NA
    assert basic.loc[1, "status"] is pd.NA


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("open", "abc"),
        ("open", "nan"),  # text NaN is not an empty string: reject rather than guess
        ("amount", "inf"),
        ("volume", "1.5"),
        ("volume", "1e3"),
        ("date", "2024-02-30"),
        ("date", "20240105"),
        ("tradestatus", "yes"),
        ("isST", "2"),
    ],
)
def test_malformed_value_raises_naming_api_code_field_value(field: str, value: str) -> None:
    bad = list(TRADED)
    bad[FIELDS.index(field)] = value
    with pytest.raises(MalformedValueError) as caught:
        to_frame(KLINE, FIELDS, [TRADED, bad], keys=["sh.600000", "sh.600004"])
    message = str(caught.value)
    assert KLINE in message and "sh.600004" in message
    assert f"{field}={value!r}" in message
    [problem] = caught.value.problems
    assert (problem.key, problem.field, problem.value, problem.row) == (
        "sh.600004",
        field,
        value,
        1,
    )


def test_by_key_rejects_only_the_rows_of_the_bad_code() -> None:
    good_a = list(TRADED)
    good_b = list(TRADED)
    good_b[0] = "2024-01-06"
    bad = list(TRADED)
    bad[FIELDS.index("close")] = "12,5"
    rows = [good_a, bad, good_b, SUSPENDED]
    keys = ["sh.600000", "sh.600004", "sh.600000", "sz.000001"]
    frame, reasons = to_frame_by_key(KLINE, FIELDS, rows, keys)
    assert list(reasons) == ["sh.600004"]
    assert "close='12,5'" in reasons["sh.600004"] and KLINE in reasons["sh.600004"]
    assert frame["trade_date"].dt.strftime("%Y-%m-%d").tolist() == [
        "2024-01-05",
        "2024-01-06",
        "2024-01-08",
    ]


def test_one_request_converts_or_says_why() -> None:
    """The worker's conversion: a frame, or no rows at all and the reason (never NULLs)."""
    frame, reason = to_frame_or_reason(KLINE, FIELDS, [TRADED, SUSPENDED])
    assert reason is None and frame is not None
    pd.testing.assert_frame_equal(frame, to_frame(KLINE, FIELDS, [TRADED, SUSPENDED]))
    bad = list(TRADED)
    bad[FIELDS.index("close")] = "abc"
    cases = {
        "malformed value": ([TRADED, bad], FIELDS, "close='abc'"),
        "ragged row": ([TRADED, TRADED[:-1]], FIELDS, "do not have 18 values"),
        "unknown field": ([["2024-01-05", "1.0"]], ["date", "vwap"], "does not describe"),
    }
    for name, (rows, fields, expected) in cases.items():
        frame, reason = to_frame_or_reason(KLINE, fields, rows)
        assert frame is None and reason is not None, name
        assert expected in reason and KLINE in reason, (name, reason)


def test_row_width_and_unknown_fields_are_errors() -> None:
    with pytest.raises(MalformedValueError, match=r"rows \[1\] do not have 18 values"):
        to_frame(KLINE, FIELDS, [TRADED, TRADED[:-1]])
    with pytest.raises(MalformedValueError, match="does not describe"):
        to_frame(KLINE, ["date", "vwap"], [["2024-01-05", "1.0"]])


def test_empty_frames_keep_dtypes() -> None:
    frame = empty_frame(KLINE, [f.name for f in K_INDEX_FIELDS])
    assert len(frame) == 0
    assert list(frame.columns) == [f.column for f in K_INDEX_FIELDS]
    assert str(frame["trade_date"].dtype) == "datetime64[ns]"
    assert str(frame["volume"].dtype) == "Int64"
    for api in APIS.values():  # every catalog type converts
        assert list(empty_frame(api).columns) == list(api.columns)


def test_conversion_is_vectorised_fast() -> None:
    rows = [list(TRADED) for _ in range(100_000)]
    started = time.perf_counter()
    frame = to_frame(KLINE, FIELDS, rows)
    elapsed = time.perf_counter() - started
    assert len(frame) == 100_000 and frame["close"].sum() == pytest.approx(1_020_000.0)
    # ~0.4 s on a quiet 2-core machine; the bound leaves room for a loaded one.
    assert elapsed < 3.0, f"100k rows took {elapsed:.2f}s"
