"""stock_pipeline: BaoStock -> PostgreSQL/Redis market-data warehouse on Dagster."""
