"""Settings: defaults, clear errors naming the variable, passwords never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stock_pipeline.settings import BaostockEndpoint, Settings, SettingsError, redact_url
from stock_pipeline.warehouse.urls import asyncpg_dsn, display_url, sqlalchemy_url


def test_defaults_are_conservative():
    s = Settings.from_env({})
    assert s.database_url is None and s.redis_url is None and s.baostock_endpoint is None
    assert (s.db_pool_size, s.db_max_overflow, s.copy_chunk_rows) == (10, 20, 50_000)
    assert s.home == (Path.cwd() / ".stock_pipeline").resolve()
    # The cache outlives the longest exchange holiday (about 9 days at Spring Festival).
    assert (s.cache_ttl_s, s.cache_bars, s.cache_prefix) == (864_000, 60, "stock_pipeline")


def test_values_are_parsed():
    s = Settings.from_env(
        {
            "STOCK_PIPELINE_BAOSTOCK_ENDPOINT": "127.0.0.1:10030",
            "STOCK_PIPELINE_DB_POOL_SIZE": "3",
            "STOCK_PIPELINE_DATABASE_URL": "postgresql://u:p@h/db",
            "STOCK_PIPELINE_CACHE_TTL_S": "3600",
            "STOCK_PIPELINE_CACHE_BARS": "120",
            "STOCK_PIPELINE_CACHE_PREFIX": "research:sp-2",
        }
    )
    assert s.baostock_endpoint == BaostockEndpoint("127.0.0.1", 10030)
    assert s.db_pool_size == 3
    assert (s.cache_ttl_s, s.cache_bars, s.cache_prefix) == (3600, 120, "research:sp-2")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DB_POOL_SIZE", "abc", "STOCK_PIPELINE_DB_POOL_SIZE must be an integer >= 1"),
        ("DB_POOL_SIZE", "0", "STOCK_PIPELINE_DB_POOL_SIZE must be an integer >= 1"),
        ("BAOSTOCK_QPS", "-1", "STOCK_PIPELINE_BAOSTOCK_QPS must be a positive number"),
        ("BAOSTOCK_ENDPOINT", "localhost", "STOCK_PIPELINE_BAOSTOCK_ENDPOINT must be host:port"),
        ("DATABASE_URL", "mysql://u:pw@h/db", "must be a URL starting with postgresql://"),
        ("LOG_LEVEL", "LOUD", "STOCK_PIPELINE_LOG_LEVEL must be one of"),
        ("CACHE_TTL_S", "ten days", "STOCK_PIPELINE_CACHE_TTL_S must be an integer >= 120"),
        ("CACHE_TTL_S", "60", "STOCK_PIPELINE_CACHE_TTL_S must be an integer >= 120"),
        ("CACHE_BARS", "0", "STOCK_PIPELINE_CACHE_BARS must be an integer >= 1"),
        ("CACHE_BARS", "1.5", "STOCK_PIPELINE_CACHE_BARS must be an integer >= 1"),
        ("CACHE_PREFIX", "my cache", "STOCK_PIPELINE_CACHE_PREFIX must be 1-100 letters"),
        ("CACHE_PREFIX", "sp:*", "STOCK_PIPELINE_CACHE_PREFIX must be 1-100 letters"),
        ("CACHE_PREFIX", ":sp", "STOCK_PIPELINE_CACHE_PREFIX must be 1-100 letters"),
        ("CACHE_PREFIX", "x" * 101, "STOCK_PIPELINE_CACHE_PREFIX must be 1-100 letters"),
        ("INDEX_CODES", "sh.000300,000905", "STOCK_PIPELINE_INDEX_CODES must be comma-separated"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str):
    with pytest.raises(SettingsError, match=message) as info:
        Settings.from_env({f"STOCK_PIPELINE_{name}": value})
    assert "pw" not in str(info.value)


def test_urls_never_show_passwords():
    url = "postgresql://trader:s3cret@db.example:5432/market"
    assert "s3cret" not in redact_url(url) and "s3cret" not in display_url(url)
    assert "s3cret" not in repr(sqlalchemy_url(url))
    assert sqlalchemy_url(url).drivername == "postgresql+asyncpg"
    assert asyncpg_dsn(url).startswith("postgresql://trader:s3cret@")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://trader:s3cret@db.example:5432/m",
            "postgresql://trader:***@db.example:5432/m",
        ),
        ("postgresql:trader:s3cret@db.example/m", "postgresql:trader:***@db.example/m"),
        ("postgresql://trader:pw@s3cret@db.example/m", "postgresql://trader:***@db.example/m"),
        ("redis://:s3cret#1@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://:s3/cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1/0?password=s3cret&db=1", "redis://127.0.0.1/0?password=***&db=1"),
        ("host=db.example password=s3cret dbname=m", "host=db.example password=*** dbname=m"),
        (
            "host=db.example password = 's3 \\'cret' dbname=m",
            "host=db.example password = *** dbname=m",
        ),
        ("postgresql://trader@db.example/m", "postgresql://trader@db.example/m"),
    ],
)
def test_redact_url_reads_the_password_as_widely_as_any_driver(url: str, shown: str):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "postgresql:trader:s3cret@127.0.0.1/market"),
        ("DATABASE_URL", "host=127.0.0.1 password=s3cret dbname=market"),
        ("DATABASE_URL", "mysql://trader:s3cret@127.0.0.1/market"),
        ("REDIS_URL", "redis:trader:s3cret@127.0.0.1"),
        ("REDIS_URL", "http://:s3cret@127.0.0.1:6379/0"),
        ("REDIS_URL", "valkey://127.0.0.1:6379/0?password=s3cret"),
    ],
)
def test_url_errors_mask_the_password(name: str, value: str):
    with pytest.raises(SettingsError, match=f"STOCK_PIPELINE_{name} must be a URL") as info:
        Settings.from_env({f"STOCK_PIPELINE_{name}": value})
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


def test_repr_masks_the_url_passwords():
    settings = Settings.from_env(
        {
            "STOCK_PIPELINE_DATABASE_URL": "postgresql://trader:s3cret@db.example/market",
            "STOCK_PIPELINE_REDIS_URL": "redis://:s3cret@cache.example:6379/0",
            "STOCK_PIPELINE_BAOSTOCK_PASSWORD": "s3cret",
        }
    )
    shown = repr(settings)
    assert "database_url='postgresql://trader:***@db.example/market'" in shown
    assert "redis_url='redis://:***@cache.example:6379/0'" in shown
    assert "db_pool_size=10" in shown and "baostock_password" not in shown
    assert "s3cret" not in shown and "s3cret" not in str(settings)
    assert settings.database_url == "postgresql://trader:s3cret@db.example/market"


def test_cli_reports_unreachable_database_without_password(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "stock_pipeline.cli", "db", "current"],
        env={
            "PATH": "/usr/bin:/bin",
            "STOCK_PIPELINE_DATABASE_URL": "postgresql://trader:s3cret@127.0.0.1:1/market",
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "cannot reach the warehouse database at postgresql://trader:***@127.0.0.1:1" in (
        done.stderr
    )
    assert "s3cret" not in done.stderr + done.stdout
