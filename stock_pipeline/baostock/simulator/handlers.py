"""What each BaoStock query returns: request parameters in, rows of strings out (no I/O).

A handler gets the request's parameters (the body after method, user_id, page, per_page) and
returns every row of the result; the server pages them. Field lists come from `apis.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from .. import apis
from . import macro, reports, text
from . import protocol as p
from .market import Market

CODE_RE = re.compile(r"^(sh|sz)\.\d{6}$")
FREQUENCIES = {"d", "w", "m"}
MINUTE_FREQUENCIES = {"5", "15", "30", "60"}
ADJUSTFLAGS = {"1", "2", "3"}


class ApiError(Exception):
    """A request the real service would refuse: carries BaoStock's error code."""

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(message or p.ERROR_MESSAGES.get(code, "error"))
        self.code = code
        self.message = message or p.ERROR_MESSAGES.get(code, "error")


@dataclass
class Result:
    """All rows of a query plus what the response echoes after the record JSON.

    K-line rows stay a text.Table (their JSON built with NumPy); other rows are lists.
    """

    rows: list[list[str]] | text.Table
    echo: list[str]  # request parameters echoed back, then the field list (see each parser)

    def __len__(self) -> int:
        return len(self.rows)

    def records_json(self, lo: int = 0, hi: int | None = None) -> str:
        """The {"record":[...]} text of rows [lo, hi)."""
        if isinstance(self.rows, text.Table):
            return self.rows.records_json(lo, hi)
        return p.records_json(self.rows[lo:hi])


Handler = Callable[[Market, tuple[str, ...]], Result]


def fields_csv(api_name: str) -> str:
    return ",".join(apis.api(api_name).field_names)


def parse_date(text: str, code: str = p.DATE_ERROR) -> date:
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise ApiError(code) from None


def parse_range(start: str, end: str, default_start: date, default_end: date) -> tuple[date, date]:
    lo = parse_date(start, p.START_DATE_ERROR) if start else default_start
    hi = parse_date(end, p.END_DATE_ERROR) if end else default_end
    if hi < lo:
        raise ApiError(p.START_AFTER_END)
    return lo, hi


def check_code(market: Market, code: str) -> str:
    code = code.strip().lower()
    if not CODE_RE.match(code) or code not in market.listings:
        raise ApiError(p.CODE_INVALID, f"无效的证券代码：{code}")
    return code


def param(params: tuple[str, ...], i: int) -> str:
    return params[i] if i < len(params) else ""


# ----- metadata ----------------------------------------------------------------------------------


def trade_dates(market: Market, params: tuple[str, ...]) -> Result:
    start, end = param(params, 0), param(params, 1)
    lo, hi = parse_range(start, end, date(2015, 1, 1), market.end)
    flags = market.open_flags(lo, hi).tolist()
    rows = [
        [(lo + timedelta(days=i)).isoformat(), "1" if flag else "0"] for i, flag in enumerate(flags)
    ]
    return Result(rows, [start, end, fields_csv("query_trade_dates")])


def all_stock(market: Market, params: tuple[str, ...]) -> Result:
    day_text = param(params, 0)
    day = parse_date(day_text) if day_text else market.end
    # Like BaoStock, a day without trading (holiday, or past the market's "today") is empty.
    if market.start <= day <= market.end and market.is_trading_day(day):
        table = market.all_stock_table(day)
    else:
        table = text.Table([])
    return Result(table, [day_text, fields_csv("query_all_stock")])


def stock_basic(market: Market, params: tuple[str, ...]) -> Result:
    code, name = param(params, 0).strip().lower(), param(params, 1).strip()
    if code and not CODE_RE.match(code):
        raise ApiError(p.CODE_INVALID)
    known = [code] if code in market.listings else []
    candidates = known if code else sorted(market.listings)
    rows = []
    for c in candidates:
        lst = market.listings[c]
        if name and name not in lst.name:
            continue
        delisted = lst.out is not None and lst.out <= market.end
        rows.append(
            [
                c,
                lst.name,
                lst.ipo.isoformat(),
                lst.out.isoformat() if lst.out else "",
                "2" if lst.is_index else "1",
                "0" if delisted else "1",
            ]
        )
    return Result(rows, [param(params, 0), param(params, 1), fields_csv("query_stock_basic")])


# ----- k lines -----------------------------------------------------------------------------------


