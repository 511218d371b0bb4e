"""`stock-pipeline` command line: migrations, embedded services, the demo, the simulator."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from stock_pipeline.logs import LEVELS, configure_logging
from stock_pipeline.settings import Settings, SettingsError, redact_url

log = logging.getLogger("stock_pipeline.cli")


def _postgres_problem(url: str) -> BaseException | None:
    """Why psycopg2 cannot connect to `url` (None if it can)."""
    import psycopg2

    from stock_pipeline.warehouse.urls import asyncpg_dsn

    try:
        psycopg2.connect(asyncpg_dsn(url), connect_timeout=10).close()
    except (psycopg2.Error, ValueError) as exc:  # ValueError: a URL psycopg2 cannot parse
        return exc
    return None


def _redis_problem(url: str) -> BaseException | None:
    """Why redis-py cannot reach `url` (None if it can)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError) as exc:  # ValueError: a bad port, db, ...
        return exc
    return None


def _check_reachable(url: str) -> None:
    """Fail fast with a readable message instead of a driver traceback."""
    from stock_pipeline.warehouse.engine import unreachable

    problem = _postgres_problem(url)
    if problem is not None:
        raise unreachable(url, problem)


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


def _embedded_redis(settings: Settings):  # -> EmbeddedRedis (import kept lazy)
    from stock_pipeline.embedded.redis import EmbeddedRedis
    from stock_pipeline.warehouse.engine import unusable_home

    try:
        return EmbeddedRedis(settings.home / "redis")
    except OSError as exc:
        raise unusable_home(settings.home, exc) from exc


def _services(args: argparse.Namespace, settings: Settings) -> int:
    from stock_pipeline.warehouse.engine import embedded_postgres
    from stock_pipeline.warehouse.urls import describe_error

    servers = {
        "postgres": ("DATABASE_URL", settings.database_url, embedded_postgres, _postgres_problem),
        "redis": ("REDIS_URL", settings.redis_url, _embedded_redis, _redis_problem),
    }
    for name, (variable, external_url, embedded, problem_of) in servers.items():
        if external_url:
            where = f"{name}: external at {redact_url(external_url)} (STOCK_PIPELINE_{variable})"
            if args.services_command != "status":
                print(f"{where}, not managed here")
            elif (problem := problem_of(external_url)) is not None:
                print(f"{where}, unreachable: {describe_error(problem, external_url)}")
            else:
                print(f"{where}, reachable")
            continue
        server = embedded(settings)
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
    from stock_pipeline import __version__  # the git tag this installation was built from

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        help="DEBUG, INFO, WARNING or ERROR (default: STOCK_PIPELINE_LOG_LEVEL, else INFO)",
    )
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

    from stock_pipeline.demo import register as register_demo

    register_demo(sub)
    from stock_pipeline.service import register as register_service

    register_service(sub)
    from stock_pipeline.dev import register as register_dev

    register_dev(sub)
    from stock_pipeline.backfill import register as register_backfill

    register_backfill(sub)
    from stock_pipeline.status import register as register_status

    register_status(sub)
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
    from stock_pipeline.warehouse.migrate import MigrationError

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
    except (SettingsError, WarehouseUnreachable, EmbeddedServiceError, MigrationError) as exc:
        print(f"stock-pipeline: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stock-pipeline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
