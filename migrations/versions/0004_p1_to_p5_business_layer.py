"""The P1-P5 business layer: finance keeps revisions (finance.revised_on, finance_revisions),
express and forecast report tables, index constituents and industries as histories (valid_from,
valid_to instead of one snapshot date), raw_dividend keyed by its announcement year.

The three reshaped tables had no writer before this revision; they are recreated, and the
migration refuses to drop one that holds rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 13:43:39.654114
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


RESHAPED = ("index_constituents", "industry_membership", "raw_dividend", "raw_stock_industry")


def _refuse_if_filled(tables: Sequence[str]) -> None:
    bind = op.get_bind()
    for name in tables:
        if bind.execute(sa.text(f'SELECT EXISTS (SELECT 1 FROM "{name}")')).scalar():
            raise RuntimeError(
                f"{name} holds rows, and revision 0004 recreates it with another key: export "
                f"them (pg_dump -t {name}), empty it, then upgrade again"
            )


def _updated_at() -> sa.Column:
    return sa.Column(
        "updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    _refuse_if_filled(RESHAPED)
    for name in RESHAPED:
        op.drop_table(name)
    op.create_table(
        "index_constituents",
        sa.Column(
            "index_code", sa.Text(), nullable=False, comment="sh.000300, sh.000016 or sh.000905"
        ),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column(
            "valid_from",
            sa.Date(),
            nullable=False,
            comment="update date of the first snapshot with it",
        ),
        sa.Column(
            "valid_to",
            sa.Date(),
            nullable=True,
            comment="update date of the first later snapshot without it (exclusive); NULL: a member in the latest snapshot",
        ),
        _updated_at(),
        sa.PrimaryKeyConstraint(
            "index_code", "code", "valid_from", name=op.f("pk_index_constituents")
        ),
        comment="index membership history, built from BaoStock's dated snapshots",
    )
    op.create_table(
        "industry_membership",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column(
            "valid_from",
            sa.Date(),
            nullable=False,
            comment="snapshot_date of the first snapshot with it",
        ),
        sa.Column(
            "valid_to",
            sa.Date(),
            nullable=True,
            comment="snapshot_date of the first later snapshot with another industry or without the stock (exclusive); NULL: in the latest snapshot",
        ),
        sa.Column("industry", sa.Text(), nullable=True),
        sa.Column("classification", sa.Text(), nullable=True),
        _updated_at(),
        sa.PrimaryKeyConstraint("code", "valid_from", name=op.f("pk_industry_membership")),
        comment="CSRC industry history, built from BaoStock's dated snapshots",
    )
    op.create_table(
        "raw_stock_industry",
        sa.Column("snapshot_date", sa.Date(), nullable=False),
        sa.Column("update_date", sa.Date(), nullable=True),
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
        sa.PrimaryKeyConstraint("snapshot_date", "code", name=op.f("pk_raw_stock_industry")),
        comment="P4 raw: BaoStock query_stock_industry. every stock's industry as answered for the sample day snapshot_date (update_date: BaoStock's last refresh of the list before it)",
    )
    op.create_table(
        "raw_dividend",
        sa.Column("report_year", sa.BigInteger(), nullable=False),
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
        sa.PrimaryKeyConstraint(
            "code", "report_year", "divid_plan_announce_date", name=op.f("pk_raw_dividend")
        ),
        comment="P2 raw: BaoStock query_dividend_data. plans by announcement year (yearType report)",
    )

    op.create_table(
        "earnings_forecast",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("stat_date", sa.Date(), nullable=False),
        sa.Column("pub_date", sa.Date(), nullable=False),
        sa.Column(
            "forecast_type",
            sa.Text(),
            nullable=True,
            comment="预增, 略增, 略减, 预减, 扭亏, 首亏, 续亏, ...",
        ),
        sa.Column("abstract", sa.Text(), nullable=True),
        sa.Column(
            "chg_pct_up", sa.Double(), nullable=True, comment="upper bound of the profit change, %"
        ),
        sa.Column(
            "chg_pct_down",
            sa.Double(),
            nullable=True,
            comment="lower bound of the profit change, %",
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("code", "stat_date", "pub_date", name=op.f("pk_earnings_forecast")),
        comment="earnings forecasts (业绩预告), from raw_forecast",
    )
    op.create_table(
        "finance_revisions",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("stat_date", sa.Date(), nullable=False),
        sa.Column(
            "superseded_on",
            sa.Date(),
            nullable=False,
            comment="day a re-fetch replaced these values",
        ),
        sa.Column("pub_date", sa.Date(), nullable=True),
        sa.Column(
            "revised_on",
            sa.Date(),
            nullable=True,
            comment="as in finance: when these values replaced older ones",
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
        sa.PrimaryKeyConstraint(
            "code", "stat_date", "superseded_on", name=op.f("pk_finance_revisions")
        ),
        comment="earlier values of finance rows, kept for as-of reads before each revision",
    )
    op.create_table(
        "performance_express",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("stat_date", sa.Date(), nullable=False),
        sa.Column("pub_date", sa.Date(), nullable=False),
        sa.Column("update_date", sa.Date(), nullable=True),
        sa.Column("total_asset", sa.Double(), nullable=True),
        sa.Column("net_asset", sa.Double(), nullable=True),
        sa.Column("eps_chg_pct", sa.Double(), nullable=True),
        sa.Column("roe_wa", sa.Double(), nullable=True),
        sa.Column("eps_diluted", sa.Double(), nullable=True),
        sa.Column("gr_yoy", sa.Double(), nullable=True, comment="revenue growth, year on year"),
        sa.Column(
            "op_yoy", sa.Double(), nullable=True, comment="operating profit growth, year on year"
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "code", "stat_date", "pub_date", name=op.f("pk_performance_express")
        ),
        comment="performance express reports (业绩快报), from raw_performance_express",
    )
    op.add_column(
        "finance",
        sa.Column(
            "revised_on",
            sa.Date(),
            nullable=True,
            comment="day a re-fetch stored these values over different ones (NULL: as first fetched; the superseded values are in finance_revisions)",
        ),
    )


def downgrade() -> None:
    # Back to 0003's shapes; the histories cannot be turned back into snapshots.
    _refuse_if_filled(RESHAPED)
    for name in RESHAPED:
        op.drop_table(name)
    op.drop_table("performance_express")
    op.drop_table("finance_revisions")
    op.drop_table("earnings_forecast")
    op.drop_column("finance", "revised_on")
    op.create_table(
        "index_constituents",
        sa.Column(
            "index_code", sa.Text(), nullable=False, comment="sh.000300, sh.000016 or sh.000905"
        ),
        sa.Column(
            "update_date", sa.Date(), nullable=False, comment="snapshot date of the member list"
        ),
        sa.Column("code", sa.Text(), nullable=False),
        _updated_at(),
        sa.PrimaryKeyConstraint(
            "index_code", "update_date", "code", name=op.f("pk_index_constituents")
        ),
    )
    op.create_table(
        "industry_membership",
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("update_date", sa.Date(), nullable=False),
        sa.Column("industry", sa.Text(), nullable=True),
        sa.Column("classification", sa.Text(), nullable=True),
        _updated_at(),
        sa.PrimaryKeyConstraint("code", "update_date", name=op.f("pk_industry_membership")),
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