def history_k(market: Market, params: tuple[str, ...]) -> Result:
    code_text, fields_text, start, end, frequency, adjustflag = (param(params, i) for i in range(6))
    code = check_code(market, code_text)
    if frequency in MINUTE_FREQUENCIES:
        raise ApiError(p.PARAM_ERROR, "模拟服务器不提供分钟线数据（frequency=5/15/30/60）。")
    if frequency not in FREQUENCIES:
        raise ApiError(p.PARAM_ERROR, f"数据类型（frequency）错误：{frequency}")
    if adjustflag not in ADJUSTFLAGS:
        raise ApiError(p.PARAM_ERROR, f"复权类型（adjustflag）错误：{adjustflag}")
    lo, hi = parse_range(start, end, date(2015, 1, 1), market.end)
    names = [f.strip() for f in fields_text.split(",")]
    is_index = market.listings[code].is_index

    allowed = apis.K_DAILY_FIELDS if frequency == "d" else apis.K_PERIOD_FIELDS
    allowed_names = {f.name for f in allowed}
    for name in names:
        if name not in allowed_names:
            raise ApiError(p.FIELD_INVALID, f"无效的指标：{name}")
    if len(set(names)) != len(names):
        raise ApiError(p.FIELD_REPEATED)
    # Indexes are never adjusted: every adjustflag serves the same levels, echoing the flag.
    flag = "3" if is_index else adjustflag
    if frequency == "d":
        cols = market.daily_text(code, lo, hi, flag, names)
    else:
        cols = market.period_text(code, lo, hi, frequency, flag)
    if is_index and "adjustflag" in cols:
        cols["adjustflag"] = text.constant(adjustflag, cols["adjustflag"].n)
    table = text.Table([cols[n] for n in names])
    return Result(table, [code_text, fields_text, start, end, frequency, adjustflag])


def adjust_factor(market: Market, params: tuple[str, ...]) -> Result:
    code = check_code(market, param(params, 0))
    lo, hi = parse_range(param(params, 1), param(params, 2), date(2015, 1, 1), market.end)
    rows = [
        [f.code, f.ex_date.isoformat(), f"{f.fore:.6f}", f"{f.back:.6f}", f"{f.back:.6f}"]
        for f in market.adjust_factors(code, lo, hi)
    ]
    echo = [param(params, 0), param(params, 1), param(params, 2), fields_csv("query_adjust_factor")]
    return Result(rows, echo)


def daily_all_stocks(market: Market, params: tuple[str, ...]) -> Result:
    """query_daily_history_k_AStock: one day, every stock, all daily fields, not paged."""
    day = parse_date(param(params, 0))
    names = [f.name for f in apis.K_DAILY_FIELDS]
    tables = []
    for code in market.codes(day):
        cols = market.daily_text(code, day, day, "3")
        tables.append(text.Table([cols[n] for n in names]))
    return Result(text.Table.concat(tables), [",".join(names)])


def daily_adjust_factors(market: Market, params: tuple[str, ...]) -> Result:
    """query_daily_adjust_factor: factors of every stock with an ex-right on that day."""
    day = parse_date(param(params, 0))
    rows = []
    for code in market.codes(day):
        for f in market.adjust_factors(code, day, day):
            rows.append(
                [f.code, f.ex_date.isoformat(), f"{f.fore:.6f}", f"{f.back:.6f}", f"{f.back:.6f}"]
            )
    return Result(rows, [fields_csv("query_adjust_factor")])


# ----- statements and corporate actions ---------------------------------------------------------


def _year(text: str) -> int:
    if not text.isdigit() or len(text) != 4:
        raise ApiError(p.PARAM_ERROR, f"年份输入有误：{text}")
    return int(text)


def _quarterly(api_name: str) -> Handler:
    def handler(market: Market, params: tuple[str, ...]) -> Result:
        code = check_code(market, param(params, 0))
        year = _year(param(params, 1))
        quarter_text = param(params, 2)
        if quarter_text not in ("1", "2", "3", "4"):
            raise ApiError(p.PARAM_ERROR, "季度填写错误，请检查。填写范围：1，2，3，4")
        rows = reports.quarterly_rows(market, api_name, code, year, int(quarter_text))
        return Result(rows, [*params[:3], fields_csv(api_name)])

    handler.__name__ = api_name
    return handler


def dividend(market: Market, params: tuple[str, ...]) -> Result:
    code = check_code(market, param(params, 0))
    year = _year(param(params, 1))
    year_type = param(params, 2)
    if year_type not in ("report", "operate"):
        raise ApiError(p.PARAM_ERROR, "年份类别输入有误，请修改（report 或 operate）。")
    rows = reports.dividend_rows(market, code, year, year_type)
    return Result(rows, [*params[:3], fields_csv("query_dividend_data")])


def _dated_reports(api_name: str, build: Callable[..., list[list[str]]]) -> Handler:
    def handler(market: Market, params: tuple[str, ...]) -> Result:
        code = check_code(market, param(params, 0))
        lo, hi = parse_range(param(params, 1), param(params, 2), date(2015, 1, 1), market.end)
        return Result(build(market, code, lo, hi), [*params[:3], fields_csv(api_name)])

    handler.__name__ = api_name
    return handler


