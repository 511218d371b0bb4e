"""What BaoStock serves: every API the P0-P5 groups use, its fields and their types.

This catalog is the single description of BaoStock's rows. The simulator serves these fields, the
typed-row conversion parses them, and the warehouse derives its raw tables from them.
Field names are BaoStock's; `column` is the snake_case name used in PostgreSQL and DataFrames.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

FieldType = Literal["date", "float", "int", "bool", "str"]


@dataclass(frozen=True)
class Field:
    name: str  # as BaoStock sends it
    type: FieldType
    column: str  # as stored and used in DataFrames


@dataclass(frozen=True)
class Api:
    name: str  # the baostock function, e.g. "query_profit_data"
    fields: tuple[Field, ...]
    description: str

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


def _snake(name: str) -> str:
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _fields(spec: str, renames: dict[str, str] | None = None) -> tuple[Field, ...]:
    """Parse 'name:type name:type ...' (type defaults to float) into Fields."""
    renames = renames or {}
    out = []
    for token in spec.split():
        name, _, type_ = token.partition(":")
        out.append(Field(name, (type_ or "float"), renames.get(name, _snake(name))))  # type: ignore[arg-type]
    return tuple(out)


# Fields of query_history_k_data_plus, daily frequency (all 18). `date` -> trade_date.
K_DAILY_FIELDS = _fields(
    "date:date code:str open high low close preclose volume:int amount adjustflag:int turn "
    "tradestatus:bool pctChg peTTM pbMRQ psTTM pcfNcfTTM isST:bool",
    {
        "date": "trade_date",
        "preclose": "pre_close",
        "pctChg": "pct_chg",
        "turn": "turnover",
        "tradestatus": "trade_status",
        "adjustflag": "adjust_flag",
    },
)
# Weekly/monthly k-lines accept only this subset (BaoStock rejects the valuation fields there).
K_PERIOD_FIELDS = _fields(
    "date:date code:str open high low close volume:int amount adjustflag:int turn pctChg",
    {"date": "trade_date", "pctChg": "pct_chg", "turn": "turnover", "adjustflag": "adjust_flag"},
)
# Index daily k-lines: no valuation, no ST flag, no trade status.
K_INDEX_FIELDS = _fields(
    "date:date code:str open high low close preclose volume:int amount pctChg",
    {"date": "trade_date", "preclose": "pre_close", "pctChg": "pct_chg"},
)

_QUARTERLY_HEAD = "code:str pubDate:date statDate:date "

APIS: dict[str, Api] = {
    api.name: api
    for api in (
        Api(
            "query_trade_dates",
            _fields("calendar_date:date is_trading_day:bool"),
            "exchange calendar: every calendar day with a trading flag",
        ),
        Api(
            "query_all_stock",
            _fields("code:str tradeStatus:bool code_name:str"),
            "all securities (stocks and indexes) listed on one day",
        ),
        Api(
            "query_stock_basic",
            _fields(
                "code:str code_name:str ipoDate:date outDate:date type:int status:bool",
                {"type": "security_type"},
            ),
            "listing facts per security: type 1 stock, 2 index, 3 other; status 1 listed",
        ),
        Api("query_history_k_data_plus", K_DAILY_FIELDS, "k-line bars (fields vary by frequency)"),
        Api(
            "query_adjust_factor",
            _fields(
                "code:str dividOperateDate:date foreAdjustFactor backAdjustFactor adjustFactor"
            ),
            "adjustment factors, one row per ex-right date",
        ),
        Api(
            "query_profit_data",
            _fields(
                _QUARTERLY_HEAD
                + "roeAvg npMargin gpMargin netProfit epsTTM MBRevenue totalShare liqaShare",
                {"MBRevenue": "mb_revenue"},
            ),
            "quarterly profitability",
        ),
        Api(
            "query_operation_data",
            _fields(
                _QUARTERLY_HEAD + "NRTurnRatio NRTurnDays INVTurnRatio INVTurnDays CATurnRatio "
                "AssetTurnRatio",
                {
                    "NRTurnRatio": "nr_turn_ratio",
                    "NRTurnDays": "nr_turn_days",
                    "INVTurnRatio": "inv_turn_ratio",
                    "INVTurnDays": "inv_turn_days",
                    "CATurnRatio": "ca_turn_ratio",
                },
            ),
            "quarterly operating efficiency",
        ),
        Api(
            "query_growth_data",
            _fields(
                _QUARTERLY_HEAD + "YOYEquity YOYAsset YOYNI YOYEPSBasic YOYPNI",
                {
                    "YOYEquity": "yoy_equity",
                    "YOYAsset": "yoy_asset",
                    "YOYNI": "yoy_ni",
                    "YOYEPSBasic": "yoy_eps_basic",
                    "YOYPNI": "yoy_pni",
                },
            ),
            "quarterly growth",
        ),
        Api(
            "query_balance_data",
            _fields(
                _QUARTERLY_HEAD + "currentRatio quickRatio cashRatio YOYLiability "
                "liabilityToAsset assetToEquity",
                {"YOYLiability": "yoy_liability"},
            ),
            "quarterly solvency",
        ),
        Api(
            "query_cash_flow_data",
            _fields(
                _QUARTERLY_HEAD + "CAToAsset NCAToAsset tangibleAssetToAsset ebitToInterest "
                "CFOToOR CFOToNP CFOToGr",
                {
                    "CAToAsset": "ca_to_asset",
                    "NCAToAsset": "nca_to_asset",
                    "CFOToOR": "cfo_to_or",
                    "CFOToNP": "cfo_to_np",
                    "CFOToGr": "cfo_to_gr",
                },
            ),
            "quarterly cash flow",
        ),
        Api(
            "query_dupont_data",
            _fields(
                _QUARTERLY_HEAD + "dupontROE dupontAssetStoEquity dupontAssetTurn dupontPnitoni "
                "dupontNitogr dupontTaxBurden dupontIntburden dupontEbittogr",
                {"dupontROE": "dupont_roe"},
            ),
            "quarterly DuPont decomposition",
        ),
        Api(
            "query_dividend_data",
            _fields(
                "code:str dividPreNoticeDate:date dividAgmPumDate:date dividPlanAnnounceDate:date "
                "dividPlanDate:date dividRegistDate:date dividOperateDate:date dividPayDate:date "
                "dividStockMarketDate:date dividCashPsBeforeTax dividCashPsAfterTax:str "
                "dividStocksPs dividCashStock:str dividReserveToStockPs"
            ),
            "dividends, bonus shares and conversions by year",
        ),
        Api(
            "query_performance_express_report",
            _fields(
                "code:str performanceExpPubDate:date performanceExpStatDate:date "
                "performanceExpUpdateDate:date performanceExpressTotalAsset "
                "performanceExpressNetAsset performanceExpressEPSChgPct "
                "performanceExpressROEWa performanceExpressEPSDiluted "
                "performanceExpressGRYOY performanceExpressOPYOY",
                {
                    "performanceExpressEPSChgPct": "performance_express_eps_chg_pct",
                    "performanceExpressROEWa": "performance_express_roe_wa",
                    "performanceExpressEPSDiluted": "performance_express_eps_diluted",
                    "performanceExpressGRYOY": "performance_express_gr_yoy",
                    "performanceExpressOPYOY": "performance_express_op_yoy",
                },
            ),
            "performance express reports",
        ),
        Api(
            "query_forecast_report",
            _fields(
                "code:str profitForcastExpPubDate:date profitForcastExpStatDate:date "
                "profitForcastType:str profitForcastAbstract:str profitForcastChgPctUp "
                "profitForcastChgPctDwn"
            ),
            "earnings forecasts",
        ),
        Api(
            "query_stock_industry",
            _fields(
                "updateDate:date code:str code_name:str industry:str industryClassification:str"
            ),
            "CSRC industry per stock",
        ),
        Api("query_hs300_stocks", _fields("updateDate:date code:str code_name:str"), "CSI 300"),
        Api("query_sz50_stocks", _fields("updateDate:date code:str code_name:str"), "SSE 50"),
        Api("query_zz500_stocks", _fields("updateDate:date code:str code_name:str"), "CSI 500"),
        Api(
            "query_deposit_rate_data",
            _fields(
                "pubDate:date demandDepositRate fixedDepositRate3Month fixedDepositRate6Month "
                "fixedDepositRate1Year fixedDepositRate2Year fixedDepositRate3Year "
                "fixedDepositRate5Year installmentFixedDepositRate1Year "
                "installmentFixedDepositRate3Year installmentFixedDepositRate5Year"
            ),
            "benchmark deposit rates",
        ),
        Api(
            "query_loan_rate_data",
            _fields(
                "pubDate:date loanRate6Month loanRate6MonthTo1Year loanRate1YearTo3Year "
                "loanRate3YearTo5Year loanRateAbove5Year mortgateRateBelow5Year "
                "mortgateRateAbove5Year"
            ),
            "benchmark loan rates",
        ),
        Api(
            "query_required_reserve_ratio_data",
            _fields(
                "pubDate:date effectiveDate:date bigInstitutionsRatioPre "
                "bigInstitutionsRatioAfter mediumInstitutionsRatioPre "
                "mediumInstitutionsRatioAfter"
            ),
            "required reserve ratios",
        ),
        Api(
            "query_money_supply_data_month",
            _fields(
                "statYear:int statMonth:int m0Month m0YOY m0ChainRelative m1Month m1YOY "
                "m1ChainRelative m2Month m2YOY m2ChainRelative",
                {
                    "m0YOY": "m0_yoy",
                    "m1YOY": "m1_yoy",
                    "m2YOY": "m2_yoy",
                },
            ),
            "money supply, monthly",
        ),
        Api(
            "query_money_supply_data_year",
            _fields(
                "statYear:int m0Year m0YearYOY m1Year m1YearYOY m2Year m2YearYOY",
                {
                    "m0YearYOY": "m0_year_yoy",
                    "m1YearYOY": "m1_year_yoy",
                    "m2YearYOY": "m2_year_yoy",
                },
            ),
            "money supply, year-end balances",
        ),
    )
}

# The k-line API's field set depends on frequency and on the kind of security.
K_FIELDS_BY_KIND: dict[str, tuple[Field, ...]] = {
    "stock_daily": K_DAILY_FIELDS,
    "stock_period": K_PERIOD_FIELDS,  # frequency "w" or "m"
    "index_daily": K_INDEX_FIELDS,
}

# Indexes the P3 group syncs (query_history_k_data_plus on index codes).
INDEX_CODES: tuple[str, ...] = (
    "sh.000001",  # SSE Composite
    "sh.000016",  # SSE 50
    "sh.000300",  # CSI 300
    "sh.000905",  # CSI 500
    "sz.399001",  # SZSE Component
    "sz.399006",  # ChiNext
)

# adjustflag values of query_history_k_data_plus.
ADJUST_BACKWARD = "1"  # hfq: history fixed, the latest price moves
ADJUST_FORWARD = "2"  # qfq: latest price fixed, history moves
ADJUST_NONE = "3"


def api(name: str) -> Api:
    try:
        return APIS[name]
    except KeyError:
        raise KeyError(f"unknown BaoStock API {name!r}; known: {', '.join(sorted(APIS))}") from None
