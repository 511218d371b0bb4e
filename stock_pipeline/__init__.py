"""stock_pipeline: BaoStock -> PostgreSQL/Redis market-data warehouse on Dagster."""


def __getattr__(name: str) -> str:
    # `stock_pipeline.__version__`, looked up on first use: importing importlib.metadata costs
    # ~60 ms, which `import stock_pipeline.compute` (and every simulator process) need not pay.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("stock-pipeline")
        except PackageNotFoundError:  # a checkout on sys.path that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
