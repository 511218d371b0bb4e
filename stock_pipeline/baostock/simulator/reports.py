"""Rows of the statement-based APIs (pure): the six quarterly APIs, dividends, express and
forecast reports, industry and index constituents.

Visibility follows publication: the simulator's "today" is the market window's end, so a
statement, express or forecast report exists only once its publication date is <= market.end
(statements: <= market.today, which tests may move back from the end).

Restatements (更正公告): a few statements are corrected some weeks after publication. BaoStock
serves only the latest values, under the original pubDate, so a request answered after the
correction silently returns other numbers for the same (code, period).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date, timedelta

import numpy as np

from .fundamentals import Fundamentals, quarter_end
from .market import CSRC_INDUSTRIES, INDUSTRY_CLASSIFICATION, Market, _uniforms, code_id

Row = list[str]


def _f(x: float) -> str:
    return f"{x:.6f}" if np.isfinite(x) else ""


def _g(x: float) -> str:
    """Short decimal without trailing zeros, as BaoStock prints per-share amounts."""
    return f"{x:.4f}".rstrip("0").rstrip(".")


def _growth(now: float, before: float) -> str:
    return _f((now - before) / abs(before)) if before else ""


def _statement(
    market: Market, code: str, year: int, quarter: int
) -> tuple[Fundamentals, int] | None:
    fund = market.fundamentals(code)
    if fund is None:
        return None
    i = fund.index_of(year, quarter)
    if i is None or fund.pub_dates[i] > market.today:
        return None
    return fund, i


def _head(code: str, fund: Fundamentals, i: int) -> Row:
    return [code, fund.pub_dates[i].isoformat(), fund.stat_dates[i].isoformat()]


def profit_row(fund: Fundamentals, i: int) -> list[str]:
    revenue = fund.ytd(fund.revenue, i)
    parent = fund.ytd(fund.parent_net_profit, i)
    q = int(fund.quarters[i])
    return [
        _f(parent / fund.average(fund.equity, i)),
        _f(fund.ytd(fund.net_profit, i) / revenue),
        _f(fund.ytd(fund.gross_profit, i) / revenue),
        _f(fund.ytd(fund.net_profit, i)),
        _f(fund.ttm(fund.parent_net_profit, i) / fund.total_share[i]),
        _f(revenue) if q in (2, 4) else "",  # BaoStock fills MBRevenue for H1 and annual only
        f"{fund.total_share[i]:.2f}",
        f"{fund.liqa_share[i]:.2f}",
    ]


def operation_row(fund: Fundamentals, i: int) -> list[str]:
    revenue = fund.ytd(fund.revenue, i)
    cost = revenue - fund.ytd(fund.gross_profit, i)
    days = 90 * int(fund.quarters[i])
    nr = revenue / fund.average(fund.receivables, i)
    inv = cost / fund.average(fund.inventory, i)
    return [
        _f(nr),
        _f(days / nr),
        _f(inv),
        _f(days / inv),
        _f(revenue / fund.average(fund.current_assets, i)),
        _f(revenue / fund.average(fund.total_assets, i)),
    ]


def growth_row(fund: Fundamentals, i: int) -> list[str]:
    j = i - 4
    if j < 0:
        return [""] * 5
    eps_now = fund.ytd(fund.parent_net_profit, i) / fund.total_share[i]
    eps_before = fund.ytd(fund.parent_net_profit, j) / fund.total_share[j]
    return [
        _growth(fund.equity[i], fund.equity[j]),
        _growth(fund.total_assets[i], fund.total_assets[j]),
        _growth(fund.ytd(fund.net_profit, i), fund.ytd(fund.net_profit, j)),
        _growth(eps_now, eps_before),
        _growth(fund.ytd(fund.parent_net_profit, i), fund.ytd(fund.parent_net_profit, j)),
    ]


def balance_row(fund: Fundamentals, i: int) -> list[str]:
    cl = fund.current_liabilities[i]
    yoy = _growth(fund.liabilities[i], fund.liabilities[i - 4]) if i >= 4 else ""
    return [
        _f(fund.current_assets[i] / cl),
        _f((fund.current_assets[i] - fund.inventory[i]) / cl),
        _f(fund.cash[i] / cl),
        yoy,
        _f(fund.liabilities[i] / fund.total_assets[i]),
        _f(fund.total_assets[i] / fund.equity[i]),
    ]


def cash_flow_row(fund: Fundamentals, i: int) -> list[str]:
    assets = fund.total_assets[i]
    cfo = fund.ytd(fund.cfo, i)
    revenue = fund.ytd(fund.revenue, i)
    return [
        _f(fund.current_assets[i] / assets),
        _f(1 - fund.current_assets[i] / assets),
        _f((assets - fund.intangibles[i]) / assets),
        _f(fund.ytd(fund.ebit, i) / fund.ytd(fund.interest, i)),
        _f(cfo / revenue),
        _f(cfo / fund.ytd(fund.net_profit, i)),
        _f(cfo / (revenue * 1.02)),  # gross revenue includes other operating income
    ]


def dupont_row(fund: Fundamentals, i: int) -> list[str]:
    revenue = fund.ytd(fund.revenue, i) * 1.02
    net = fund.ytd(fund.net_profit, i)
    parent = fund.ytd(fund.parent_net_profit, i)
    avg_assets = fund.average(fund.total_assets, i)
    avg_equity = fund.average(fund.equity, i)
    pretax, ebit = fund.ytd(fund.pretax, i), fund.ytd(fund.ebit, i)
    return [
        _f(parent / avg_equity),
        _f(avg_assets / avg_equity),
        _f(revenue / avg_assets),
        _f(parent / net),
        _f(net / revenue),
        _f(net / pretax),
        _f(pretax / ebit),
        _f(ebit / revenue),
    ]


QUARTERLY: dict[str, Callable[[Fundamentals, int], list[str]]] = {
    "query_profit_data": profit_row,
    "query_operation_data": operation_row,
    "query_growth_data": growth_row,
    "query_balance_data": balance_row,
    "query_cash_flow_data": cash_flow_row,
    "query_dupont_data": dupont_row,
}


def quarterly_rows(market: Market, api: str, code: str, year: int, quarter: int) -> list[Row]:
    """The row of a quarterly API for (code, year, quarter), if published by market.today; in
    its restated version once the restatement date (if any) has come."""
    found = _statement(market, code, year, quarter)
    if found is None:
        return []
    fund, i = found
    restated = restatement_date(market, code, year, quarter)
    if restated is not None and restated <= market.today:
        fund = _restated(fund, i)
    return [_head(code, fund, i) + QUARTERLY[api](fund, i)]


# Share of statements restated, the factor applied to the quarter's net profit, and the first
# statement date that can be restated (older statements keep the values they always had).
RESTATED_SHARE = 0.03
RESTATEMENT_FACTOR = 1.03
RESTATEMENTS_FROM = date(2015, 1, 1)


def restatement_date(market: Market, code: str, year: int, quarter: int) -> date | None:
    """The day a statement is corrected (20-120 days after its publication), or None for the
    ~97% of statements never corrected; deterministic per (seed, code, period)."""
    fund = market.fundamentals(code)
    if fund is None:
        return None
    i = fund.index_of(year, quarter)
    if i is None or fund.stat_dates[i] < RESTATEMENTS_FROM:
        return None
    draws = _draws(market, code, 4, np.array([year * 4 + quarter]))[:, 0]
    if draws[0] >= RESTATED_SHARE:
        return None
    return fund.pub_dates[i] + timedelta(days=20 + int(draws[1] * 101))


def _restated(fund: Fundamentals, i: int) -> Fundamentals:
    """The statements with quarter i's net profit (and its parent share) corrected: every
    ratio built on them follows (ROE, margins, EPS, growth, DuPont, CFO/NP)."""
    net, parent = fund.net_profit.copy(), fund.parent_net_profit.copy()
    net[i] *= RESTATEMENT_FACTOR
    parent[i] *= RESTATEMENT_FACTOR
    return replace(fund, net_profit=net, parent_net_profit=parent)


# ----- corporate actions and reports -------------------------------------------------------------


def dividend_rows(market: Market, code: str, year: int, year_type: str) -> list[Row]:
    """Dividend plans by announcement year ("report") or ex-right year ("operate")."""
    rows = []
    for a in market.corporate_actions(code):
        key = a.plan_date.year if year_type == "report" else a.ex_date.year
        if key != year:
            continue
        shares = a.stocks_ps + a.reserve_ps
        text = "10"
        if a.stocks_ps:
            text += f"送{_g(a.stocks_ps * 10)}股"
        if a.reserve_ps:
            text += f"转增{_g(a.reserve_ps * 10)}股"
        if a.cash_ps:
            text += f"派{_g(a.cash_ps * 10)}元(含税,扣税后{_g(a.cash_ps * 9)}元)"
        rows.append(
            [
                code,
                "",
                a.agm_date.isoformat(),
                a.plan_date.isoformat(),
                (a.regist_date - timedelta(days=3)).isoformat(),
                a.regist_date.isoformat(),
                a.ex_date.isoformat(),
                a.pay_date.isoformat() if a.cash_ps else "",
                a.ex_date.isoformat() if shares else "",
                _g(a.cash_ps) if a.cash_ps else "",
                f"{_g(a.cash_ps * 0.9)}或{_g(a.cash_ps * 0.95)}" if a.cash_ps else "",
                _g(a.stocks_ps) if a.stocks_ps else "",
                text,
                _g(a.reserve_ps) if a.reserve_ps else "",
            ]
        )
    return rows


def _draws(market: Market, code: str, stream: int, ids: np.ndarray) -> np.ndarray:
    key = market.seed * 1_000_003 + code_id(code) + stream * 0x1F1F
    return _uniforms(key, 3, ids)


def express_rows(market: Market, code: str, start: date, end: date) -> list[Row]:
    """Performance express reports (业绩快报): annual figures published ahead of the report."""
    fund = market.fundamentals(code)
    if fund is None:
        return []
    rows = []
    annual = np.flatnonzero(fund.quarters == 4)
    draws = _draws(market, code, 1, fund.years[annual])
    for n, i in enumerate(annual.tolist()):
        if draws[0, n] > 0.35 or i < 4:
            continue
        year = int(fund.years[i])
        pub = date(year + 1, 1, 8) + timedelta(days=int(draws[1, n] * 45))
        pub = min(pub, fund.pub_dates[i] - timedelta(days=1))
        update = pub + timedelta(days=int(draws[2, n] * 3))
        if not start <= pub <= end or pub > market.end:
            continue
        eps = fund.ytd(fund.parent_net_profit, i) / fund.total_share[i]
        eps_before = fund.ytd(fund.parent_net_profit, i - 4) / fund.total_share[i - 4]
        rows.append(
            [
                code,
                pub.isoformat(),
                quarter_end(year, 4).isoformat(),
                update.isoformat(),
                _f(fund.total_assets[i]),
                _f(fund.equity[i]),
                _growth(eps, eps_before),
                _f(fund.ytd(fund.parent_net_profit, i) / fund.average(fund.equity, i)),
                _f(eps),
                _growth(fund.ytd(fund.revenue, i), fund.ytd(fund.revenue, i - 4)),
                _growth(fund.ytd(fund.ebit, i), fund.ytd(fund.ebit, i - 4)),
            ]
        )
    return rows


_PERIOD_NAMES = {1: "1-3月", 2: "1-6月", 3: "1-9月", 4: "年度"}


def forecast_rows(market: Market, code: str, start: date, end: date) -> list[Row]:
    """Earnings forecasts (业绩预告), published a few weeks after the period ends."""
    fund = market.fundamentals(code)
    if fund is None or len(fund) <= 4:
        return []
    rows = []
    ids = np.arange(4, len(fund))
    draws = _draws(market, code, 2, fund.years[ids] * 4 + fund.quarters[ids])
    for n, i in enumerate(ids.tolist()):
        q, year = int(fund.quarters[i]), int(fund.years[i])
        if draws[0, n] > (0.45 if q in (2, 4) else 0.2):
            continue
        stat = fund.stat_dates[i]
        pub = stat + timedelta(days=5 + int(draws[1, n] * 25))
        pub = min(pub, fund.pub_dates[i] - timedelta(days=1))
        if not start <= pub <= end or pub > market.end:
            continue
        now = fund.ytd(fund.parent_net_profit, i)
        before = fund.ytd(fund.parent_net_profit, i - 4)
        change = (now - before) / abs(before) * 100 if before else 0.0
        if before < 0 < now:
            kind = "扭亏"
        elif now < 0 < before:
            kind = "首亏"
        elif now < 0 and before < 0:
            kind = "续亏"
        else:
            kind = (
                "预增"
                if change >= 50
                else "略增"
                if change >= 0
                else "略减"
                if change > -50
                else "预减"
            )
        band = 5 + draws[2, n] * 20
        low, high = now * (1 - band / 200), now * (1 + band / 200)
        if low > high:
            low, high = high, low
        verb = "盈利" if now >= 0 else "亏损"
        abstract = (
            f"预计{year}年{_PERIOD_NAMES[q]}归属于上市公司股东的净利润{verb}"
            f"{abs(low) / 1e4:.0f}万元至{abs(high) / 1e4:.0f}万元"
        )
        rows.append(
            [
                code,
                pub.isoformat(),
                stat.isoformat(),
                kind,
                abstract,
                _f(change + band / 2),
                _f(change - band / 2),
            ]
        )
    return rows


# ----- classification ----------------------------------------------------------------------------


def industry_of(market: Market, code: str, day: date) -> tuple[str, date]:
    """(CSRC industry, date of the last classification change) of a stock on a day."""
    lst = market.listings[code]
    draws = _draws(market, code, 3, np.array([0]))[:, 0]
    first = lst.industry
    if draws[0] < 0.05:  # a few companies change industry once
        switch = market.start + timedelta(days=int(draws[1] * (market.end - market.start).days))
        if day >= switch:
            return CSRC_INDUSTRIES[int(draws[2] * len(CSRC_INDUSTRIES))], switch
    return first, max(lst.ipo, market.start)


def industry_rows(market: Market, code: str, day: date) -> list[Row]:
    codes = [code] if code else market.codes(day)
    if code and code not in set(market.codes(day)):
        return []
    # BaoStock refreshes the classification weekly (on Mondays).
    update = day - timedelta(days=day.weekday())
    rows = []
    for c in codes:
        industry, _changed = industry_of(market, c, day)
        updated = max(update, market.listings[c].ipo)
        rows.append(
            [updated.isoformat(), c, market.listings[c].name, industry, INDUSTRY_CLASSIFICATION]
        )
    return rows


def constituent_rows(market: Market, index: str, day: date) -> list[Row]:
    """Constituents of hs300 / sz50 / zz500 on a day, dated by the review they came from."""
    review = max((r for r in market.rebalance_dates() if r <= day), default=None)
    if review is None:
        return []
    return [
        [review.isoformat(), c, market.listings[c].name]
        for c in market.index_members(index, review)
    ]
