"""Reference data: the trading calendar table, the securities table, the stock universe."""

from __future__ import annotations

import numpy as np
import pandas as pd

# query_stock_basic's `type`: 1 stock, 2 index, 3 other, 4 convertible bond, 5 ETF.
STOCK_TYPE = 1
EXCHANGE = "SSE"  # BaoStock serves one calendar, the Shanghai exchange's


def trade_calendar_rows(trade_dates: pd.DataFrame) -> pd.DataFrame:
    """trade_calendar rows from raw_trade_dates (calendar_date, is_trading_day).

    prev_trade_date is the last open day strictly before each day (NaT before the first one).
    """
    days = trade_dates.sort_values("calendar_date", kind="stable")
    dates = days["calendar_date"].to_numpy("datetime64[ns]")
    is_open = days["is_trading_day"].fillna(False).to_numpy(bool)
    open_days = np.where(is_open, dates, np.datetime64("NaT"))
    # The last open day up to and including each day, then shifted by one row: strictly before.
    last_open = pd.Series(open_days).ffill().to_numpy("datetime64[ns]")
    previous = np.concatenate([[np.datetime64("NaT")], last_open[:-1]]).astype("datetime64[ns]")
    return pd.DataFrame(
        {
            "cal_date": dates,
            "exchange": EXCHANGE,
            "is_open": is_open,
            "prev_trade_date": previous,
        }
    )


def stocks_rows(stock_basic: pd.DataFrame) -> pd.DataFrame:
    """stocks rows from raw_stock_basic (industry comes later, from the P4 group)."""
    return pd.DataFrame(
        {
            "code": stock_basic["code"].to_numpy(object),
            "name": stock_basic["code_name"].to_numpy(object),
            "security_type": stock_basic["security_type"].astype("Int64").to_numpy(),
            "list_date": stock_basic["ipo_date"].to_numpy("datetime64[ns]"),
            "delist_date": stock_basic["out_date"].to_numpy("datetime64[ns]"),
            "is_listed": stock_basic["status"].astype("boolean").to_numpy(),
        }
    )


def stock_universe(listed_codes: pd.Series, stock_basic: pd.DataFrame) -> list[str]:
    """The stocks among `listed_codes` (codes query_all_stock listed on some day), sorted.

    Indexes, bonds and funds are left out by query_stock_basic's type; a listed code that
    stock_basic does not know is kept, so a new listing is never skipped for lack of metadata.
    """
    types = dict(zip(stock_basic["code"], stock_basic["security_type"], strict=True))
    out = []
    for code in pd.unique(listed_codes):
        kind = types.get(code)
        if kind is None or pd.isna(kind) or int(kind) == STOCK_TYPE:
            out.append(str(code))
    return sorted(out)
