"""Every warehouse table, declared once.

These SQLAlchemy Core tables are the single source for the Alembic migrations, the COPY column
order of the writer, the ETL selects and the assets' column metadata.

Layers:
- raw_*: one table per BaoStock dataset, derived from the API catalog (baostock/apis.py) by the
  declarative RAW_DATASETS list below; values typed, empty strings stored as NULL;
- business tables: stocks, trade_calendar, stock_daily, finance (+ finance_revisions),
  corporate_actions, performance_express, earnings_forecast, index_daily,
  index_constituents, industry_membership, macro_series;
- technical_daily: indicators computed on back-adjusted prices;
- bookkeeping: sync_state, fetch_log (incremental sync), index_definitions (index management).

Tables that grow by one row per code per trading day are range-partitioned by trade_date, one
partition per year (`{table}_{year}`), created on demand by the writer (`info["partition_column"]`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    func,
)
from sqlalchemy.types import TypeEngine

from stock_pipeline.baostock.apis import APIS, K_FIELDS_BY_KIND, Field

# Where the writer builds a partition whole before it joins its table (migration 0002).
STAGE_SCHEMA = "stock_pipeline_stage"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

SQL_TYPES: dict[str, type[TypeEngine]] = {
    "date": Date,
    "float": Double,
    "int": BigInteger,
    "bool": Boolean,
    "str": Text,
}


def _fetched_at() -> Column:
    return Column("fetched_at", DateTime(timezone=True), nullable=False, server_default=func.now())


def _updated_at() -> Column:
    return Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now())


def _yearly_partitions(column: str, hypertable: bool = False) -> dict:
    """Native yearly range partitions; `hypertable` tables become TimescaleDB hypertables with
    compression instead where that is available (see warehouse/timescale.py)."""
    return {
        "postgresql_partition_by": f"RANGE ({column})",
        "info": {"partition_column": column, "hypertable": hypertable},
    }


# ---------------------------------------------------------------------------------------------
# Raw layer: one declarative line per BaoStock dataset.


@dataclass(frozen=True)
class RawDataset:
    """One raw table fed by one BaoStock API.

    `fields` overrides the API's field list (k-lines differ by frequency and security kind);
    `request_columns` are request parameters stored with each row (e.g. the day of all_stock);
    `partition_column` makes the table yearly range-partitioned (per-day data that grows).
    """

    table: str
    group: str  # P0..P5
    api: str
    key: tuple[str, ...]
    cadence: str  # when it is refreshed: daily, quarterly, yearly, weekly, monthly, on_change
    fields: tuple[Field, ...] | None = None
    request_columns: tuple[Field, ...] = ()
    partition_column: str | None = None
    description: str = ""
    # Secondary indexes, each with the reason it exists (seed 000 D4: query paths only).
    indexes: tuple[tuple[tuple[str, ...], str], ...] = field(default=())

    @property
    def all_fields(self) -> tuple[Field, ...]:
        return self.request_columns + (self.fields or APIS[self.api].fields)


_DAY = Field("day", "date", "trade_date")
_INDEX_CODE = Field("index", "str", "index_code")
_REPORT_YEAR = Field("year", "int", "report_year")

RAW_DATASETS: tuple[RawDataset, ...] = (
    # P0 core daily
    RawDataset("raw_trade_dates", "P0", "query_trade_dates", ("calendar_date",), "daily"),
    RawDataset(
        "raw_all_stock",
        "P0",
        "query_all_stock",
        ("trade_date", "code"),
        "daily",
        request_columns=(_DAY,),
        partition_column="trade_date",
    ),
    RawDataset("raw_stock_basic", "P0", "query_stock_basic", ("code",), "daily"),
    RawDataset(
        "raw_k_daily",
        "P0",
        "query_history_k_data_plus",
        ("code", "trade_date"),
        "daily",
        fields=K_FIELDS_BY_KIND["stock_daily"],
        partition_column="trade_date",
        description="unadjusted daily bars of stocks (adjustflag 3), all 18 fields",
        indexes=((("trade_date", "code"), "ETL reads one trading-day window across all codes"),),
    ),
    RawDataset(
        "raw_adjust_factor",
        "P0",
        "query_adjust_factor",
        ("code", "divid_operate_date"),
        "daily",
    ),
    # P1 financials, keyed by statement period
    *(
        RawDataset(f"raw_{name}", "P1", f"query_{name}_data", ("code", "stat_date"), "quarterly")
        for name in ("profit", "operation", "growth", "balance", "cash_flow", "dupont")
    ),
    # P2 corporate actions and reports
    RawDataset(
        "raw_dividend",
        "P2",
        "query_dividend_data",
        ("code", "report_year", "divid_plan_announce_date"),
        "yearly",
        request_columns=(_REPORT_YEAR,),
        description="plans by announcement year (yearType report)",
    ),
    RawDataset(
        "raw_performance_express",
        "P2",
        "query_performance_express_report",
        ("code", "performance_exp_stat_date", "performance_exp_pub_date"),
        "yearly",
    ),
    RawDataset(
        "raw_forecast",
        "P2",
        "query_forecast_report",
        ("code", "profit_forcast_exp_stat_date", "profit_forcast_exp_pub_date"),
        "yearly",
    ),
    # P3 indexes
    RawDataset(
        "raw_index_daily",
        "P3",
        "query_history_k_data_plus",
        ("code", "trade_date"),
        "daily",
        fields=K_FIELDS_BY_KIND["index_daily"],
        description="daily bars of the indexes in apis.INDEX_CODES",
    ),
    *(
        RawDataset(
            f"raw_{name}_stocks", "P3", f"query_{name}_stocks", ("update_date", "code"), "on_change"
        )
        for name in ("hs300", "sz50", "zz500")
    ),
    # P4 industry
    RawDataset(
        "raw_stock_industry",
        "P4",
        "query_stock_industry",
        ("snapshot_date", "code"),
        "on_change",
        request_columns=(Field("day", "date", "snapshot_date"),),
        description="every stock's industry as answered for the sample day snapshot_date "
        "(update_date: BaoStock's last refresh of the list before it)",
    ),
    # P5 extended: period k-lines (52 or 12 rows a year per code: no partitioning) and macro.
    RawDataset(
        "raw_k_weekly",
        "P5",
        "query_history_k_data_plus",
        ("code", "trade_date"),
        "weekly",
        fields=K_FIELDS_BY_KIND["stock_period"],
    ),
    RawDataset(
        "raw_k_monthly",
        "P5",
        "query_history_k_data_plus",
        ("code", "trade_date"),
        "monthly",
        fields=K_FIELDS_BY_KIND["stock_period"],
    ),
    RawDataset("raw_deposit_rate", "P5", "query_deposit_rate_data", ("pub_date",), "monthly"),
    RawDataset("raw_loan_rate", "P5", "query_loan_rate_data", ("pub_date",), "monthly"),
    RawDataset(
        "raw_required_reserve_ratio",
        "P5",
        "query_required_reserve_ratio_data",
        ("pub_date", "effective_date"),
        "monthly",
    ),
    RawDataset(
        "raw_money_supply_month",
        "P5",
        "query_money_supply_data_month",
        ("stat_year", "stat_month"),
        "monthly",
    ),
    RawDataset(
        "raw_money_supply_year", "P5", "query_money_supply_data_year", ("stat_year",), "monthly"
    ),
)


def _raw_table(spec: RawDataset) -> Table:
    missing = set(spec.key) - {f.column for f in spec.all_fields}
    if missing:
        raise ValueError(f"{spec.table}: key {sorted(missing)} are not fields of {spec.api}")
    columns = [
        Column(f.column, SQL_TYPES[f.type], nullable=f.column not in spec.key)
        for f in spec.all_fields
    ]
    options: dict = {"info": {"raw_dataset": spec}}
    if spec.partition_column:
        options = _yearly_partitions(spec.partition_column)
        options["info"]["raw_dataset"] = spec
    return Table(
        spec.table,
        metadata,
        *columns,
        _fetched_at(),
        PrimaryKeyConstraint(*spec.key),
        *(Index(None, *cols, info={"why": why}) for cols, why in spec.indexes),
        comment=f"{spec.group} raw: BaoStock {spec.api}. {spec.description}".strip(),
        **options,
    )


RAW_TABLES: dict[str, Table] = {spec.table: _raw_table(spec) for spec in RAW_DATASETS}


# ---------------------------------------------------------------------------------------------
# Business layer.

stocks = Table(
    "stocks",
    metadata,
    Column("code", Text, primary_key=True),
    Column("name", Text),
    Column("security_type", SmallInteger, comment="1 stock, 2 index, 3 other, 4 bond, 5 ETF"),
    Column("list_date", Date),
    Column("delist_date", Date),
    Column("is_listed", Boolean),
    Column("industry", Text),
    Column("industry_classification", Text),
    _updated_at(),
    comment="one row per security, from stock_basic and stock_industry",
)

trade_calendar = Table(
    "trade_calendar",
    metadata,
    Column("cal_date", Date, nullable=False),
    Column("exchange", Text, nullable=False, comment="SSE or SZSE (BaoStock serves one calendar)"),
    Column("is_open", Boolean, nullable=False),
    Column("prev_trade_date", Date, comment="last open day strictly before cal_date"),
    _updated_at(),
    PrimaryKeyConstraint("cal_date", "exchange"),
)

_PRICE_COLUMNS = ("open", "high", "low", "close", "pre_close")

stock_daily = Table(
    "stock_daily",
    metadata,
    Column("code", Text, nullable=False),
    Column("trade_date", Date, nullable=False),
    *(Column(name, Double) for name in _PRICE_COLUMNS),
    Column("pct_chg", Double),
    Column("volume", BigInteger, comment="shares"),
    Column("amount", Double, comment="CNY"),
    Column("turnover", Double, comment="turnover rate, %"),
    Column("trade_status", Boolean, comment="false on suspension days"),
    Column("is_st", Boolean),
    Column("pe_ttm", Double),
    Column("pb_mrq", Double),
    Column("ps_ttm", Double),
    Column("pcf_ncf_ttm", Double),
    Column("back_adjust_factor", Double, comment="hfq factor: close * factor = back-adjusted"),
    _updated_at(),
    PrimaryKeyConstraint("code", "trade_date"),
    # Strategies read whole-market cross-sections of one day (seed 000 D4).
    Index("ix_stock_daily_trade_date_code", "trade_date", "code"),
    comment="unadjusted daily bars with valuation and the back-adjust factor",
    **_yearly_partitions("trade_date", hypertable=True),
)

_QUARTERLY_APIS = ("profit", "operation", "growth", "balance", "cash_flow", "dupont")
_QUARTERLY_HEAD = {"code", "pub_date", "stat_date"}


def _finance_columns() -> list[Column]:
    columns: list[Column] = []
    seen: set[str] = set()
    for name in _QUARTERLY_APIS:
        for f in APIS[f"query_{name}_data"].fields:
            if f.column in _QUARTERLY_HEAD:
                continue
            if f.column in seen:
                raise ValueError(f"finance column {f.column} appears in two quarterly APIs")
            seen.add(f.column)
            columns.append(Column(f.column, SQL_TYPES[f.type], comment=f"query_{name}_data"))
    return columns


finance = Table(
    "finance",
    metadata,
    Column("code", Text, nullable=False),
    Column("stat_date", Date, nullable=False, comment="statement period end"),
    Column("pub_date", Date, comment="earliest publication among the six quarterly APIs"),
    Column(
        "revised_on",
        Date,
        comment="day a re-fetch stored these values over different ones (NULL: as first "
        "fetched; the superseded values are in finance_revisions)",
    ),
    *_finance_columns(),
    _updated_at(),
    PrimaryKeyConstraint("code", "stat_date"),
    comment="one row per code and statement period, joined from the six quarterly APIs",
)

finance_revisions = Table(
    "finance_revisions",
    metadata,
    Column("code", Text, nullable=False),
    Column("stat_date", Date, nullable=False),
    Column("superseded_on", Date, nullable=False, comment="day a re-fetch replaced these values"),
    Column("pub_date", Date),
    Column("revised_on", Date, comment="as in finance: when these values replaced older ones"),
    *_finance_columns(),
    _updated_at(),
    PrimaryKeyConstraint("code", "stat_date", "superseded_on"),
    comment="earlier values of finance rows, kept for as-of reads before each revision",
)

corporate_actions = Table(
    "corporate_actions",
    metadata,
    Column("code", Text, nullable=False),
    Column("announce_date", Date, nullable=False, comment="plan announcement"),
    Column("record_date", Date),
    Column("ex_date", Date, comment="ex-right/ex-dividend day (dividOperateDate)"),
    Column("pay_date", Date),
    Column("listing_date", Date, comment="bonus shares start trading"),
    Column("cash_per_share", Double, comment="before tax, CNY"),
    Column("bonus_shares_per_share", Double),
    Column("reserve_to_stock_per_share", Double),
    _updated_at(),
    PrimaryKeyConstraint("code", "announce_date"),
)

index_daily = Table(
    "index_daily",
    metadata,
    Column("code", Text, nullable=False),
    Column("trade_date", Date, nullable=False),
    *(Column(name, Double) for name in _PRICE_COLUMNS),
    Column("pct_chg", Double),
    Column("volume", BigInteger),
    Column("amount", Double),
    _updated_at(),
    PrimaryKeyConstraint("code", "trade_date"),
    comment="a handful of indexes: small, so not partitioned",
)

index_constituents = Table(
    "index_constituents",
    metadata,
    Column("index_code", Text, nullable=False, comment="sh.000300, sh.000016 or sh.000905"),
    Column("code", Text, nullable=False),
    Column("valid_from", Date, nullable=False, comment="update date of the first snapshot with it"),
    Column(
        "valid_to",
        Date,
        comment="update date of the first later snapshot without it (exclusive); NULL: a member "
        "in the latest snapshot",
    ),
    _updated_at(),
    PrimaryKeyConstraint("index_code", "code", "valid_from"),
    comment="index membership history, built from BaoStock's dated snapshots",
)

industry_membership = Table(
    "industry_membership",
    metadata,
    Column("code", Text, nullable=False),
    Column(
        "valid_from", Date, nullable=False, comment="snapshot_date of the first snapshot with it"
    ),
    Column(
        "valid_to",
        Date,
        comment="snapshot_date of the first later snapshot with another industry or without the "
        "stock (exclusive); NULL: in the latest snapshot",
    ),
    Column("industry", Text),
    Column("classification", Text),
    _updated_at(),
    PrimaryKeyConstraint("code", "valid_from"),
    comment="CSRC industry history, built from BaoStock's dated snapshots",
)

performance_express = Table(
    "performance_express",
    metadata,
    Column("code", Text, nullable=False),
    Column("stat_date", Date, nullable=False),
    Column("pub_date", Date, nullable=False),
    Column("update_date", Date),
    Column("total_asset", Double),
    Column("net_asset", Double),
    Column("eps_chg_pct", Double),
    Column("roe_wa", Double),
    Column("eps_diluted", Double),
    Column("gr_yoy", Double, comment="revenue growth, year on year"),
    Column("op_yoy", Double, comment="operating profit growth, year on year"),
    _updated_at(),
    PrimaryKeyConstraint("code", "stat_date", "pub_date"),
    comment="performance express reports (业绩快报), from raw_performance_express",
)

earnings_forecast = Table(
    "earnings_forecast",
    metadata,
    Column("code", Text, nullable=False),
    Column("stat_date", Date, nullable=False),
    Column("pub_date", Date, nullable=False),
    Column("forecast_type", Text, comment="预增, 略增, 略减, 预减, 扭亏, 首亏, 续亏, ..."),
    Column("abstract", Text),
    Column("chg_pct_up", Double, comment="upper bound of the profit change, %"),
    Column("chg_pct_down", Double, comment="lower bound of the profit change, %"),
    _updated_at(),
    PrimaryKeyConstraint("code", "stat_date", "pub_date"),
    comment="earnings forecasts (业绩预告), from raw_forecast",
)

macro_series = Table(
    "macro_series",
    metadata,
    Column("series", Text, nullable=False, comment="e.g. loan_rate.loan_rate_above5_year"),
    Column("period_date", Date, nullable=False, comment="publication or period-end date"),
    Column("value", Double),
    _updated_at(),
    PrimaryKeyConstraint("series", "period_date"),
    comment="all macro series in long form: one row per series and date",
)

# ---------------------------------------------------------------------------------------------
# Indicators (reference-design.md), computed on back-adjusted (hfq) prices.

INDICATOR_COLUMNS: tuple[str, ...] = (
    "close_hfq",
    *(f"ma{n}" for n in (5, 10, 20, 60, 120, 250)),
    "macd_dif",
    "macd_dea",
    "macd_hist",
    "kdj_k",
    "kdj_d",
    "kdj_j",
    "rsi6",
    "rsi12",
    "rsi24",
    "boll_upper",
    "boll_mid",
    "boll_lower",
    "vol_ma5",
    "vol_ma10",
    "vol_ratio",
    "atr14",
    "wr14",
    "cci14",
    "bias20",
    "obv",
    "donchian_upper20",
    "donchian_lower20",
    "high_20",
    "high_60",
)

# The recursive indicators' state after each day (besides the indicators that are their own
# state): a range continues from the row before it, exactly (compute/indicators.py).
INDICATOR_STATE_COLUMNS: dict[str, str] = {
    "traded_bars": "traded bars of the code through this day (warm-up of every indicator)",
    "ema12": "EMA12 of close_hfq (MACD)",
    "ema26": "EMA26 of close_hfq (MACD)",
    **{
        f"avg_{side}{n}": f"Wilder average {side} of close_hfq's changes (RSI{n})"
        for n in (6, 12, 24)
        for side in ("gain", "loss")
    },
    "tr_avg14": "Wilder average true range, also during ATR14's warm-up",
}

technical_daily = Table(
    "technical_daily",
    metadata,
    Column("code", Text, nullable=False),
    Column("trade_date", Date, nullable=False),
    *(Column(name, Double) for name in INDICATOR_COLUMNS),
    *(
        Column(name, Integer if name == "traded_bars" else Double, comment=comment)
        for name, comment in INDICATOR_STATE_COLUMNS.items()
    ),
    _updated_at(),
    PrimaryKeyConstraint("code", "trade_date"),
    # Screens read one day's indicators for the whole market.
    Index("ix_technical_daily_trade_date_code", "trade_date", "code"),
    comment="technical indicators on back-adjusted prices",
    **_yearly_partitions("trade_date", hypertable=True),
)

# ---------------------------------------------------------------------------------------------
# Bookkeeping.

sync_state = Table(
    "sync_state",
    metadata,
    Column("dataset", Text, nullable=False, comment="raw table name"),
    Column("code", Text, nullable=False, comment="'' for datasets not fetched per code"),
    Column("last_fetched_date", Date, comment="end of the last window fetched successfully"),
    Column("last_success_at", DateTime(timezone=True)),
    Column("last_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_status", Text, nullable=False, comment="ok, empty or failed"),
    Column("last_error", Text),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("dataset", "code"),
    comment="where each dataset (and code) stands: the incremental sync starts after it",
)

fetch_log = Table(
    "fetch_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", Text, comment="Dagster run id, or the CLI invocation"),
    Column("dataset", Text, nullable=False),
    Column("window_start", Date),
    Column("window_end", Date),
    Column("codes_requested", Integer, nullable=False),
    Column("codes_failed", Integer, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("seconds", Double, nullable=False),
    Column("status", Text, nullable=False, comment="ok, partial or failed"),
    Column("failures", Text, comment="JSON object code -> reason, for the failed codes"),
    _fetched_at(),
    # Integrity checks ask "what was fetched for this dataset lately".
    Index("ix_fetch_log_dataset_fetched_at", "dataset", "fetched_at"),
    comment="one row per fetch of a dataset window: what was fetched, when, with which outcome",
)

index_definitions = Table(
    "index_definitions",
    metadata,
    Column("table_name", Text, nullable=False),
    Column("index_name", Text, nullable=False),
    Column("definition", Text, nullable=False, comment="pg_get_indexdef() at drop time"),
    Column("dropped_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("table_name", "index_name"),
    comment="indexes dropped for a bulk load and not yet rebuilt: the next run repairs them",
)


def partitioned_tables() -> Iterable[Table]:
    """Tables range-partitioned by year on their `info["partition_column"]`."""
    return (t for t in metadata.sorted_tables if t.info.get("partition_column"))


def table(name: str) -> Table:
    try:
        return metadata.tables[name]
    except KeyError:
        raise KeyError(f"no warehouse table {name!r}") from None
