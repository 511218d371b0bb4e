"""Point-in-time reads (stock_pipeline.read, pointintime.py) on hand-made warehouse rows, so
every edge is placed on purpose: publication after the day, a revision, two snapshots, a
delisted stock, unknown days. The groups' tests check the same reads on the simulator's data."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import psycopg2
import pytest

from stock_pipeline.read import MarketReader
from stock_pipeline.settings import Settings
from stock_pipeline.warehouse import migrate

D = dt.date

ROWS = """
INSERT INTO finance (code, stat_date, pub_date, revised_on, net_profit) VALUES
  ('sh.600000', '2024-09-30', '2024-10-25', NULL, 30),
  ('sh.600000', '2024-12-31', '2025-03-28', '2025-06-10', 41),  -- revised on 2025-06-10
  ('sz.000001', '2024-12-31', '2025-04-29', NULL, 7);
INSERT INTO finance_revisions (code, stat_date, superseded_on, pub_date, revised_on, net_profit)
VALUES ('sh.600000', '2024-12-31', '2025-06-10', '2025-03-28', NULL, 40);
INSERT INTO index_constituents (index_code, code, valid_from, valid_to) VALUES
  ('sh.000300', 'sh.600000', '2024-06-17', NULL),
  ('sh.000300', 'sz.000001', '2024-06-17', '2024-12-16'),
  ('sh.000300', 'sz.000002', '2024-12-16', NULL);
INSERT INTO industry_membership (code, valid_from, valid_to, industry, classification) VALUES
  ('sh.600000', '2024-01-01', '2025-02-03', 'J66货币金融服务', '证监会行业分类'),
  ('sh.600000', '2025-02-03', NULL, 'J67资本市场服务', '证监会行业分类'),
  ('sz.000001', '2024-01-01', NULL, 'K70房地产业', '证监会行业分类');
INSERT INTO raw_stock_basic (code, code_name, ipo_date, out_date, security_type, status) VALUES
  ('sh.600000', 'a', '1999-11-10', NULL, 1, true),
  ('sz.000001', 'b', '1991-04-03', '2025-01-10', 1, false),
  ('sh.000300', 'index', '2005-04-08', NULL, 2, true);
CREATE TABLE raw_all_stock_2025 PARTITION OF raw_all_stock
  FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO raw_all_stock (trade_date, code, trade_status, code_name) VALUES
  ('2025-01-06', 'sh.600000', true, 'a'),
  ('2025-01-06', 'sz.000001', true, 'b'),
  ('2025-01-06', 'sh.000300', true, 'index'),
  ('2025-01-07', 'sh.600000', false, 'a');
INSERT INTO trade_calendar (cal_date, exchange, is_open) VALUES
  ('2025-01-04', 'SSE', false), ('2025-01-06', 'SSE', true), ('2025-01-07', 'SSE', true);
"""


@pytest.fixture(scope="module")
def reader(make_database: Callable[[], str]) -> MarketReader:
    dsn = make_database()
    migrate.upgrade(dsn)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(ROWS)
    with MarketReader(Settings(database_url=dsn), use_cache=False) as reader:
        yield reader


def test_finance_as_of_never_reads_a_statement_published_later(reader: MarketReader):
    # Before the annual report's publication: the Q3 statement.
    early = reader.finance_as_of("2025-03-27")
    assert early.loc["sh.600000", "stat_date"].date() == D(2024, 9, 30)
    assert "sz.000001" not in early.index  # its only statement comes out on 2025-04-29
    on_day = reader.finance_as_of(D(2025, 3, 28))
    assert on_day.loc["sh.600000", "stat_date"].date() == D(2024, 12, 31)
    assert on_day.loc["sh.600000", "pub_date"].date() == D(2025, 3, 28)


def test_finance_as_of_reads_what_was_known_before_a_revision(reader: MarketReader):
    before = reader.finance_as_of("2025-06-09", codes=["sh.600000"])
    assert before.loc["sh.600000", "net_profit"] == 40
    assert before.loc["sh.600000", "valid_from"].date() == D(2025, 3, 28)
    after = reader.finance_as_of("2025-06-10", codes="sh.600000")
    assert after.loc["sh.600000", "net_profit"] == 41
    assert after.loc["sh.600000", "valid_from"].date() == D(2025, 6, 10)
    assert list(after.index) == ["sh.600000"]


def test_index_members_between_snapshots_are_the_earlier_snapshot(reader: MarketReader):
    assert reader.index_members("hs300", "2024-09-02") == ["sh.600000", "sz.000001"]
    assert reader.index_members("sh.000300", "2024-12-16") == ["sh.600000", "sz.000002"]
    with pytest.raises(ValueError, match="before the first stored snapshot"):
        reader.index_members("hs300", "2024-06-14")
    with pytest.raises(ValueError, match="no snapshot of sh.000905"):
        reader.index_members("zz500", "2024-09-02")
    with pytest.raises(ValueError, match="index must be one of"):
        reader.index_members("csi1000", "2024-09-02")


def test_industry_as_of(reader: MarketReader):
    before = reader.industry_as_of("2025-02-02")
    assert before.loc["sh.600000", "industry"] == "J66货币金融服务"
    after = reader.industry_as_of("2025-02-03", codes=["sh.600000"])
    assert after.loc["sh.600000", "industry"] == "J67资本市场服务"
    assert after.loc["sh.600000", "valid_from"].date() == D(2025, 2, 3)
    with pytest.raises(ValueError, match="no snapshot on or before 2023-12-29"):
        reader.industry_as_of("2023-12-29")


def test_universe_lists_stocks_trading_that_day(reader: MarketReader):
    # A stock delisted since is in a past day's universe; indexes and suspended stocks are not.
    assert reader.universe("2025-01-06") == ["sh.600000", "sz.000001"]
    assert reader.universe("2025-01-07") == []  # listed, but suspended
    with pytest.raises(ValueError, match="not a trading day"):
        reader.universe("2025-01-04")
    with pytest.raises(ValueError, match="materialize raw_all_stock"):
        reader.universe("2025-01-08")
    with pytest.raises(ValueError, match="ISO date"):
        reader.universe("yesterday")
