"""The child-process side of the pool: one logged-in BaoStock session per OS process.

The `baostock` client keeps its socket and user id in module globals, so two sessions in one
process silently answer each other's requests. Each worker process therefore owns exactly one
session and serves one request at a time over a multiprocessing Connection.

Two kinds of query: "query" replies with BaoStock's rows (lists of strings); "frame" converts
them to the typed DataFrame first (typed.py), because pickling, unpickling and converting
strings in the parent costs far more CPU than pickling the typed columns. Small replies stay
rows: a frame costs about half a millisecond however few rows it holds, so the parent converts
those in bulk, a batch at a time.

What the worker fixes around the unmodified client:
- its socket gets a timeout and treats EOF as an error, so a dropped connection fails at once
  instead of spinning at 100% CPU, and a silent server fails after the timeout;
- `print` output is captured and sent back with each reply for the parent to log;
- pages are drained with `next()` (never `get_data()`, which crashes under pandas >= 2), and a
  page that failed half-way is reported instead of silently truncating the rows;
- before asking for a further page the worker tells the parent it is alive (`Progress`): the
  parent bounds silence, not the length of a long multi-page history;
- the worker ignores SIGINT (the parent shuts it down and logs it out) and exits when the
  parent's end of the pipe closes or the parent process disappears.
"""

from __future__ import annotations

import inspect
import io
import os
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import pandas as pd

from stock_pipeline.baostock.errors import RECONNECT_CODES
from stock_pipeline.baostock.typed import to_frame_or_reason

# Pseudo error codes for failures the client itself does not name (never sent by BaoStock).
SOCKET_FAILURE = "socket"  # transient: dropped connection, timeout, garbled reply
CLIENT_FAILURE = "client"  # transient: the client raised while parsing a reply
BAD_REQUEST = "request"  # permanent: the client rejected the arguments (e.g. a malformed date)
MALFORMED = "malformed"  # permanent: values that do not parse as their catalog types

# Replies with fewer rows go back as rows for the parent to convert in bulk (see the docstring).
FRAME_MIN_ROWS = 100

