"""ETL assets: raw tables -> business tables (stocks, trade_calendar, stock_daily)."""
