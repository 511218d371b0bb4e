"""`stock-pipeline` command line: database migrations, embedded services, the simulator."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from stock_pipeline.logs import configure_logging
from stock_pipeline.settings import Settings, SettingsError

log = logging.getLogger("stock_pipeline.cli")


def _check_reachable(url: str) -> None:
    """Fail fast with a readable message instead of a driver traceback."""
    import psycopg2

    from stock_pipeline.warehouse.engine import unreachable
    from stock_pipeline.warehouse.urls import asyncpg_dsn

    try:
        psycopg2.connect(asyncpg_dsn(url), connect_timeout=10).close()
    except psycopg2.OperationalError as exc:
        raise unreachable(url, exc) from None


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from stock_pipeline.warehouse import migrate
    from stock_pipeline.warehouse.engine import warehouse_url
    from stock_pipeline.warehouse.urls import display_url

    url = warehouse_url(settings)
    _check_reachable(url)
    log.info("[db] %s on %s", args.db_command, display_url(url))
    if args.db_command == "upgrade":
        migrate.upgrade(url, args.revision)
    elif args.db_command == "downgrade":
        migrate.downgrade(url, args.revision)
    else:
        migrate.current(url)
    return 0


def _services(args: argparse.Namespace, settings: Settings) -> int:
    from stock_pipeline.embedded.postgres import EmbeddedPostgres
    from stock_pipeline.embedded.redis import EmbeddedRedis

    servers = {
        "postgres": (EmbeddedPostgres(settings.home / "postgres"), settings.database_url),
        "redis": (EmbeddedRedis(settings.home / "redis"), settings.redis_url),
    }
    for name, (server, external_url) in servers.items():
        if external_url:
            print(f"{name}: external (STOCK_PIPELINE_{name.upper()}_URL is set), not managed here")
            continue
        if args.services_command == "start":
            server.start()
        elif args.services_command == "stop":
            server.stop()
        state = f"running at {server.url()}" if server.is_running() else "stopped"
        print(f"{name}: embedded, {state} (data in {server.dir.data})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stock-pipeline",
        description="BaoStock A-share market data into PostgreSQL and Redis, run by Dagster.",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (default: settings)")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="warehouse schema migrations (Alembic)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="migrate to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    down = db_sub.add_parser("downgrade", help="migrate down to REVISION (e.g. base, -1)")
    down.add_argument("revision")
    db_sub.add_parser("current", help="show the database's revision")
    db.set_defaults(handler=_db)

    services = sub.add_parser("services", help="the embedded PostgreSQL and Redis")
    services.add_argument("services_command", choices=("start", "stop", "status"))
    services.set_defaults(handler=_services)

    try:
        from stock_pipeline.baostock.simulator.cli import register
    except ImportError:
        pass  # simulator not installed in this build
    else:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from stock_pipeline.embedded._service import EmbeddedServiceError
    from stock_pipeline.warehouse.engine import WarehouseUnreachable

    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(args.log_level or settings.log_level)
        handler: Callable[[argparse.Namespace, Settings], int] | None = getattr(
            args, "handler", None
        )
        if handler is None:  # subcommands registered by their own module take args only
            return args.func(args) or 0
        return handler(args, settings) or 0
    except (SettingsError, WarehouseUnreachable, EmbeddedServiceError) as exc:
        print(f"stock-pipeline: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stock-pipeline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