# The client prints this whenever send_msg swallowed an exception (then returns None).
_RECEIVE_FAILED_MARK = "接收数据异常"
# How often the watchdog thread checks that the parent still exists.
_PARENT_POLL_S = 1.0


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to connect: the endpoint (None = BaoStock's own) and timeouts."""

    endpoint: tuple[str, int] | None
    socket_timeout_s: float
    session_ttl_s: float
    parent_pid: int
    user: str = "anonymous"
    password: str = field(default="123456", repr=False)
    page_size: int | None = None  # rows per page; None keeps the client's 2000 (tests lower it)


@dataclass
class Reply:
    """One answer to the parent. `error_code` "0" means success.

    The data is in `rows` (lists of strings, in `fields` order) or, for a "frame" query whose
    reply was big enough, in `frame` (typed, catalog columns) with `rows` empty.
    """

    seq: int = 0  # echoes the request's sequence number
    error_code: str = "0"
    error_msg: str = ""
    fields: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    frame: pd.DataFrame | None = None
    server_requests: int = 0  # messages sent to the server (logins and pages included)
    call_s: float = 0.0  # the first page: network plus the client's JSON parsing
    drain_s: float = 0.0  # further pages and row collection
    convert_s: float = 0.0  # rows to the typed frame
    relogged: bool = False  # the session was (re)established before this request
    queued_s: float = 0.0  # set by the parent: time the request waited behind earlier ones
    output: list[str] = field(default_factory=list)  # what the client printed


@dataclass
class Progress:
    """Sent before each further page of request `seq`: the worker is alive and getting on."""

    seq: int
    pages: int  # pages received so far


class _GuardedSocket(socket.socket):
    """The client's socket, with its two hazards turned into exceptions.

    `recv() == b""` (peer closed) would make the client's receive loop spin forever; raising
    lets the client's own `except` end the call. Failures are recorded on `_STATE` because the
    client swallows the exception and may then return a silently truncated result.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        try:
            data = super().recv(bufsize, flags)
        except OSError as exc:  # includes socket.timeout
            _STATE.socket_error = _STATE.socket_error or f"receive failed: {exc!r}"
            raise
        if not data:
            _STATE.socket_error = _STATE.socket_error or "server closed the connection"
            raise ConnectionResetError("BaoStock server closed the connection")
        return data

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except OSError as exc:
            _STATE.socket_error = _STATE.socket_error or f"send failed: {exc!r}"
            raise


class _State:
    socket_error: str | None = None
    socket_timeout_s: float | None = None


_STATE = _State()


def _socket_factory(family: int = -1, type: int = -1, proto: int = -1, fileno: Any = None):
    sock = _GuardedSocket(family, type, proto, fileno)
    sock.settimeout(_STATE.socket_timeout_s)  # also bounds connect()
    return sock


class _Capture(io.TextIOBase):
    """Collects what the client prints; the parent logs it (stdout is not ours to write)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        text = s.strip()
        if text:
            self.lines.append(text)
        return len(s)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


class _Session:
    """The one BaoStock session of this process."""

    def __init__(self, config: WorkerConfig, capture: _Capture):
        import baostock
        import baostock.util.socketutil as socketutil

        self.bs = baostock
        self.config = config
        self.capture = capture
        self.logged_in_at: float | None = None
        self._signatures: dict[str, inspect.Signature] = {}
        if config.endpoint is not None:
            from stock_pipeline.baostock.endpoint import point_client_at

            point_client_at(*config.endpoint)
        _STATE.socket_timeout_s = config.socket_timeout_s
        import baostock.common.contants as contants

        self.contants = contants
        if config.page_size is not None:
            contants.BAOSTOCK_PER_PAGE_COUNT = config.page_size  # read at call time
        # The client calls socketutil.socket.socket(...) at connect time: hand it ours.
        socketutil.socket = types.SimpleNamespace(  # type: ignore[attr-defined]
            socket=_socket_factory, AF_INET=socket.AF_INET, SOCK_STREAM=socket.SOCK_STREAM
        )

    def _drop_connection(self) -> None:
        import baostock.common.context as context

        sock = getattr(context, "default_socket", None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self.logged_in_at = None

    def login(self) -> Reply:
        """Connect and log in; replaces any previous connection of this process."""
        self._drop_connection()
        _STATE.socket_error = None
        reply = Reply(server_requests=1, relogged=True)
        started = time.perf_counter()
        result = self.bs.login(self.config.user, self.config.password)
        reply.call_s = time.perf_counter() - started
        if _STATE.socket_error:
            reply.error_code, reply.error_msg = SOCKET_FAILURE, _STATE.socket_error
        elif result.error_code != "0":
            reply.error_code, reply.error_msg = result.error_code, result.error_msg
        if reply.error_code == "0":
            self.logged_in_at = time.monotonic()
        else:
            self._drop_connection()
        return reply

    def logout(self) -> None:
        """Log out if logged in (best effort: the socket may already be gone)."""
        if self.logged_in_at is None:
            return
        try:
            self.bs.logout(self.config.user)
        except Exception:  # shutting down; nothing useful to do with it
            pass
        self._drop_connection()

    def query(
        self, api: str, params: dict[str, Any], on_page: Callable[[int], None] | None = None
    ) -> Reply:
        """Run one query_* call and drain every page into rows.

        `on_page(pages)` is called before each further page is requested.
        """
        reply = Reply()
        if not self._ensure_session(reply):
            return reply
        problem = self._check_call(api, params)
        if problem is not None:
            reply.error_code, reply.error_msg = BAD_REQUEST, problem
            return reply
        _STATE.socket_error = None
        started = time.perf_counter()
        try:
            result = getattr(self.bs, api)(**params)
            reply.server_requests += 1
            reply.call_s = time.perf_counter() - started
            if result is None:
                # The client returns None (after printing why) for a malformed date.
                reply.error_code = BAD_REQUEST
                reply.error_msg = "; ".join(self.capture.lines) or "client rejected the arguments"
                return reply
            rows = self._drain(result, reply, on_page) if result.error_code == "0" else []
            reply.drain_s = time.perf_counter() - started - reply.call_s
        except Exception as exc:  # a garbled reply can break the parser anywhere
            reply.error_code, reply.error_msg = CLIENT_FAILURE, f"{type(exc).__name__}: {exc}"
            self._drop_connection()
            return reply
        self._settle(reply, result, rows)
        return reply

    def _ensure_session(self, reply: Reply) -> bool:
        """Log in if not logged in or the session outlived its TTL; False (and the login's
        error in `reply`) if that failed."""
        expired = (
            self.logged_in_at is not None
            and time.monotonic() - self.logged_in_at > self.config.session_ttl_s
        )
        if expired:
            self.logout()
            reply.server_requests += 1
        if self.logged_in_at is not None:
            return True
        login = self.login()
        reply.server_requests += login.server_requests
        reply.relogged = True
        reply.error_code, reply.error_msg = login.error_code, login.error_msg
        return login.error_code == "0"

    def _check_call(self, api: str, params: dict[str, Any]) -> str | None:
        """Why `api(**params)` cannot be called, or None."""
        if not api.startswith("query_") or not hasattr(self.bs, api):
            return f"baostock has no API {api!r}"
        if api not in self._signatures:
            self._signatures[api] = inspect.signature(getattr(self.bs, api))
        try:
            self._signatures[api].bind(**params)
        except TypeError as exc:  # wrong keyword arguments for this API
            return f"{api}: {exc}"
        return None

    def _drain(
        self, result: Any, reply: Reply, on_page: Callable[[int], None] | None
    ) -> list[list[str]]:
        """Every page's rows (what get_data() does, minus its pandas-2 crash)."""
        rows: list[list[str]] = list(result.data)
        pages = 1
        while True:
            # next() asks for another page only when this one is exactly full.
            full = len(result.data) == self.contants.BAOSTOCK_PER_PAGE_COUNT
            if on_page is not None and full:
                on_page(pages)
            result.cur_row_num = len(result.data)
            if not result.next():
                return rows
            reply.server_requests += 1
            pages += 1
            rows.extend(result.data)

    def _settle(self, reply: Reply, result: Any, rows: list[list[str]]) -> None:
        """Fill `reply` from a finished call: rows, the server's error, or a failed page."""
        failed_receive = any(_RECEIVE_FAILED_MARK in line for line in self.capture.lines)
        if _STATE.socket_error or failed_receive:
            # Possibly truncated: next() returns False on a failed page without an error code.
            reply.error_code = SOCKET_FAILURE
            reply.error_msg = _STATE.socket_error or "; ".join(self.capture.lines)
            self._drop_connection()
        elif result.error_code != "0":
            reply.error_code, reply.error_msg = result.error_code, result.error_msg
            if result.error_code in RECONNECT_CODES:
                self._drop_connection()
        else:
            reply.fields = list(result.fields)
            reply.rows = rows


def convert_to_frame(reply: Reply, api: str) -> None:
    """Replace a successful reply's rows by the typed frame, or by the reason they are malformed.

    Replies under FRAME_MIN_ROWS rows keep their rows (the parent converts them in bulk).
    """
    if reply.error_code != "0" or len(reply.rows) < FRAME_MIN_ROWS:
        return
    started = time.perf_counter()
    try:
        frame, reason = to_frame_or_reason(api, reply.fields, reply.rows)
    except Exception as exc:  # e.g. an API the catalog does not describe
        frame, reason = None, f"cannot convert {api} rows: {type(exc).__name__}: {exc}"
    reply.convert_s = time.perf_counter() - started
    reply.rows = []
    if frame is None:
        reply.error_code, reply.error_msg = MALFORMED, reason or "malformed rows"
    else:
        reply.frame = frame


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent disappears, even if the main thread is blocked on the network."""
    while True:
        time.sleep(_PARENT_POLL_S)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(3)
        except PermissionError:  # pid reused by another user's process: the parent is gone
            os._exit(3)


def _progress_to(conn: Connection, seq: int) -> Callable[[int], None]:
    """Tells the parent that request `seq` is getting on (see Progress)."""
    return lambda pages: conn.send(Progress(seq, pages))


def serve(conn: Connection, config: WorkerConfig) -> None:
    """Worker main loop: answer (op, seq, ...) messages, op one of login, query, frame, close.

    Every reply and progress message echoes `seq`, so the parent can prove it belongs to the
    request it sent.
    """
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(config.parent_pid,), daemon=True).start()
    capture = _Capture()
    sys.stdout = capture
    session = _Session(config, capture)
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # parent closed its end: it is gone or abandoned us
            op, seq = message[0], message[1]
            if op == "close":
                session.logout()
                capture.take()
                conn.send(Reply(seq=seq))
                return
            if op == "login":
                reply = session.login()
            elif op in ("query", "frame"):
                reply = session.query(message[2], message[3], _progress_to(conn, seq))
                if op == "frame":
                    convert_to_frame(reply, message[2])
            else:
                reply = Reply(error_code=BAD_REQUEST, error_msg=f"unknown operation {op!r}")
            reply.seq = seq
            reply.output = capture.take()
            conn.send(reply)
    except (BrokenPipeError, EOFError):
        return
    finally:
        session.logout()
