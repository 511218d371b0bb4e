"""Embedded PostgreSQL and Redis: real servers from pip wheels, started in private folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
import redis

from stock_pipeline.embedded.postgres import EmbeddedPostgres
from stock_pipeline.embedded.redis import EmbeddedRedis

START_AND_REPORT = """
import sys
from stock_pipeline.embedded.postgres import EmbeddedPostgres
server = EmbeddedPostgres(sys.argv[1]).start()
print(server.port, open(server.pgdata / "postmaster.pid").readline().strip())
"""


@pytest.fixture
def pg(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path / "pg")
    yield server
    server.stop()
    assert not server.is_running(), "the test left an embedded PostgreSQL running"


def test_postgres_start_twice_attaches_and_stop_keeps_data(pg: EmbeddedPostgres, tmp_path: Path):
    pg.start()
    url = pg.ensure_database("warehouse")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    pid = pg._postmaster_pid()

    again = EmbeddedPostgres(tmp_path / "pg").start()  # a second handle attaches
    assert again._postmaster_pid() == pid and again.port == pg.port

    pg.stop()
    assert not pg.is_running()
    pg.start()
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT x FROM kept")
        assert cur.fetchone() == (42,)


def test_postgres_concurrent_starts_share_one_server(pg: EmbeddedPostgres, tmp_path: Path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", START_AND_REPORT, str(tmp_path / "pg")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    reports = {out.strip() for out, _ in outputs}
    assert len(reports) == 1, f"each process should see the same port and postmaster: {reports}"
    assert pg.is_running()


def test_postgres_refuses_a_foreign_non_empty_data_dir(tmp_path: Path):
    data = tmp_path / "pg" / "data"
    data.mkdir(parents=True)
    (data / "notes.txt").write_text("not a database")
    with pytest.raises(Exception, match="holds no PostgreSQL cluster"):
        EmbeddedPostgres(tmp_path / "pg").start()


def test_redis_start_attach_stop_keeps_data(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "redis")
    try:
        server.start()
        redis.Redis.from_url(server.url()).set("tech:sh.600000:latest", "1")
        EmbeddedRedis(tmp_path / "redis").start()  # attaches
        server.stop()
        assert not server.is_running()
        server.start()
        assert redis.Redis.from_url(server.url()).get("tech:sh.600000:latest") == b"1"
    finally:
        server.stop()
    assert not server.is_running()


def test_redis_serves_what_the_hot_cache_needs(redis_url: str):
    """The session's Redis (embedded Valkey, or STOCK_PIPELINE_TEST_REDIS_URL) handles the cache
    pattern of the design: per-stock hashes written in pipelines of 500 with a 25 h TTL."""
    client = redis.Redis.from_url(redis_url)
    keys = [f"test:tech:sh.{600000 + i}:latest" for i in range(1200)]
    try:
        with client.pipeline(transaction=False) as pipe:
            for i, key in enumerate(keys):
                pipe.hset(key, mapping={"trade_date": "2024-12-31", "ma5": str(10.0 + i)})
                pipe.expire(key, 25 * 3600)
                if i % 500 == 499:
                    pipe.execute()
            pipe.execute()
        assert client.hget(keys[1199], "ma5") == b"1209.0"
        assert 0 < client.ttl(keys[0]) <= 25 * 3600
        assert sum(1 for _ in client.scan_iter(match="test:tech:*", count=1000)) == len(keys)
    finally:
        client.delete(*keys)
