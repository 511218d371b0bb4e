"""Initial schema: raw P0-P5 tables, business tables, technical_daily, bookkeeping.

stock_daily and technical_daily become TimescaleDB hypertables where the extension can
compress (warehouse/timescale.py); everywhere else they, raw_k_daily and raw_all_stock are
natively RANGE-partitioned by trade_date, one partition per year created by the writer.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 10:30:47.888102
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from stock_pipeline.warehouse.timescale import create_time_series_table

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "corporate_actions",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("announce_date", sa.Date(), nullable=False, comment="plan announcement"),
        sa.Column("record_date", sa.Date(), nullable=True),
        sa.Column(
            "ex_date",
            sa.Date(),
            nullable=True,
            comment="ex-right/ex-dividend day (dividOperateDate)",
        ),
        sa.Column("pay_date", sa.Date(), nullable=True),
        sa.Column("listing_date", sa.Date(), nullable=True, comment="bonus shares start trading"),
        sa.Column("cash_per_share", sa.Double(), nullable=True, comment="before tax, CNY"),
        sa.Column("bonus_shares_per_share", sa.Double(), nullable=True),
        sa.Column("reserve_to_stock_per_share", sa.Double(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "announce_date", name=op.f("pk_corporate_actions")),
    )
    op.create_table(
        "fetch_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "run_id", sa.Text(), nullable=True, comment="Dagster run id, or the CLI invocation"
        ),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("window_start", sa.Date(), nullable=True),
        sa.Column("window_end", sa.Date(), nullable=True),
        sa.Column("codes_requested", sa.Integer(), nullable=False),
        sa.Column("codes_failed", sa.Integer(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, comment="ok, partial or failed"),
        sa.Column(
            "failures",
            sa.Text(),
            nullable=True,
            comment="JSON object code -> reason, for the failed codes",
        ),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fetch_log")),
        comment="one row per fetch of a dataset window: what was fetched, when, with which outcome",
    )
    op.create_index(
        "ix_fetch_log_dataset_fetched_at", "fetch_log", ["dataset", "fetched_at"], unique=False
    )
    op.create_table(
        "finance",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("stat_date", sa.Date(), nullable=False, comment="statement period end"),
        sa.Column(
            "pub_date",
            sa.Date(),
            nullable=True,
            comment="earliest publication among the six quarterly APIs",
        ),
        sa.Column("roe_avg", sa.Double(), nullable=True, comment="query_profit_data"),
        sa.Column("np_margin", sa.Double(), nullable=True, comment="query_profit_data"),
        sa.Column("gp_margin", sa.Double(), nullable=True, comment="query_profit_data"),
        sa.Column("net_profit", sa.Double(), nullable=True, comment="query_profit_data"),
        sa.Column("eps_ttm", sa.Double(), nullable=True, comment="query_profit_data"),
        sa.Column("mb_revenue", sa.Double(), nullable=True, comment="query_profit_data"),
        sa.Column("total_share", sa.Double(), nullable=True, comment="query_profit_data"),
        sa.Column("liqa_share", sa.Double(), nullable=True, comment="query_profit_data"),
        sa.Column("nr_turn_ratio", sa.Double(), nullable=True, comment="query_operation_data"),
        sa.Column("nr_turn_days", sa.Double(), nullable=True, comment="query_operation_data"),
        sa.Column("inv_turn_ratio", sa.Double(), nullable=True, comment="query_operation_data"),
        sa.Column("inv_turn_days", sa.Double(), nullable=True, comment="query_operation_data"),
        sa.Column("ca_turn_ratio", sa.Double(), nullable=True, comment="query_operation_data"),
        sa.Column("asset_turn_ratio", sa.Double(), nullable=True, comment="query_operation_data"),
        sa.Column("yoy_equity", sa.Double(), nullable=True, comment="query_growth_data"),
        sa.Column("yoy_asset", sa.Double(), nullable=True, comment="query_growth_data"),
        sa.Column("yoy_ni", sa.Double(), nullable=True, comment="query_growth_data"),
        sa.Column("yoy_eps_basic", sa.Double(), nullable=True, comment="query_growth_data"),
        sa.Column("yoy_pni", sa.Double(), nullable=True, comment="query_growth_data"),
        sa.Column("current_ratio", sa.Double(), nullable=True, comment="query_balance_data"),
        sa.Column("quick_ratio", sa.Double(), nullable=True, comment="query_balance_data"),
        sa.Column("cash_ratio", sa.Double(), nullable=True, comment="query_balance_data"),
        sa.Column("yoy_liability", sa.Double(), nullable=True, comment="query_balance_data"),
        sa.Column("liability_to_asset", sa.Double(), nullable=True, comment="query_balance_data"),
        sa.Column("asset_to_equity", sa.Double(), nullable=True, comment="query_balance_data"),
        sa.Column("ca_to_asset", sa.Double(), nullable=True, comment="query_cash_flow_data"),
        sa.Column("nca_to_asset", sa.Double(), nullable=True, comment="query_cash_flow_data"),
        sa.Column(
            "tangible_asset_to_asset", sa.Double(), nullable=True, comment="query_cash_flow_data"
        ),
        sa.Column("ebit_to_interest", sa.Double(), nullable=True, comment="query_cash_flow_data"),
        sa.Column("cfo_to_or", sa.Double(), nullable=True, comment="query_cash_flow_data"),
        sa.Column("cfo_to_np", sa.Double(), nullable=True, comment="query_cash_flow_data"),
        sa.Column("cfo_to_gr", sa.Double(), nullable=True, comment="query_cash_flow_data"),
        sa.Column("dupont_roe", sa.Double(), nullable=True, comment="query_dupont_data"),
        sa.Column(
            "dupont_asset_sto_equity", sa.Double(), nullable=True, comment="query_dupont_data"
        ),
        sa.Column("dupont_asset_turn", sa.Double(), nullable=True, comment="query_dupont_data"),
        sa.Column("dupont_pnitoni", sa.Double(), nullable=True, comment="query_dupont_data"),
        sa.Column("dupont_nitogr", sa.Double(), nullable=True, comment="query_dupont_data"),
        sa.Column("dupont_tax_burden", sa.Double(), nullable=True, comment="query_dupont_data"),
        sa.Column("dupont_intburden", sa.Double(), nullable=True, comment="query_dupont_data"),
        sa.Column("dupont_ebittogr", sa.Double(), nullable=True, comment="query_dupont_data"),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "stat_date", name=op.f("pk_finance")),
        comment="one row per code and statement period, joined from the six quarterly APIs",
    )
    op.create_table(
        "index_constituents",
        sa.Column(
            "index_code", sa.Text(), nullable=False, comment="sh.000300, sh.000016 or sh.000905"
        ),
        sa.Column(
            "update_date", sa.Date(), nullable=False, comment="snapshot date of the member list"
        ),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "index_code", "update_date", "code", name=op.f("pk_index_constituents")
        ),
    )
    op.create_table(
        "index_daily",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("open", sa.Double(), nullable=True),
        sa.Column("high", sa.Double(), nullable=True),
        sa.Column("low", sa.Double(), nullable=True),
        sa.Column("close", sa.Double(), nullable=True),
        sa.Column("pre_close", sa.Double(), nullable=True),
        sa.Column("pct_chg", sa.Double(), nullable=True),
        sa.Column("volume", sa.BigInteger(), nullable=True),
        sa.Column("amount", sa.Double(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "trade_date", name=op.f("pk_index_daily")),
        comment="a handful of indexes: small, so not partitioned",
    )
    op.create_table(
        "index_definitions",
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("index_name", sa.Text(), nullable=False),
        sa.Column(
            "definition", sa.Text(), nullable=False, comment="pg_get_indexdef() at drop time"
        ),
        sa.Column(
            "dropped_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("table_name", "index_name", name=op.f("pk_index_definitions")),
        comment="indexes dropped for a bulk load and not yet rebuilt: the next run repairs them",
    )
    op.create_table(
        "industry_membership",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("update_date", sa.Date(), nullable=False),
        sa.Column("industry", sa.Text(), nullable=True),
        sa.Column("classification", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "update_date", name=op.f("pk_industry_membership")),
    )
    op.create_table(
        "macro_series",
        sa.Column(
            "series", sa.Text(), nullable=False, comment="e.g. loan_rate.loan_rate_above5_year"
        ),
        sa.Column(
            "period_date", sa.Date(), nullable=False, comment="publication or period-end date"
        ),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("series", "period_date", name=op.f("pk_macro_series")),
        comment="all macro series in long form: one row per series and date",
    )
    op.create_table(
        "raw_adjust_factor",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("divid_operate_date", sa.Date(), nullable=False),
        sa.Column("fore_adjust_factor", sa.Double(), nullable=True),
        sa.Column("back_adjust_factor", sa.Double(), nullable=True),
        sa.Column("adjust_factor", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "divid_operate_date", name=op.f("pk_raw_adjust_factor")),
        comment="P0 raw: BaoStock query_adjust_factor.",
    )
    op.create_table(
        "raw_all_stock",
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("trade_status", sa.Boolean(), nullable=True),
        sa.Column("code_name", sa.Text(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("trade_date", "code", name=op.f("pk_raw_all_stock")),
        comment="P0 raw: BaoStock query_all_stock.",
        postgresql_partition_by="RANGE (trade_date)",
    )
    op.create_table(
        "raw_balance",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("pub_date", sa.Date(), nullable=True),
        sa.Column("stat_date", sa.Date(), nullable=False),
        sa.Column("current_ratio", sa.Double(), nullable=True),
        sa.Column("quick_ratio", sa.Double(), nullable=True),
        sa.Column("cash_ratio", sa.Double(), nullable=True),
        sa.Column("yoy_liability", sa.Double(), nullable=True),
        sa.Column("liability_to_asset", sa.Double(), nullable=True),
        sa.Column("asset_to_equity", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "stat_date", name=op.f("pk_raw_balance")),
        comment="P1 raw: BaoStock query_balance_data.",
    )
    op.create_table(
        "raw_cash_flow",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("pub_date", sa.Date(), nullable=True),
        sa.Column("stat_date", sa.Date(), nullable=False),
        sa.Column("ca_to_asset", sa.Double(), nullable=True),
        sa.Column("nca_to_asset", sa.Double(), nullable=True),
        sa.Column("tangible_asset_to_asset", sa.Double(), nullable=True),
        sa.Column("ebit_to_interest", sa.Double(), nullable=True),
        sa.Column("cfo_to_or", sa.Double(), nullable=True),
        sa.Column("cfo_to_np", sa.Double(), nullable=True),
        sa.Column("cfo_to_gr", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "stat_date", name=op.f("pk_raw_cash_flow")),
        comment="P1 raw: BaoStock query_cash_flow_data.",
    )
    op.create_table(
        "raw_deposit_rate",
        sa.Column("pub_date", sa.Date(), nullable=False),
        sa.Column("demand_deposit_rate", sa.Double(), nullable=True),
        sa.Column("fixed_deposit_rate3_month", sa.Double(), nullable=True),
        sa.Column("fixed_deposit_rate6_month", sa.Double(), nullable=True),
        sa.Column("fixed_deposit_rate1_year", sa.Double(), nullable=True),
        sa.Column("fixed_deposit_rate2_year", sa.Double(), nullable=True),
        sa.Column("fixed_deposit_rate3_year", sa.Double(), nullable=True),
        sa.Column("fixed_deposit_rate5_year", sa.Double(), nullable=True),
        sa.Column("installment_fixed_deposit_rate1_year", sa.Double(), nullable=True),
        sa.Column("installment_fixed_deposit_rate3_year", sa.Double(), nullable=True),
        sa.Column("installment_fixed_deposit_rate5_year", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("pub_date", name=op.f("pk_raw_deposit_rate")),
        comment="P5 raw: BaoStock query_deposit_rate_data.",
    )
    op.create_table(
        "raw_dividend",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("divid_pre_notice_date", sa.Date(), nullable=True),
        sa.Column("divid_agm_pum_date", sa.Date(), nullable=True),
        sa.Column("divid_plan_announce_date", sa.Date(), nullable=False),
        sa.Column("divid_plan_date", sa.Date(), nullable=True),
        sa.Column("divid_regist_date", sa.Date(), nullable=True),
        sa.Column("divid_operate_date", sa.Date(), nullable=True),
        sa.Column("divid_pay_date", sa.Date(), nullable=True),
        sa.Column("divid_stock_market_date", sa.Date(), nullable=True),
        sa.Column("divid_cash_ps_before_tax", sa.Double(), nullable=True),
        sa.Column("divid_cash_ps_after_tax", sa.Text(), nullable=True),
        sa.Column("divid_stocks_ps", sa.Double(), nullable=True),
        sa.Column("divid_cash_stock", sa.Text(), nullable=True),
        sa.Column("divid_reserve_to_stock_ps", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "divid_plan_announce_date", name=op.f("pk_raw_dividend")),
        comment="P2 raw: BaoStock query_dividend_data.",
    )
    op.create_table(
        "raw_dupont",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("pub_date", sa.Date(), nullable=True),
        sa.Column("stat_date", sa.Date(), nullable=False),
        sa.Column("dupont_roe", sa.Double(), nullable=True),
        sa.Column("dupont_asset_sto_equity", sa.Double(), nullable=True),
        sa.Column("dupont_asset_turn", sa.Double(), nullable=True),
        sa.Column("dupont_pnitoni", sa.Double(), nullable=True),
        sa.Column("dupont_nitogr", sa.Double(), nullable=True),
        sa.Column("dupont_tax_burden", sa.Double(), nullable=True),
        sa.Column("dupont_intburden", sa.Double(), nullable=True),
        sa.Column("dupont_ebittogr", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "stat_date", name=op.f("pk_raw_dupont")),
        comment="P1 raw: BaoStock query_dupont_data.",
    )
    op.create_table(
        "raw_forecast",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("profit_forcast_exp_pub_date", sa.Date(), nullable=False),
        sa.Column("profit_forcast_exp_stat_date", sa.Date(), nullable=False),
        sa.Column("profit_forcast_type", sa.Text(), nullable=True),
        sa.Column("profit_forcast_abstract", sa.Text(), nullable=True),
        sa.Column("profit_forcast_chg_pct_up", sa.Double(), nullable=True),
        sa.Column("profit_forcast_chg_pct_dwn", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "code",
            "profit_forcast_exp_stat_date",
            "profit_forcast_exp_pub_date",
            name=op.f("pk_raw_forecast"),
        ),
        comment="P2 raw: BaoStock query_forecast_report.",
    )
    op.create_table(
        "raw_growth",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("pub_date", sa.Date(), nullable=True),
        sa.Column("stat_date", sa.Date(), nullable=False),
        sa.Column("yoy_equity", sa.Double(), nullable=True),
        sa.Column("yoy_asset", sa.Double(), nullable=True),
        sa.Column("yoy_ni", sa.Double(), nullable=True),
        sa.Column("yoy_eps_basic", sa.Double(), nullable=True),
        sa.Column("yoy_pni", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "stat_date", name=op.f("pk_raw_growth")),
        comment="P1 raw: BaoStock query_growth_data.",
    )
    op.create_table(
        "raw_hs300_stocks",
        sa.Column("update_date", sa.Date(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_name", sa.Text(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("update_date", "code", name=op.f("pk_raw_hs300_stocks")),
        comment="P3 raw: BaoStock query_hs300_stocks.",
    )
    op.create_table(
        "raw_index_daily",
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("open", sa.Double(), nullable=True),
        sa.Column("high", sa.Double(), nullable=True),
        sa.Column("low", sa.Double(), nullable=True),
        sa.Column("close", sa.Double(), nullable=True),
        sa.Column("pre_close", sa.Double(), nullable=True),
        sa.Column("volume", sa.BigInteger(), nullable=True),
        sa.Column("amount", sa.Double(), nullable=True),
        sa.Column("pct_chg", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "trade_date", name=op.f("pk_raw_index_daily")),
        comment="P3 raw: BaoStock query_history_k_data_plus. daily bars of the indexes in apis.INDEX_CODES",
    )
    op.create_table(
        "raw_k_daily",
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("open", sa.Double(), nullable=True),
        sa.Column("high", sa.Double(), nullable=True),
        sa.Column("low", sa.Double(), nullable=True),
        sa.Column("close", sa.Double(), nullable=True),
        sa.Column("pre_close", sa.Double(), nullable=True),
        sa.Column("volume", sa.BigInteger(), nullable=True),
        sa.Column("amount", sa.Double(), nullable=True),
        sa.Column("adjust_flag", sa.BigInteger(), nullable=True),
        sa.Column("turnover", sa.Double(), nullable=True),
        sa.Column("trade_status", sa.Boolean(), nullable=True),
        sa.Column("pct_chg", sa.Double(), nullable=True),
        sa.Column("pe_ttm", sa.Double(), nullable=True),
        sa.Column("pb_mrq", sa.Double(), nullable=True),
        sa.Column("ps_ttm", sa.Double(), nullable=True),
        sa.Column("pcf_ncf_ttm", sa.Double(), nullable=True),
        sa.Column("is_st", sa.Boolean(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "trade_date", name=op.f("pk_raw_k_daily")),
        comment="P0 raw: BaoStock query_history_k_data_plus. unadjusted daily bars of stocks (adjustflag 3), all 18 fields",
        postgresql_partition_by="RANGE (trade_date)",
    )
    op.create_index(
        op.f("ix_raw_k_daily_trade_date_code"), "raw_k_daily", ["trade_date", "code"], unique=False
    )
    op.create_table(
        "raw_k_monthly",
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("open", sa.Double(), nullable=True),
        sa.Column("high", sa.Double(), nullable=True),
        sa.Column("low", sa.Double(), nullable=True),
        sa.Column("close", sa.Double(), nullable=True),
        sa.Column("volume", sa.BigInteger(), nullable=True),
        sa.Column("amount", sa.Double(), nullable=True),
        sa.Column("adjust_flag", sa.BigInteger(), nullable=True),
        sa.Column("turnover", sa.Double(), nullable=True),
        sa.Column("pct_chg", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "trade_date", name=op.f("pk_raw_k_monthly")),
        comment="P5 raw: BaoStock query_history_k_data_plus.",
    )
    op.create_table(
        "raw_k_weekly",
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("open", sa.Double(), nullable=True),
        sa.Column("high", sa.Double(), nullable=True),
        sa.Column("low", sa.Double(), nullable=True),
        sa.Column("close", sa.Double(), nullable=True),
        sa.Column("volume", sa.BigInteger(), nullable=True),
        sa.Column("amount", sa.Double(), nullable=True),
        sa.Column("adjust_flag", sa.BigInteger(), nullable=True),
        sa.Column("turnover", sa.Double(), nullable=True),
        sa.Column("pct_chg", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "trade_date", name=op.f("pk_raw_k_weekly")),
        comment="P5 raw: BaoStock query_history_k_data_plus.",
    )
    op.create_table(
        "raw_loan_rate",
        sa.Column("pub_date", sa.Date(), nullable=False),
        sa.Column("loan_rate6_month", sa.Double(), nullable=True),
        sa.Column("loan_rate6_month_to1_year", sa.Double(), nullable=True),
        sa.Column("loan_rate1_year_to3_year", sa.Double(), nullable=True),
        sa.Column("loan_rate3_year_to5_year", sa.Double(), nullable=True),
        sa.Column("loan_rate_above5_year", sa.Double(), nullable=True),
        sa.Column("mortgate_rate_below5_year", sa.Double(), nullable=True),
        sa.Column("mortgate_rate_above5_year", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("pub_date", name=op.f("pk_raw_loan_rate")),
        comment="P5 raw: BaoStock query_loan_rate_data.",
    )
    op.create_table(
        "raw_money_supply_month",
        sa.Column("stat_year", sa.BigInteger(), nullable=False),
        sa.Column("stat_month", sa.BigInteger(), nullable=False),
        sa.Column("m0_month", sa.Double(), nullable=True),
        sa.Column("m0_yoy", sa.Double(), nullable=True),
        sa.Column("m0_chain_relative", sa.Double(), nullable=True),
        sa.Column("m1_month", sa.Double(), nullable=True),
        sa.Column("m1_yoy", sa.Double(), nullable=True),
        sa.Column("m1_chain_relative", sa.Double(), nullable=True),
        sa.Column("m2_month", sa.Double(), nullable=True),
        sa.Column("m2_yoy", sa.Double(), nullable=True),
        sa.Column("m2_chain_relative", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("stat_year", "stat_month", name=op.f("pk_raw_money_supply_month")),
        comment="P5 raw: BaoStock query_money_supply_data_month.",
    )
    op.create_table(
        "raw_money_supply_year",
        sa.Column("stat_year", sa.BigInteger(), nullable=False),
        sa.Column("m0_year", sa.Double(), nullable=True),
        sa.Column("m0_year_yoy", sa.Double(), nullable=True),
        sa.Column("m1_year", sa.Double(), nullable=True),
        sa.Column("m1_year_yoy", sa.Double(), nullable=True),
        sa.Column("m2_year", sa.Double(), nullable=True),
        sa.Column("m2_year_yoy", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("stat_year", name=op.f("pk_raw_money_supply_year")),
        comment="P5 raw: BaoStock query_money_supply_data_year.",
    )
    op.create_table(
        "raw_operation",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("pub_date", sa.Date(), nullable=True),
        sa.Column("stat_date", sa.Date(), nullable=False),
        sa.Column("nr_turn_ratio", sa.Double(), nullable=True),
        sa.Column("nr_turn_days", sa.Double(), nullable=True),
        sa.Column("inv_turn_ratio", sa.Double(), nullable=True),
        sa.Column("inv_turn_days", sa.Double(), nullable=True),
        sa.Column("ca_turn_ratio", sa.Double(), nullable=True),
        sa.Column("asset_turn_ratio", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "stat_date", name=op.f("pk_raw_operation")),
        comment="P1 raw: BaoStock query_operation_data.",
    )
    op.create_table(
        "raw_performance_express",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("performance_exp_pub_date", sa.Date(), nullable=False),
        sa.Column("performance_exp_stat_date", sa.Date(), nullable=False),
        sa.Column("performance_exp_update_date", sa.Date(), nullable=True),
        sa.Column("performance_express_total_asset", sa.Double(), nullable=True),
        sa.Column("performance_express_net_asset", sa.Double(), nullable=True),
        sa.Column("performance_express_eps_chg_pct", sa.Double(), nullable=True),
        sa.Column("performance_express_roe_wa", sa.Double(), nullable=True),
        sa.Column("performance_express_eps_diluted", sa.Double(), nullable=True),
        sa.Column("performance_express_gr_yoy", sa.Double(), nullable=True),
        sa.Column("performance_express_op_yoy", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "code",
            "performance_exp_stat_date",
            "performance_exp_pub_date",
            name=op.f("pk_raw_performance_express"),
        ),
        comment="P2 raw: BaoStock query_performance_express_report.",
    )
    op.create_table(
        "raw_profit",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("pub_date", sa.Date(), nullable=True),
        sa.Column("stat_date", sa.Date(), nullable=False),
        sa.Column("roe_avg", sa.Double(), nullable=True),
        sa.Column("np_margin", sa.Double(), nullable=True),
        sa.Column("gp_margin", sa.Double(), nullable=True),
        sa.Column("net_profit", sa.Double(), nullable=True),
        sa.Column("eps_ttm", sa.Double(), nullable=True),
        sa.Column("mb_revenue", sa.Double(), nullable=True),
        sa.Column("total_share", sa.Double(), nullable=True),
        sa.Column("liqa_share", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "stat_date", name=op.f("pk_raw_profit")),
        comment="P1 raw: BaoStock query_profit_data.",
    )
    op.create_table(
        "raw_required_reserve_ratio",
        sa.Column("pub_date", sa.Date(), nullable=False),
        sa.Column("effective_date", sa.Date(), nullable=False),
        sa.Column("big_institutions_ratio_pre", sa.Double(), nullable=True),
        sa.Column("big_institutions_ratio_after", sa.Double(), nullable=True),
        sa.Column("medium_institutions_ratio_pre", sa.Double(), nullable=True),
        sa.Column("medium_institutions_ratio_after", sa.Double(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "pub_date", "effective_date", name=op.f("pk_raw_required_reserve_ratio")
        ),
        comment="P5 raw: BaoStock query_required_reserve_ratio_data.",
    )
    op.create_table(
        "raw_stock_basic",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_name", sa.Text(), nullable=True),
        sa.Column("ipo_date", sa.Date(), nullable=True),
        sa.Column("out_date", sa.Date(), nullable=True),
        sa.Column("security_type", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.Boolean(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_raw_stock_basic")),
        comment="P0 raw: BaoStock query_stock_basic.",
    )
    op.create_table(
        "raw_stock_industry",
        sa.Column("update_date", sa.Date(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_name", sa.Text(), nullable=True),
        sa.Column("industry", sa.Text(), nullable=True),
        sa.Column("industry_classification", sa.Text(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("update_date", "code", name=op.f("pk_raw_stock_industry")),
        comment="P4 raw: BaoStock query_stock_industry.",
    )
    op.create_table(
        "raw_sz50_stocks",
        sa.Column("update_date", sa.Date(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_name", sa.Text(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("update_date", "code", name=op.f("pk_raw_sz50_stocks")),
        comment="P3 raw: BaoStock query_sz50_stocks.",
    )
    op.create_table(
        "raw_trade_dates",
        sa.Column("calendar_date", sa.Date(), nullable=False),
        sa.Column("is_trading_day", sa.Boolean(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("calendar_date", name=op.f("pk_raw_trade_dates")),
        comment="P0 raw: BaoStock query_trade_dates.",
    )
    op.create_table(
        "raw_zz500_stocks",
        sa.Column("update_date", sa.Date(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_name", sa.Text(), nullable=True),
        sa.Column(
            "fetched_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("update_date", "code", name=op.f("pk_raw_zz500_stocks")),
        comment="P3 raw: BaoStock query_zz500_stocks.",
    )
    create_time_series_table(
        op,
        "stock_daily",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("open", sa.Double(), nullable=True),
        sa.Column("high", sa.Double(), nullable=True),
        sa.Column("low", sa.Double(), nullable=True),
        sa.Column("close", sa.Double(), nullable=True),
        sa.Column("pre_close", sa.Double(), nullable=True),
        sa.Column("pct_chg", sa.Double(), nullable=True),
        sa.Column("volume", sa.BigInteger(), nullable=True, comment="shares"),
        sa.Column("amount", sa.Double(), nullable=True, comment="CNY"),
        sa.Column("turnover", sa.Double(), nullable=True, comment="turnover rate, %"),
        sa.Column("trade_status", sa.Boolean(), nullable=True, comment="false on suspension days"),
        sa.Column("is_st", sa.Boolean(), nullable=True),
        sa.Column("pe_ttm", sa.Double(), nullable=True),
        sa.Column("pb_mrq", sa.Double(), nullable=True),
        sa.Column("ps_ttm", sa.Double(), nullable=True),
        sa.Column("pcf_ncf_ttm", sa.Double(), nullable=True),
        sa.Column(
            "back_adjust_factor",
            sa.Double(),
            nullable=True,
            comment="hfq factor: close * factor = back-adjusted",
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "trade_date", name=op.f("pk_stock_daily")),
        comment="unadjusted daily bars with valuation and the back-adjust factor",
        postgresql_partition_by="RANGE (trade_date)",
    )
    op.create_index(
        "ix_stock_daily_trade_date_code", "stock_daily", ["trade_date", "code"], unique=False
    )
    op.create_table(
        "stocks",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column(
            "security_type",
            sa.SmallInteger(),
            nullable=True,
            comment="1 stock, 2 index, 3 other, 4 bond, 5 ETF",
        ),
        sa.Column("list_date", sa.Date(), nullable=True),
        sa.Column("delist_date", sa.Date(), nullable=True),
        sa.Column("is_listed", sa.Boolean(), nullable=True),
        sa.Column("industry", sa.Text(), nullable=True),
        sa.Column("industry_classification", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_stocks")),
        comment="one row per security, from stock_basic and stock_industry",
    )
    op.create_table(
        "sync_state",
        sa.Column("dataset", sa.Text(), nullable=False, comment="raw table name"),
        sa.Column(
            "code", sa.Text(), nullable=False, comment="'' for datasets not fetched per code"
        ),
        sa.Column(
            "last_fetched_date",
            sa.Date(),
            nullable=True,
            comment="end of the last window fetched successfully",
        ),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status", sa.Text(), nullable=False, comment="ok, empty or failed"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("dataset", "code", name=op.f("pk_sync_state")),
        comment="where each dataset (and code) stands: the incremental sync starts after it",
    )
    create_time_series_table(
        op,
        "technical_daily",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("trade_date", sa.Date(), nullable=False),
        sa.Column("close_hfq", sa.Double(), nullable=True),
        sa.Column("ma5", sa.Double(), nullable=True),
        sa.Column("ma10", sa.Double(), nullable=True),
        sa.Column("ma20", sa.Double(), nullable=True),
        sa.Column("ma60", sa.Double(), nullable=True),
        sa.Column("ma120", sa.Double(), nullable=True),
        sa.Column("ma250", sa.Double(), nullable=True),
        sa.Column("macd_dif", sa.Double(), nullable=True),
        sa.Column("macd_dea", sa.Double(), nullable=True),
        sa.Column("macd_hist", sa.Double(), nullable=True),
        sa.Column("kdj_k", sa.Double(), nullable=True),
        sa.Column("kdj_d", sa.Double(), nullable=True),
        sa.Column("kdj_j", sa.Double(), nullable=True),
        sa.Column("rsi6", sa.Double(), nullable=True),
        sa.Column("rsi12", sa.Double(), nullable=True),
        sa.Column("rsi24", sa.Double(), nullable=True),
        sa.Column("boll_upper", sa.Double(), nullable=True),
        sa.Column("boll_mid", sa.Double(), nullable=True),
        sa.Column("boll_lower", sa.Double(), nullable=True),
        sa.Column("vol_ma5", sa.Double(), nullable=True),
        sa.Column("vol_ma10", sa.Double(), nullable=True),
        sa.Column("vol_ratio", sa.Double(), nullable=True),
        sa.Column("atr14", sa.Double(), nullable=True),
        sa.Column("wr14", sa.Double(), nullable=True),
        sa.Column("cci14", sa.Double(), nullable=True),
        sa.Column("bias20", sa.Double(), nullable=True),
        sa.Column("obv", sa.Double(), nullable=True),
        sa.Column("donchian_upper20", sa.Double(), nullable=True),
        sa.Column("donchian_lower20", sa.Double(), nullable=True),
        sa.Column("high_20", sa.Double(), nullable=True),
        sa.Column("high_60", sa.Double(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "trade_date", name=op.f("pk_technical_daily")),
        comment="technical indicators on back-adjusted prices",
        postgresql_partition_by="RANGE (trade_date)",
    )
    op.create_index(
        "ix_technical_daily_trade_date_code",
        "technical_daily",
        ["trade_date", "code"],
        unique=False,
    )
    op.create_table(
        "trade_calendar",
        sa.Column("cal_date", sa.Date(), nullable=False),
        sa.Column(
            "exchange",
            sa.Text(),
            nullable=False,
            comment="SSE or SZSE (BaoStock serves one calendar)",
        ),
        sa.Column("is_open", sa.Boolean(), nullable=False),
        sa.Column(
            "prev_trade_date",
            sa.Date(),
            nullable=True,
            comment="last open day strictly before cal_date",
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("cal_date", "exchange", name=op.f("pk_trade_calendar")),
    )


def downgrade() -> None:
    op.drop_table("trade_calendar")
    op.drop_index("ix_technical_daily_trade_date_code", table_name="technical_daily")
    op.drop_table("technical_daily")
    op.drop_table("sync_state")
    op.drop_table("stocks")
    op.drop_index("ix_stock_daily_trade_date_code", table_name="stock_daily")
    op.drop_table("stock_daily")
    op.drop_table("raw_zz500_stocks")
    op.drop_table("raw_trade_dates")
    op.drop_table("raw_sz50_stocks")
    op.drop_table("raw_stock_industry")
    op.drop_table("raw_stock_basic")
    op.drop_table("raw_required_reserve_ratio")
    op.drop_table("raw_profit")
    op.drop_table("raw_performance_express")
    op.drop_table("raw_operation")
    op.drop_table("raw_money_supply_year")
    op.drop_table("raw_money_supply_month")
    op.drop_table("raw_loan_rate")
    op.drop_table("raw_k_weekly")
    op.drop_table("raw_k_monthly")
    op.drop_index(op.f("ix_raw_k_daily_trade_date_code"), table_name="raw_k_daily")
    op.drop_table("raw_k_daily")
    op.drop_table("raw_index_daily")
    op.drop_table("raw_hs300_stocks")
    op.drop_table("raw_growth")
    op.drop_table("raw_forecast")
    op.drop_table("raw_dupont")
    op.drop_table("raw_dividend")
    op.drop_table("raw_deposit_rate")
    op.drop_table("raw_cash_flow")
    op.drop_table("raw_balance")
    op.drop_table("raw_all_stock")
    op.drop_table("raw_adjust_factor")
    op.drop_table("macro_series")
    op.drop_table("industry_membership")
    op.drop_table("index_definitions")
    op.drop_table("index_daily")
    op.drop_table("index_constituents")
    op.drop_table("finance")
    op.drop_index("ix_fetch_log_dataset_fetched_at", table_name="fetch_log")
    op.drop_table("fetch_log")
    op.drop_table("corporate_actions")
