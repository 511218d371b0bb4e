"""The trading calendar offline: bundled XSHG, the stored BaoStock extension, partitions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from stock_pipeline import calendar as tc
from stock_pipeline.assets.partitions import build_trading_day_partitions

D = dt.date


def test_bundled_calendar_equals_exchange_calendars():
    """The fast source read (no package import) gives exchange_calendars' own XSHG sessions."""
    import exchange_calendars

    library = exchange_calendars.get_calendar("XSHG", start=tc.SSE_FIRST_SESSION.isoformat())
    expected = np.array([d.date() for d in library.sessions], dtype="datetime64[D]")
    bundled = tc.bundled_calendar()
    assert np.array_equal(bundled.sessions, expected)
    assert bundled.last_day == library.last_session.date() == D(2026, 12, 31)
    # The fallback (importing the library) finds the same holidays as the source read.
    source = tc._xshg_holidays_from_source(tc._xshg_source())
    weekday_holidays = {d for d in source if d.weekday() < 5 and d >= tc.SSE_FIRST_SESSION}
    assert set(tc._xshg_holidays_from_library()) == weekday_holidays
    assert {D(2025, 1, 1), D(2024, 2, 9), D(2026, 10, 7)} <= weekday_holidays


def test_sessions_per_year_match_the_exchange():
    cal = tc.load_calendar(None)
    counts = {y: len(cal.sessions_between(D(y, 1, 1), D(y, 12, 31))) for y in range(2019, 2027)}
    assert counts == {
        2019: 244, 2020: 243, 2021: 243, 2022: 242, 2023: 242, 2024: 242, 2025: 243, 2026: 242
    }  # fmt: skip


def test_nearest_trading_days_are_named():
    cal = tc.load_calendar(None)
    with pytest.raises(tc.NotATradingDayError, match="2024-12-31 and 2025-01-02"):
        cal.require_session(D(2025, 1, 1), "end")
    with pytest.raises(tc.NotATradingDayError, match="weekend.*2025-09-30 and 2025-10-09"):
        cal.require_session(D(2025, 10, 4))
    with pytest.raises(tc.NotATradingDayError, match="past the known trading calendar"):
        cal.require_range(D(2026, 12, 1), D(2027, 1, 4))
    assert cal.require_range(D(2025, 1, 2), D(2025, 1, 6)) == [
        D(2025, 1, 2),
        D(2025, 1, 3),
        D(2025, 1, 6),
    ]


def _store_2027(home: Path) -> list[dt.date]:
    days = [D(2026, 12, 1) + dt.timedelta(days=i) for i in range(396)]  # to 2027-12-31
    # 2026-12-25 is a session of the exchange: a wrong BaoStock flag the bundled one overrides.
    holidays = {D(2026, 12, 25), D(2027, 1, 1), D(2027, 2, 8), D(2027, 2, 9), D(2027, 10, 1)}
    flags = [d.weekday() < 5 and d not in holidays for d in days]
    tc.store_baostock_calendar(home, days, flags)
    return [d for d, f in zip(days, flags, strict=True) if f]


def test_stored_calendar_extends_the_bundled_one(tmp_path: Path):
    assert tc.load_calendar(tmp_path).last_day == D(2026, 12, 31)
    sessions = _store_2027(tmp_path)
    cal = tc.load_calendar(tmp_path)
    assert cal.extended and cal.last_day == max(sessions) == D(2027, 12, 31)
    assert cal.is_session(D(2027, 1, 4)) and not cal.is_session(D(2027, 2, 8))
    # Where both know a day, the bundled calendar decides.
    assert cal.is_session(D(2026, 12, 25))
    assert cal.sessions_between(D(2027, 1, 1), D(2027, 12, 31)) == [
        d for d in sessions if d.year == 2027
    ]


def test_unreadable_stored_calendar_falls_back_to_bundled(tmp_path: Path):
    path = tc.stored_calendar_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert tc.load_calendar(tmp_path).last_day == D(2026, 12, 31)
    path.write_text(json.dumps({"first_day": "2026-01-01"}))
    assert tc.load_calendar(tmp_path).last_day == D(2026, 12, 31)


def test_stored_calendar_with_gaps_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="gaps"):
        tc.store_baostock_calendar(tmp_path, [D(2027, 1, 4), D(2027, 1, 6)], [True, True])


def test_disagreements_are_reported():
    bundled = tc.bundled_calendar()
    days = [D(2024, 2, 8), D(2024, 2, 9), D(2024, 2, 10), D(2027, 1, 4)]
    found = tc.disagreements(bundled, days, [True, True, False, True])
    assert [(d.day, d.bundled, d.baostock) for d in found] == [(D(2024, 2, 9), False, True)]
    assert "exchange_calendars closed, BaoStock open" in str(found[0])


def test_partition_keys_are_the_sessions():
    cal = tc.load_calendar(None)
    partitions = build_trading_day_partitions(cal, D(2015, 1, 1))
    keys = partitions.get_partition_keys(current_time=dt.datetime(2026, 12, 1, 12))
    # Today's partition exists from 00:00 Shanghai (end_offset=1: the schedule requests it at
    # 17:30); 12:00 UTC is 20:00 there.
    expected = [d.isoformat() for d in cal.sessions_between(D(2015, 1, 1), D(2026, 12, 1))]
    assert keys == expected
    assert keys[0] == "2015-01-05"  # 2015-01-01..04 were closed
    assert "2025-01-01" not in keys and "2025-10-08" not in keys  # holidays
    assert len([k for k in keys if k.startswith("2024")]) == 242
    # Friday's window ends on Saturday (not Monday, the weekday-cron trap).
    window = partitions.time_window_for_partition_key("2025-01-03")
    assert (window.end - window.start) == dt.timedelta(days=1)


def test_no_partition_past_the_known_calendar(tmp_path: Path):
    late = dt.datetime(2027, 6, 1, 12)
    bundled_only = build_trading_day_partitions(tc.load_calendar(tmp_path), D(2026, 12, 1))
    assert bundled_only.get_partition_keys(current_time=late)[-1] == "2026-12-31"
    sessions = _store_2027(tmp_path)
    extended = build_trading_day_partitions(tc.load_calendar(tmp_path), D(2026, 12, 1))
    keys = extended.get_partition_keys(current_time=late)
    assert keys[-1] == "2027-06-01"  # "now" is a session: its partition exists (end_offset)
    assert [k for k in keys if k >= "2027"] == [
        d.isoformat() for d in sessions if D(2027, 1, 1) <= d <= D(2027, 6, 1)
    ]
    assert "2027-02-08" not in keys