def industry(market: Market, params: tuple[str, ...]) -> Result:
    code_text, day_text = param(params, 0), param(params, 1)
    code = check_code(market, code_text) if code_text else ""
    day = parse_date(day_text) if day_text else market.end
    rows = reports.industry_rows(market, code, day)
    return Result(rows, [code_text, day_text, fields_csv("query_stock_industry")])


def _constituents(api_name: str, index: str) -> Handler:
    def handler(market: Market, params: tuple[str, ...]) -> Result:
        day_text = param(params, 0)
        day = parse_date(day_text) if day_text else market.end
        return Result(
            reports.constituent_rows(market, index, day), [day_text, fields_csv(api_name)]
        )

    handler.__name__ = api_name
    return handler


# ----- macro -------------------------------------------------------------------------------------


def _optional_range(params: tuple[str, ...]) -> tuple[date, date]:
    return parse_range(param(params, 0), param(params, 1), date.min, date.max)


def deposit_rate(market: Market, params: tuple[str, ...]) -> Result:
    lo, hi = _optional_range(params)
    rows = macro.deposit_rows(market.seed, market.end, lo, hi)
    return Result(rows, [*params[:2], fields_csv("query_deposit_rate_data")])


def loan_rate(market: Market, params: tuple[str, ...]) -> Result:
    lo, hi = _optional_range(params)
    rows = macro.loan_rows(market.seed, market.end, lo, hi)
    return Result(rows, [*params[:2], fields_csv("query_loan_rate_data")])


def reserve_ratio(market: Market, params: tuple[str, ...]) -> Result:
    lo, hi = _optional_range(params)
    year_type = param(params, 2)
    if year_type not in ("0", "1"):
        raise ApiError(p.PARAM_ERROR, "年份类别输入有误：0 公告日期，1 生效日期。")
    rows = macro.reserve_rows(market.seed, market.end, lo, hi, by_effective=year_type == "1")
    return Result(rows, [*params[:3], fields_csv("query_required_reserve_ratio_data")])


def _year_month(text: str, code: str, default: tuple[int, int]) -> tuple[int, int]:
    if not text:
        return default
    try:
        parsed = datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise ApiError(code) from None
    return parsed.year, parsed.month


def money_supply_month(market: Market, params: tuple[str, ...]) -> Result:
    lo = _year_month(param(params, 0), p.START_DATE_ERROR, (0, 0))
    hi = _year_month(param(params, 1), p.END_DATE_ERROR, (9999, 12))
    if hi < lo:
        raise ApiError(p.START_AFTER_END)
    rows = macro.money_month_rows(market.seed, market.end, lo, hi)
    return Result(rows, [*params[:2], fields_csv("query_money_supply_data_month")])


def money_supply_year(market: Market, params: tuple[str, ...]) -> Result:
    texts = param(params, 0), param(params, 1)
    for value, code in zip(texts, (p.START_DATE_ERROR, p.END_DATE_ERROR), strict=True):
        if value and not (value.isdigit() and len(value) == 4):
            raise ApiError(code)
    lo = int(texts[0]) if texts[0] else 0
    hi = int(texts[1]) if texts[1] else 9999
    if hi < lo:
        raise ApiError(p.START_AFTER_END)
    rows = macro.money_year_rows(market.seed, market.end, lo, hi)
    return Result(rows, [*params[:2], fields_csv("query_money_supply_data_year")])


HANDLERS: dict[str, Handler] = {
    **{name: _quarterly(name) for name in reports.QUARTERLY},
    "query_dividend_data": dividend,
    "query_performance_express_report": _dated_reports(
        "query_performance_express_report", reports.express_rows
    ),
    "query_forecast_report": _dated_reports("query_forecast_report", reports.forecast_rows),
    "query_stock_industry": industry,
    "query_hs300_stocks": _constituents("query_hs300_stocks", "hs300"),
    "query_sz50_stocks": _constituents("query_sz50_stocks", "sz50"),
    "query_zz500_stocks": _constituents("query_zz500_stocks", "zz500"),
    "query_deposit_rate_data": deposit_rate,
    "query_loan_rate_data": loan_rate,
    "query_required_reserve_ratio_data": reserve_ratio,
    "query_money_supply_data_month": money_supply_month,
    "query_money_supply_data_year": money_supply_year,
    "query_trade_dates": trade_dates,
    "query_all_stock": all_stock,
    "query_stock_basic": stock_basic,
    "query_history_k_data_plus": history_k,
    "query_adjust_factor": adjust_factor,
    "query_daily_history_k_AStock": daily_all_stocks,
    "query_daily_adjust_factor": daily_adjust_factors,
}
# Methods whose body has no page / per_page fields and whose reply is not paged.
UNPAGED = {"query_daily_history_k_AStock", "query_daily_adjust_factor"}
