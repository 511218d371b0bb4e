"""Passwords never reach the output, also when a driver's own error message echoes them.

Each test first shows that the real driver's error (psycopg2, asyncpg or redis-py) holds the
password, then that what stock_pipeline prints or raises shows *** instead.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
import redis
from sqlalchemy.engine import make_url

from stock_pipeline.settings import Settings
from stock_pipeline.warehouse.engine import Warehouse, WarehouseUnreachable, unreachable
from stock_pipeline.warehouse.urls import asyncpg_dsn

SECRET = "s3cret"
# libpq refuses %00 in a password and echoes the password, encoded, in its error.
NUL_IN_PASSWORD = f"postgresql://trader:{SECRET}%00@127.0.0.1:1/market"
# An unencoded @ ends the password early: libpq then reports the rest as part of the host name.
AT_IN_PASSWORD = f"postgresql://trader:pw@{SECRET}@127.0.0.1:1/market"


def _raised(action: Callable[[], object]) -> BaseException:
    """The error `action` raises, checked to hold the password."""
    try:
        action()
    except Exception as exc:
        assert SECRET in str(exc), f"this driver error no longer echoes the password: {exc}"
        return exc
    raise AssertionError("expected the driver to fail")


def _cli(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "stock_pipeline.cli", *args],
        env={
            "PATH": os.environ["PATH"],
            "STOCK_PIPELINE_HOME": str(tmp_path / "home"),
            **{f"STOCK_PIPELINE_{name}": value for name, value in env.items()},
        },
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("url", [NUL_IN_PASSWORD, AT_IN_PASSWORD], ids=["nul", "at"])
def test_db_command_masks_what_psycopg2_echoes(tmp_path: Path, url: str):
    raw = _raised(lambda: psycopg2.connect(asyncpg_dsn(url), connect_timeout=10))
    code, output = _cli(tmp_path, "db", "current", DATABASE_URL=url)
    assert code == 2, output
    assert (
        "cannot reach the warehouse database at postgresql://trader:***@127.0.0.1:1/market: "
        in (output)
    )
    assert f"{type(raw).__name__}: " in output and '"***' in output  # the driver's message, masked
    assert SECRET not in output


def test_unencoded_at_gets_a_hint():
    raw = _raised(lambda: psycopg2.connect(asyncpg_dsn(AT_IN_PASSWORD), connect_timeout=10))
    message = str(unreachable(AT_IN_PASSWORD, raw))
    assert 'could not translate host name "***@127.0.0.1"' in message
    assert "percent-encode any @ / ? # in the password as %40" in message
    assert SECRET not in message


def test_warehouse_connect_masks_the_url():
    """The asyncpg path (Warehouse.connect for Dagster) shows the URL masked too."""
    with pytest.raises(WarehouseUnreachable) as info:
        asyncio.run(Warehouse.connect(Settings(), AT_IN_PASSWORD))
    message = str(info.value)
    assert "cannot reach the warehouse database at postgresql://trader:***@127.0.0.1:1/market" in (
        message
    )
    assert SECRET not in message


def test_unreachable_masks_a_url_without_slashes():
    url = f"postgresql:trader:{SECRET}@127.0.0.1:1/market"
    raw = _raised(lambda: psycopg2.connect(url, connect_timeout=10))  # echoes the whole DSN
    message = str(unreachable(url, raw))
    assert "at postgresql:trader:***@127.0.0.1:1/market: ProgrammingError: " in message
    assert 'missing "=" after "postgresql:trader:***@127.0.0.1:1/market"' in message
    assert SECRET not in message


def test_unreachable_masks_a_keyword_dsn():
    """A libpq key=value DSN is shown masked (it used to crash the error path instead)."""
    dsn = f"host=127.0.0.1 port=1 user=trader password='{SECRET} x'"
    with pytest.raises(psycopg2.OperationalError) as info:
        psycopg2.connect(dsn, connect_timeout=10)
    message = str(unreachable(dsn, info.value))
    assert "at host=127.0.0.1 port=1 user=trader password=***: OperationalError: " in message
    assert SECRET not in message


def test_services_status_masks_what_redis_py_echoes(tmp_path: Path, redis_url: str):
    server = urlsplit(redis_url).netloc.rpartition("@")[2]
    # An unencoded # ends the host part: redis-py reads the password as the port.
    url = f"redis://:{SECRET}#1@{server}/0"
    _raised(lambda: redis.Redis.from_url(url).ping())
    code, output = _cli(
        tmp_path, "services", "status", REDIS_URL=url, DATABASE_URL="postgresql://u@127.0.0.1:1/db"
    )
    assert code == 0, output
    assert (
        f"redis: external at redis://:***@{server}/0 (STOCK_PIPELINE_REDIS_URL), unreachable: "
        "ValueError: Port could not be cast to integer value as '***'"
    ) in output
    assert SECRET not in output


@pytest.mark.parametrize("command", ["status", "start", "stop"])
def test_services_output_masks_both_urls(
    tmp_path: Path, pg_server_url: str, redis_url: str, command: str
):
    database_url = make_url(pg_server_url).set(password=SECRET)
    server = urlsplit(redis_url)
    redis_with_password = server._replace(
        netloc=f":{SECRET}@{server.netloc.rpartition('@')[2]}"
    ).geturl()
    code, output = _cli(
        tmp_path,
        "services",
        command,
        DATABASE_URL=database_url.render_as_string(hide_password=False),
        REDIS_URL=redis_with_password,
    )
    assert code == 0, output
    assert f"postgres: external at postgresql://{database_url.username}:***@" in output
    assert "redis: external at redis://:***@" in output
    assert SECRET not in output
