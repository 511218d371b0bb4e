"""The BaoStock simulator driven by the unmodified baostock client over TCP (no mocks).

The baostock module keeps one socket per process in module globals, so these tests use it
serially through the `bs` fixture, which logs in against a module-wide simulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import baostock
import baostock.common.contants as bs_constants
import numpy as np
import pytest

from stock_pipeline.baostock import apis
from stock_pipeline.baostock.endpoint import point_client_at
from stock_pipeline.baostock.simulator import (
    CODE_INVALID,
    FIELD_INVALID,
    NO_LOGIN,
    PARAM_ERROR,
    SimulatorConfig,
    SimulatorServer,
)
from stock_pipeline.baostock.simulator import protocol as proto
from stock_pipeline.calendar import bundled_calendar
from stock_pipeline_tests.helpers import exchange

DAILY = ",".join(f.name for f in apis.K_DAILY_FIELDS)
PERIOD = ",".join(f.name for f in apis.K_PERIOD_FIELDS)
INDEX = ",".join(f.name for f in apis.K_INDEX_FIELDS)
CONFIG = SimulatorConfig(seed=11, n_codes=1000)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(CONFIG, port=0) as server:
        yield server


@pytest.fixture
def bs(sim: SimulatorServer) -> Iterator[object]:
    """The baostock module, logged in to the simulator."""
    point_client_at(sim.host, sim.port)
    login = baostock.login()
    assert login.error_code == "0", login.error_msg
    yield baostock
    baostock.logout()


def drain(rs: object) -> list[list[str]]:
    """All rows of a result, across pages (get_data() is broken with pandas >= 2)."""
    assert rs.error_code == "0", (rs.error_code, rs.error_msg)
    rows = []
    while rs.next():
        rows.append(rs.get_row_data())
    return rows


# ----- protocol and sessions ---------------------------------------------------------------------


def test_framing_round_trip() -> None:
    body = ["0", "success", "query_history_k_data_plus", "u", "1", "2000", '{"record":[]}', "x"]
    for msg_type in ("96", "34"):
        frame = proto.encode_response(msg_type, body)
        assert frame.endswith(proto.TERMINATOR)
        assert frame[:21].decode().split("\x01")[0] == "00.9.40"
        assert proto.decode_response(frame) == (msg_type, body)
    request = proto.encode_request("33", ["query_trade_dates", "u", "1", "2000", "", ""])
    assert proto.decode_request(request).method == "query_trade_dates"
    with pytest.raises(proto.ProtocolError):
        proto.decode_request(request.replace(b"2000", b"2001"))


def test_login_logout_and_bad_password(sim: SimulatorServer) -> None:
    point_client_at(sim.host, sim.port)
    assert baostock.login().error_code == "0"
    assert baostock.logout().error_code == "0"
    bad = baostock.login("baduser", "whatever")
    assert bad.error_code == "10001002"
    baostock.logout()


def test_not_logged_in_is_refused(sim: SimulatorServer) -> None:
    ((msg_type, body),) = exchange(
        (sim.host, sim.port),
        [("33", ["query_trade_dates", "anonymous", "1", "2000", "2024-01-01", "2024-01-31"])],
    )
    assert msg_type == "34"
    assert body[0] == NO_LOGIN


# ----- calendar and metadata ---------------------------------------------------------------------


def test_trade_dates_are_the_real_sse_sessions(bs) -> None:
    rows = drain(bs.query_trade_dates("2015-01-01", "2026-12-31"))
    assert len(rows) == (date(2026, 12, 31) - date(2015, 1, 1)).days + 1  # three pages
    open_days = np.array([d for d, flag in rows if flag == "1"], dtype="datetime64[D]")
    sessions = bundled_calendar().sessions
    expected = sessions[(sessions >= np.datetime64("2015-01-01")) & (sessions <= open_days[-1])]
    assert open_days[-1] == np.datetime64("2026-12-31")
    np.testing.assert_array_equal(open_days, expected)
    # Lunar holidays an estimate gets wrong: Dragon Boat 2023 closed, 2024-06-11 open.
    flags = dict(rows)
    assert flags["2023-06-22"] == flags["2023-06-23"] == "0" and flags["2024-06-11"] == "1"


def test_trade_dates_after_the_bundled_calendar_are_generated(bs) -> None:
    rows = drain(bs.query_trade_dates("2027-01-01", "2027-12-31"))
    assert len(rows) == 365
    open_days = [date.fromisoformat(d) for d, flag in rows if flag == "1"]
    assert all(d.weekday() < 5 for d in open_days)
    assert 235 <= len(open_days) <= 250
    assert date(2027, 1, 1) not in open_days
    spring = date(2027, 2, 6)  # Lunar New Year
    assert not any(spring - timedelta(days=1) <= d <= spring + timedelta(days=5) for d in open_days)
    assert not any(date(2027, 10, 1) <= d <= date(2027, 10, 7) for d in open_days)
    gaps = [(b - a).days for a, b in zip(open_days, open_days[1:], strict=False)]
    assert max(gaps) >= 8


def test_all_stock_and_stock_basic(bs, sim: SimulatorServer) -> None:
    day = date(2024, 3, 1)
    rows = drain(bs.query_all_stock(day.isoformat()))
    codes = [r[0] for r in rows]
    assert codes == sorted(codes)
    assert set(sim.market.codes(day)) <= set(codes)
    assert set(apis.INDEX_CODES) <= set(codes)
    assert {r[1] for r in rows} <= {"0", "1"}
    assert drain(bs.query_all_stock("2024-02-10")) == []  # Spring Festival: closed
    basic = drain(bs.query_stock_basic("sh.600000"))
    assert basic[0][0] == "sh.600000" and basic[0][4] == "1" and basic[0][5] == "1"
    everything = drain(bs.query_stock_basic())
    assert len(everything) == CONFIG.n_codes + len(apis.INDEX_CODES)
    delisted = [r for r in everything if r[5] == "0"]
    assert delisted and all(r[3] for r in delisted)


# ----- k lines -----------------------------------------------------------------------------------


def test_daily_bars_match_market_and_span_pages(bs, sim: SimulatorServer) -> None:
    old = bs_constants.BAOSTOCK_PER_PAGE_COUNT
    bs_constants.BAOSTOCK_PER_PAGE_COUNT = 300
    try:
        rows = drain(bs.query_history_k_data_plus("sh.600000", DAILY, "2015-01-01", "2019-12-31"))
    finally:
        bs_constants.BAOSTOCK_PER_PAGE_COUNT = old
    expected = sim.market.daily_bars("sh.600000", date(2015, 1, 1), date(2019, 12, 31))
    assert len(rows) > 1000  # four pages of 300
    assert rows == [list(r.values()) for r in expected]
    days = sim.market.trading_days(date(2015, 1, 1), date(2019, 12, 31))
    assert [r[0] for r in rows] == [d.isoformat() for d in days]


def test_default_page_size_is_2000(bs) -> None:
    rs = bs.query_history_k_data_plus("sh.600000", "date,close", "2010-01-01", "2026-12-31")
    assert rs.per_page_count == "2000" and len(rs.data) == 2000
    assert len(drain(rs)) > 4000


def test_requested_fields_only(bs) -> None:
    rs = bs.query_history_k_data_plus("sz.000001", "close, date", "2024-01-02", "2024-01-05")
    rows = drain(rs)
    assert rs.fields == ["close", "date"]
    assert all(len(r) == 2 and r[1].startswith("2024-01") for r in rows)


def test_adjusted_series_match_adjust_factors(bs, sim: SimulatorServer) -> None:
    code = next(
        c
        for c in sim.market.all_codes()
        if len(sim.market.adjust_factors(c, date(2010, 1, 1), date(2026, 12, 31))) >= 3
    )
    factors = drain(bs.query_adjust_factor(code, "1990-01-01", "2026-12-31"))
    assert len(factors) >= 3
    raw = drain(
        bs.query_history_k_data_plus(code, "date,close,tradestatus", "2010-01-01", "2026-12-31")
    )
    hfq = drain(
        bs.query_history_k_data_plus(code, "date,close", "2010-01-01", "2026-12-31", "d", "1")
    )
    qfq = drain(
        bs.query_history_k_data_plus(code, "date,close", "2010-01-01", "2026-12-31", "d", "2")
    )
    last_back = float(factors[-1][3])
    checked = 0
    for (day, close, status), (_, h), (_, q) in zip(raw, hfq, qfq, strict=True):
        if status == "0":
            assert close == h == q == ""
            continue
        in_force = [f for f in factors if f[1] <= day]
        back = float(in_force[-1][3]) if in_force else 1.0
        fore = float(in_force[-1][2]) if in_force else round(1 / last_back, 6)
        assert abs(float(h) - round(float(close) * back, 4)) <= 1e-4
        assert abs(float(q) - round(float(close) * fore, 4)) <= 1e-4
        checked += 1
    assert checked > 1000


def test_ex_right_preclose_and_limits(sim: SimulatorServer) -> None:
    market = sim.market
    seen = {"suspended": 0, "limit_up": 0, "st": 0, "ex": 0}
    for code in market.all_codes()[:150]:
        bars = market.daily_bars(code, date(2010, 1, 1), date(2026, 12, 31))
        ex_days = {a.ex_date.isoformat(): a for a in market.corporate_actions(code)}
        prev_close = None
        for bar in bars:
            if bar["tradestatus"] == "0":
                seen["suspended"] += 1
                for name in ("open", "high", "low", "close", "volume", "amount", "pctChg"):
                    assert bar[name] == ""
                continue
            pre = round(float(bar["preclose"]) * 100)
            close = round(float(bar["close"]) * 100)
            high, low = round(float(bar["high"]) * 100), round(float(bar["low"]) * 100)
            assert low <= min(close, round(float(bar["open"]) * 100)) <= high
            if prev_close is not None and bar["date"] not in ex_days:
                assert pre == prev_close
            if bar["date"] in ex_days:
                seen["ex"] += 1
                assert pre < prev_close
            pct = 5 if bar["isST"] == "1" else (20 if code[3:5] in ("68", "30") else 10)
            if code.startswith("sz.30") and bar["date"] < "2020-08-24" and bar["isST"] == "0":
                pct = 10
            is_ipo_day = prev_close is None and market.listings[code].ipo >= market.start
            if not is_ipo_day:
                assert close <= (pre * (100 + pct) + 50) // 100
                assert close >= (pre * (100 - pct) + 50) // 100
                seen["limit_up"] += close == (pre * (100 + pct) + 50) // 100
            seen["st"] += bar["isST"] == "1"
            prev_close = close
    assert all(v > 0 for v in seen.values()), seen


def test_weekly_and_monthly_bars(bs, sim: SimulatorServer) -> None:
    weekly = drain(
        bs.query_history_k_data_plus("sh.600000", PERIOD, "2024-01-01", "2024-03-31", "w")
    )
    monthly = drain(
        bs.query_history_k_data_plus("sh.600000", PERIOD, "2024-01-01", "2024-03-31", "m")
    )
    daily = sim.market.daily_bars("sh.600000", date(2024, 1, 1), date(2024, 3, 31))
    traded = [d for d in daily if d["tradestatus"] == "1"]
    assert len(monthly) == 3 and 11 <= len(weekly) <= 14
    jan = [d for d in traded if d["date"] < "2024-02-01"]
    row = dict(zip(PERIOD.split(","), monthly[0], strict=True))
    assert row["date"] == jan[-1]["date"] and row["open"] == jan[0]["open"]
    assert row["close"] == jan[-1]["close"]
    assert float(row["high"]) == max(float(d["high"]) for d in jan)
    assert int(row["volume"]) == sum(int(d["volume"]) for d in jan)
    rs = bs.query_history_k_data_plus("sh.600000", "date,peTTM", "2024-01-01", "2024-03-31", "w")
    assert rs.error_code == FIELD_INVALID


def test_index_moves_with_members(bs, sim: SimulatorServer) -> None:
    rows = drain(bs.query_history_k_data_plus("sh.000300", INDEX, "2020-01-01", "2020-12-31"))
    assert len(rows) == len(sim.market.trading_days(date(2020, 1, 1), date(2020, 12, 31)))
    members = sim.market.index_members("sh.000300", date(2020, 7, 1))
    assert len(members) == 300
    day_pct = {}
    for code in members:
        for bar in sim.market.daily_bars(code, date(2020, 7, 1), date(2020, 7, 31)):
            if bar["tradestatus"] == "1":
                day_pct.setdefault(bar["date"], []).append(float(bar["pctChg"]))
    index_pct = {r[0]: float(r[-1]) for r in rows}
    agree = sum(
        (index_pct[d] > 0) == (sum(v) / len(v) > 0)
        for d, v in day_pct.items()
        if abs(sum(v) / len(v)) > 0.3
    )
    assert agree >= 0.9 * sum(1 for v in day_pct.values() if abs(sum(v) / len(v)) > 0.3)
    hfq = drain(
        bs.query_history_k_data_plus("sh.000300", "close", "2020-01-01", "2020-12-31", "d", "1")
    )
    assert [r[0] for r in hfq] == [r[5] for r in rows]  # indexes are never adjusted
    weekly = drain(
        bs.query_history_k_data_plus("sh.000300", PERIOD, "2020-01-01", "2020-12-31", "w")
    )
    assert 48 <= len(weekly) <= 53 and weekly[-1][5] == rows[-1][5]
    cons = drain(bs.query_hs300_stocks("2020-07-01"))
    assert sorted(r[1] for r in cons) == members


def test_error_codes(bs) -> None:
    def err(rs: object) -> str:
        return rs.error_code

    assert (
        err(bs.query_history_k_data_plus("sh.699998", "date", "2024-01-01", "2024-01-05"))
        == CODE_INVALID
    )
    assert (
        err(bs.query_history_k_data_plus("sh.600000", "date,nope", "2024-01-01", "2024-01-05"))
        == FIELD_INVALID
    )
    assert (
        err(bs.query_history_k_data_plus("sh.600000", "date", "2024-01-01", "2024-01-05", "q"))
        == PARAM_ERROR
    )
    assert (
        err(bs.query_history_k_data_plus("sh.600000", "date", "2024-01-01", "2024-01-05", "d", "7"))
        == PARAM_ERROR
    )
    assert err(bs.query_adjust_factor("sh.699998")) == CODE_INVALID
    # The client rejects a bad date itself (returns None); the server does too for raw requests.
    assert bs.query_history_k_data_plus("sh.600000", "date", "2024-13-01", "2024-01-05") is None
    assert err(bs.query_all_stock("2024-02-30")) == "10004010"


def test_market_is_deterministic() -> None:
    a = CONFIG.make_market()
    b = CONFIG.make_market()
    assert a.all_codes() == b.all_codes()
    code = a.all_codes()[123]
    assert a.daily_bars(code, date(2012, 1, 1), date(2013, 1, 1)) == b.daily_bars(
        code, date(2012, 1, 1), date(2013, 1, 1)
    )
    one_day = a.daily_bars(code, date(2012, 6, 1), date(2012, 6, 1) + timedelta(days=3))
    assert one_day == [
        r
        for r in b.daily_bars(code, date(2012, 1, 1), date(2013, 1, 1))
        if "2012-06-01" <= r["date"] <= "2012-06-04"
    ]
    other_seed = SimulatorConfig(seed=12, n_codes=1000).make_market()
    assert other_seed.all_codes() != a.all_codes()


# ----- statements, corporate actions, classification, macro -------------------------------------

QUARTERLY_APIS = (
    "query_profit_data",
    "query_operation_data",
    "query_growth_data",
    "query_balance_data",
    "query_cash_flow_data",
    "query_dupont_data",
)
DEADLINES = {1: (4, 30), 2: (8, 31), 3: (10, 31), 4: (4, 30)}


def test_quarterly_statements_follow_publication(bs, sim: SimulatorServer) -> None:
    for api_name in QUARTERLY_APIS:
        call = getattr(bs, api_name)
        rs = call("sh.600000", 2021, 2)
        rows = drain(rs)
        assert rs.fields == list(apis.api(api_name).field_names)
        assert len(rows) == 1 and rows[0][0] == "sh.600000" and rows[0][2] == "2021-06-30"
        assert date(2021, 7, 1) <= date.fromisoformat(rows[0][1]) <= date(2021, 8, 31)
    # The window ends 2026-12-31: the 2026 annual report is not published yet.
    assert drain(bs.query_profit_data("sh.600000", 2026, 4)) == []
    for code in sim.market.all_codes()[:40]:
        for quarter in (1, 2, 3, 4):
            for row in drain(bs.query_balance_data(code, 2019, quarter)):
                pub = date.fromisoformat(row[1])
                month, day = DEADLINES[quarter]
                year = 2020 if quarter == 4 else 2019
                assert date.fromisoformat(row[2]) < pub <= date(year, month, day)
    dupont = drain(bs.query_dupont_data("sz.000001", 2022, 4))[0]
    roe, lev, turn, pni, nitogr = (float(x) for x in dupont[3:8])
    assert roe == pytest.approx(lev * turn * nitogr * pni, rel=1e-4)
    profit = drain(bs.query_profit_data("sz.000001", 2022, 4))[0]
    assert float(profit[3]) == pytest.approx(roe, abs=1e-6)


def test_dividends_move_the_ex_right_preclose(bs, sim: SimulatorServer) -> None:
    market = sim.market
    code, action = next(
        (c, a)
        for c in market.all_codes()
        for a in market.corporate_actions(c)
        if a.stocks_ps + a.reserve_ps > 0 and a.ex_date.year >= 2012
    )
    by_operate = drain(bs.query_dividend_data(code, action.ex_date.year, "operate"))
    row = next(r for r in by_operate if r[6] == action.ex_date.isoformat())
    by_report = drain(bs.query_dividend_data(code, action.plan_date.year, "report"))
    assert row in by_report
    cash = float(row[9]) if row[9] else 0.0
    shares = (float(row[11]) if row[11] else 0.0) + (float(row[13]) if row[13] else 0.0)
    assert shares > 0 and row[8] == row[6]
    bars = market.daily_bars(code, action.ex_date - timedelta(days=40), action.ex_date)
    traded = [b for b in bars if b["tradestatus"] == "1"]
    ex_bar, before = traded[-1], traded[-2]
    assert ex_bar["date"] == action.ex_date.isoformat()
    expected = (float(before["close"]) - cash) / (1 + shares)
    assert abs(float(ex_bar["preclose"]) - expected) <= 0.0051
    factors = drain(bs.query_adjust_factor(code, row[6], row[6]))
    assert len(factors) == 1
    previous = [f for f in market.adjust_factors(code, date(1990, 1, 1), action.ex_date)][-2:]
    step = float(before["close"]) / float(ex_bar["preclose"])
    if len(previous) == 2:
        assert previous[1].back / previous[0].back == pytest.approx(step, rel=1e-5)


def test_express_and_forecast_reports(bs, sim: SimulatorServer) -> None:
    express, forecast = [], []
    for code in sim.market.all_codes()[:30]:
        express += drain(bs.query_performance_express_report(code, "2015-01-01", "2020-12-31"))
        forecast += drain(bs.query_forecast_report(code, "2015-01-01", "2020-12-31"))
    assert express and forecast
    assert all("2015-01-01" <= r[1] <= "2020-12-31" and r[2].endswith("12-31") for r in express)
    assert all("2015-01-01" <= r[1] <= "2020-12-31" and r[1] > r[2] for r in forecast)
    kinds = {r[3] for r in forecast}
    assert kinds <= {"预增", "略增", "略减", "预减", "扭亏", "首亏", "续亏"}
    assert all(float(r[5]) >= float(r[6]) for r in forecast)


def test_industry_and_constituents(bs, sim: SimulatorServer) -> None:
    day = date(2023, 5, 10)
    rows = drain(bs.query_stock_industry(date=day.isoformat()))
    assert sorted(r[1] for r in rows) == sim.market.codes(day)
    assert all(r[4] == "证监会行业分类" and r[3] for r in rows)
    one = drain(bs.query_stock_industry("sh.600000"))
    assert len(one) == 1 and one[0][1] == "sh.600000"
    sz50 = drain(bs.query_sz50_stocks(day.isoformat()))
    hs300 = drain(bs.query_hs300_stocks(day.isoformat()))
    zz500 = drain(bs.query_zz500_stocks(day.isoformat()))
    assert len(sz50) == 50 and len(hs300) == 300 and 0 < len(zz500) <= 500
    assert all(r[1].startswith("sh.") for r in sz50)
    assert not {r[1] for r in hs300} & {r[1] for r in zz500}
    assert len({r[0] for r in hs300}) == 1 and hs300[0][0] <= day.isoformat()


def test_macro_series(bs) -> None:
    deposit = drain(bs.query_deposit_rate_data("2010-01-01", "2015-12-31"))
    loan = drain(bs.query_loan_rate_data())
    reserve = drain(bs.query_required_reserve_ratio_data("2012-01-01", "2020-12-31", "1"))
    month = drain(bs.query_money_supply_data_month("2020-01", "2020-12"))
    year = drain(bs.query_money_supply_data_year("2015", "2020"))
    assert deposit and all("2010-01-01" <= r[0] <= "2015-12-31" and len(r) == 11 for r in deposit)
    assert loan and all(len(r) == 8 for r in loan)
    assert reserve and all("2012-01-01" <= r[1] <= "2020-12-31" for r in reserve)
    assert [int(r[1]) for r in month] == list(range(1, 13))
    assert [r[0] for r in year] == [str(y) for y in range(2015, 2021)]
    assert all(float(r[2]) > 0 for r in month)


def test_one_day_all_stock_queries(bs, sim: SimulatorServer) -> None:
    day = date(2024, 6, 24)
    rs = bs.query_daily_history_k_AStock(day.isoformat())
    rows = drain(rs)
    assert rs.fields == [f.name for f in apis.K_DAILY_FIELDS]
    assert [r[1] for r in rows] == sim.market.codes(day)
    factors = drain(bs.query_daily_adjust_factor(day.isoformat()))
    assert all(r[1] == day.isoformat() for r in factors)
    expected = [c for c in sim.market.codes(day) if sim.market.adjust_factors(c, day, day)]
    assert [r[0] for r in factors] == expected
