"""The simulator's asyncio TCP server: sessions, dispatch, paging, latency and fault injection.

`SimulatorServer` runs the server on a background thread with its own event loop (or in the
foreground with `serve_forever`); `SimulatorProcess` runs it in a child OS process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import os
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from . import protocol as p
from .handlers import HANDLERS, UNPAGED, ApiError, Handler, Result
from .market import DEFAULT_END, DEFAULT_START, Market

log = logging.getLogger(__name__)

# Fault kinds, usable as values of SimulatorConfig.fault_codes or returned by a fault_hook.
FAULT_DROP = "drop"  # close the socket mid-response (the raw client then spins forever)
FAULT_SILENT = "silent"  # read the request, never answer
FAULT_ERROR = "error"  # reply TRANSIENT_ERROR_CODE
FAULT_BLACKLIST = "blacklist"  # reply BLACKLIST_ERROR_CODE with a message containing 黑名单
FAULT_MALFORMED = "malformed"  # one row loses a field or gets a non-numeric value
FAULT_MISSING_FIELD = "missing_field"  # one row loses its last field
FAULT_BAD_VALUE = "bad_value"  # one row gets a non-numeric value in a numeric field
FAULT_SLOW = "slow"  # add spike_ms of latency
# A successful reply without rows, as BaoStock sometimes sends for a code it lists as trading.
FAULT_EMPTY = "empty"
FAULT_KINDS = frozenset(
    {
        FAULT_DROP,
        FAULT_SILENT,
        FAULT_ERROR,
        FAULT_BLACKLIST,
        FAULT_MALFORMED,
        FAULT_MISSING_FIELD,
        FAULT_BAD_VALUE,
        FAULT_SLOW,
        FAULT_EMPTY,
    }
)
BAD_VALUE = "N/A"  # what a bad_value fault puts in a numeric field
_SILENT = object()  # handle_line outcome: never answer this connection again


class SimulatorStartError(RuntimeError):
    """The simulator cannot listen where it was asked to (the message says what to do)."""


@dataclass(frozen=True)
class FaultContext:
    """What a fault hook sees of a request."""

    method: str
    code: str  # the request's security code, "" when it has none
    params: tuple[str, ...]
    connection_id: int
    request_number: int  # 1-based, per connection


FaultHook = Callable[[FaultContext], str | None]


@dataclass(frozen=True)
class SimulatorConfig:
    """Market and behaviour of a simulator. Every fault rate is in [0, 1] and defaults to 0."""

    seed: int = 7
    n_codes: int = 5000
    start: date = DEFAULT_START
    end: date = DEFAULT_END
    cache_size: int = 8192  # per-stock series kept in memory (LRU)
    latency_ms: float = 0.0  # added to every request, asynchronously
    jitter_ms: float = 0.0  # plus uniform [0, jitter_ms)
    slow_rate: float = 0.0  # fraction of requests delayed by a further spike_ms
    spike_ms: float = 2000.0
    drop_rate: float = 0.0
    silent_rate: float = 0.0
    error_rate: float = 0.0
    blacklist_rate: float = 0.0
    malformed_rate: float = 0.0
    max_rps: float = 0.0  # requests/s over the whole server; above it: rate-limit reply; 0 = off
    fault_codes: Mapping[str, str] = field(default_factory=dict)  # code -> fault kind, always
    fault_hook: FaultHook | None = None  # must be picklable for SimulatorProcess
    bad_users: frozenset[str] = frozenset({"baduser"})
    fault_login: bool = False  # random faults also hit login/logout when True
    prewarm: bool = False  # generate every stock's history before accepting connections

    def __post_init__(self) -> None:
        for name in ("slow_rate", "drop_rate", "silent_rate", "error_rate", "blacklist_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SimulatorConfig.{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.malformed_rate <= 1.0:
            raise ValueError(
                f"SimulatorConfig.malformed_rate must be in [0, 1], got {self.malformed_rate}"
            )
        for code, kind in self.fault_codes.items():
            if kind not in FAULT_KINDS:
                raise ValueError(
                    f"fault_codes[{code!r}] = {kind!r}: use one of {sorted(FAULT_KINDS)}"
                )

    def make_market(self) -> Market:
        return Market(self.seed, self.n_codes, self.start, self.end, self.cache_size)


@dataclass
class SimulatorStats:
    """Counters of a running server (a snapshot when read through `SimulatorServer.stats`)."""

    requests: Counter = field(default_factory=Counter)  # by method
    faults: Counter = field(default_factory=Counter)  # by fault kind
    errors: Counter = field(default_factory=Counter)  # replies by error code
    active_connections: int = 0
    total_connections: int = 0
    reused_results: int = 0  # pages cut from the connection's previous result, not recomputed
    peak_connections: int = 0  # most connections open at once: BaoStock sessions held together

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def copy(self) -> SimulatorStats:
        # Read from another thread while the server counts: retry if a counter grew meanwhile.
        for _ in range(100):
            try:
                return SimulatorStats(
                    Counter(self.requests),
                    Counter(self.faults),
                    Counter(self.errors),
                    self.active_connections,
                    self.total_connections,
                    self.reused_results,
                    self.peak_connections,
                )
            except RuntimeError:
                continue
        raise RuntimeError("could not snapshot simulator stats")


class _RateLimiter:
    """Sliding one-second window over the whole server."""

    def __init__(self, max_rps: float) -> None:
        self.max_rps = max_rps
        self.stamps: deque[float] = deque()

    def allow(self) -> bool:
        if self.max_rps <= 0:
            return True
        now = time.monotonic()
        while self.stamps and now - self.stamps[0] >= 1.0:
            self.stamps.popleft()
        if len(self.stamps) >= self.max_rps:
            return False
        self.stamps.append(now)
        return True


class _Protocol:
    """Per-server request handling, run on the event loop."""

    def __init__(self, config: SimulatorConfig, market: Market) -> None:
        self.config = config
        self.market = market
        self.stats = SimulatorStats()
        self.rng = random.Random(config.seed * 7919 + 17)
        self.limiter = _RateLimiter(config.max_rps)
        self.stopping = asyncio.Event()
        self.writers: set[asyncio.StreamWriter] = set()
        self._next_connection = 0

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._next_connection += 1
        conn_id = self._next_connection
        self.stats.active_connections += 1
        self.stats.total_connections += 1
        self.stats.peak_connections = max(
            self.stats.peak_connections, self.stats.active_connections
        )
        self.writers.add(writer)
        session: dict[str, Any] = {"user": None, "requests": 0}
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    return
                session["requests"] += 1
                outcome = await self.handle_line(line, writer, session, conn_id)
                if outcome is _SILENT:
                    await self._stay_silent(reader)
                    return
                if not outcome:
                    return
        finally:
            self.stats.active_connections -= 1
            self.writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _stay_silent(self, reader: asyncio.StreamReader) -> None:
        """Never answer again; return once the client hangs up or the server stops."""
        hang_up = asyncio.ensure_future(reader.read())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({hang_up, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hang_up.cancel()
            stop.cancel()

    async def handle_line(
        self,
        line: bytes,
        writer: asyncio.StreamWriter,
        session: dict[str, Any],
        conn_id: int,
    ) -> object:
        """Answer one request: True keeps the connection, False closes it, _SILENT stalls it."""
        try:
            req = p.decode_request(line)
        except p.ProtocolError as exc:
            await self._send(writer, "04", [p.MESSAGE_ERROR, str(exc), "", ""])
            self.stats.errors[p.MESSAGE_ERROR] += 1
            return True
        method = req.method
        self.stats.requests[method] += 1
        known = p.MESSAGE_TYPES.get(req.msg_type)
        if known is None or known[1] != method:
            await self._send(writer, "04", self._error_body(p.MESSAGE_TYPE_ERROR, req))
            return True
        response_type = known[0]

        fault = self._choose_fault(req, session, conn_id)
        delay = self.config.latency_ms
        if self.config.jitter_ms:
            delay += self.rng.random() * self.config.jitter_ms
        if fault == FAULT_SLOW:
            delay += self.config.spike_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)

        if fault == FAULT_SILENT:
            return _SILENT
        if not self.limiter.allow():
            self.stats.faults["rate_limit"] += 1
            body = self._error_body(p.RATE_LIMIT_ERROR_CODE, req, p.RATE_LIMIT_MESSAGE)
            await self._send(writer, response_type, body)
            return True
        if fault == FAULT_ERROR:
            await self._send(writer, response_type, self._error_body(p.TRANSIENT_ERROR_CODE, req))
            return True
        if fault == FAULT_BLACKLIST:
            body = self._error_body(p.BLACKLIST_ERROR_CODE, req)
            await self._send(writer, response_type, body)
            return True

        body = self._answer(req, session, empty=fault == FAULT_EMPTY)
        if (
            fault in (FAULT_MALFORMED, FAULT_MISSING_FIELD, FAULT_BAD_VALUE)
            and body[0] == p.SUCCESS
        ):
            body = self._corrupt(req, body, fault)
        frame = p.encode_response(response_type, body)
        if fault == FAULT_DROP:
            # Half a response, then the socket closes: the client sees EOF mid-message.
            writer.write(frame[: max(1, len(frame) // 2)])
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            return False
        writer.write(frame)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        if method == "logout":
            session["user"] = None
        return True

    def _choose_fault(self, req: Request, session: dict[str, Any], conn_id: int) -> str | None:
        cfg = self.config
        code = _request_code(req)
        if code and code in cfg.fault_codes:
            kind = cfg.fault_codes[code]
            self.stats.faults[kind] += 1
            return kind
        if cfg.fault_hook is not None:
            ctx = FaultContext(req.method, code, req.body[4:], conn_id, session["requests"])
            kind = cfg.fault_hook(ctx)
            if kind is not None:
                if kind not in FAULT_KINDS:
                    raise ValueError(
                        f"fault_hook returned {kind!r}; use one of {sorted(FAULT_KINDS)}"
                    )
                self.stats.faults[kind] += 1
                return kind
        if req.method in ("login", "logout") and not cfg.fault_login:
            return None
        draw = self.rng.random()
        for kind, rate in (
            (FAULT_DROP, cfg.drop_rate),
            (FAULT_SILENT, cfg.silent_rate),
            (FAULT_ERROR, cfg.error_rate),
            (FAULT_BLACKLIST, cfg.blacklist_rate),
            (FAULT_MALFORMED, cfg.malformed_rate),
            (FAULT_SLOW, cfg.slow_rate),
        ):
            if draw < rate:
                self.stats.faults[kind] += 1
                return kind
            draw -= rate
        return None

    def _answer(self, req: Request, session: dict[str, Any], empty: bool = False) -> list[str]:
        """The response body of a request (success or error); `empty`: a success has no rows."""
        method = req.method
        if method == "login":
            user, password = req.body[1:2], req.body[2:3]
            if not user or not password or not user[0] or not password[0]:
                return self._error_body(p.BAD_USER_OR_PASSWORD, req)
            if user[0] in self.config.bad_users:
                return self._error_body(p.BAD_USER_OR_PASSWORD, req)
            session["user"] = user[0]
            return [p.SUCCESS, "success", "login", user[0]]
        if session["user"] is None:
            return self._error_body(p.NO_LOGIN, req)
        if method == "logout":
            return [p.SUCCESS, "success", "logout", req.user_id]
        handler = HANDLERS.get(method)
        if handler is None:
            return self._error_body(p.MESSAGE_TYPE_ERROR, req, f"模拟服务器不支持 {method}")
        paged = method not in UNPAGED
        params = req.body[4:] if paged else req.body[2:]
        try:
            if paged:
                page, per_page = _paging(req)
            result = self._result(handler, method, params, session)
        except ApiError as exc:
            return self._error_body(exc.code, req, exc.message)
        if empty:
            record = result.records_json(0, 0)
        elif paged:
            record = result.records_json((page - 1) * per_page, page * per_page)
        else:
            record = result.records_json()
        if not paged:
            return [p.SUCCESS, "success", method, req.user_id, record, *result.echo]
        return [
            p.SUCCESS,
            "success",
            method,
            req.user_id,
            str(page),
            str(per_page),
            record,
            *result.echo,
        ]

    def _result(
        self, handler: Handler, method: str, params: tuple[str, ...], session: dict[str, Any]
    ) -> Result:
        """The handler's result, reused while a connection pages through the same query (the
        client asks for page 2 with the same parameters: computing it again would triple the
        cost of a 3-page query_all_stock)."""
        key = (method, params)
        cached = session.get("last_result")
        if cached is not None and cached[0] == key:
            self.stats.reused_results += 1
            return cached[1]
        result = handler(self.market, params)
        session["last_result"] = (key, result)
        return result

    def _corrupt(self, req: Request, body: list[str], fault: str) -> list[str]:
        """Damage one row of a successful reply (a row with a missing field or a bad number)."""
        import json

        record_at = 4 if req.method in UNPAGED else 6
        rows = json.loads(body[record_at])["record"]
        if not rows:
            return body
        if fault == FAULT_MALFORMED:
            fault = self.rng.choice([FAULT_MISSING_FIELD, FAULT_BAD_VALUE])
        row = rows[self.rng.randrange(len(rows))]
        if fault == FAULT_MISSING_FIELD:
            row.pop()
        else:
            numeric = [i for i, v in enumerate(row) if _is_number(v)]
            row[numeric[-1] if numeric else -1] = BAD_VALUE
        out = list(body)
        out[record_at] = p.records_json(rows)
        return out

    def _error_body(self, code: str, req: Request, message: str | None = None) -> list[str]:
        self.stats.errors[code] += 1
        return [code, message or p.ERROR_MESSAGES.get(code, "error"), req.method, req.user_id]

    async def _send(self, writer: asyncio.StreamWriter, msg_type: str, body: list[str]) -> None:
        writer.write(p.encode_response(msg_type, body))
        with contextlib.suppress(ConnectionError):
            await writer.drain()


Request = p.Request


def _request_code(req: Request) -> str:
    """The security code a request is about ('' if none), for fault targeting."""
    method = req.method
    if method == "query_history_k_data_plus" or method in (
        "query_adjust_factor",
        "query_dividend_data",
        "query_profit_data",
        "query_operation_data",
        "query_growth_data",
        "query_dupont_data",
        "query_balance_data",
        "query_cash_flow_data",
        "query_performance_express_report",
        "query_forecast_report",
        "query_stock_basic",
        "query_stock_industry",
    ):
        return req.body[4].strip().lower() if len(req.body) > 4 else ""
    return ""


def _paging(req: Request) -> tuple[int, int]:
    try:
        page, per_page = int(req.body[2]), int(req.body[3])
    except (IndexError, ValueError):
        raise ApiError(p.PARAM_ERROR, "页码或每页条数不正确。") from None
    if page < 1 or per_page < 1:
        raise ApiError(p.PARAM_ERROR, "页码或每页条数不正确。")
    return page, per_page


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return "-" not in text[1:]  # dates are not numbers


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    """One line: why (host, port) cannot be listened on, and what to do about it."""
    if isinstance(exc, socket.gaierror):
        return (
            f"simulator host {host!r} cannot be resolved ({exc.strerror or exc}); "
            "use an IP address or a name of this machine, e.g. 127.0.0.1"
        )
    if exc.errno == errno.EADDRINUSE:
        return (
            f"simulator port {port} on {host} is already in use; stop whatever listens there "
            "or choose another port (0 picks a free one)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"simulator host {host!r} is not an address of this machine; "
            "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"simulator port {port} on {host} needs privileges; choose a port above 1023 "
            "(0 picks a free one)"
        )
    return f"simulator cannot listen on {host}:{port} ({exc.strerror or exc})"


class SimulatorServer:
    """The simulator on a background thread with its own event loop.

    >>> with SimulatorServer(SimulatorConfig(seed=7), port=0) as sim:
    ...     sim.endpoint  # "127.0.0.1:54321"
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        market: Market | None = None,
    ) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        self.market = market or self.config.make_market()
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = threading.Event()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def stats(self) -> SimulatorStats:
        return self._protocol.stats.copy() if self._protocol else SimulatorStats()

    def __enter__(self) -> SimulatorServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start serving on a daemon thread; returns once the port is bound.

        Raises SimulatorStartError when the address cannot be bound (port taken, unknown host).
        """
        self._stop_requested.clear()
        self._thread = threading.Thread(target=self._run, name="baostock-simulator", daemon=True)
        self._thread.start()
        timeout = 900 if self.config.prewarm else 30
        self._ready.wait(timeout)
        if isinstance(self._error, SimulatorStartError):
            raise self._error
        if self._error is not None:
            raise RuntimeError(f"simulator failed to start on {self.endpoint}") from self._error
        if not self._ready.is_set():
            raise RuntimeError(f"simulator did not start on {self.endpoint} within {timeout} s")

    def stop(self) -> None:
        """Stop serving (callable from any thread, even before serving began); joins the
        background thread if any."""
        self._stop_requested.set()
        if self._loop is not None and self._stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
        finally:
            self._ready.set()  # start() never waits for a thread that is gone

    def serve_forever(self, on_ready: Callable[[SimulatorServer], None] | None = None) -> None:
        """Serve in the calling thread until `stop()` (from another thread or a signal handler).

        Raises SimulatorStartError at once when the address cannot be bound.
        """
        asyncio.run(self._serve(on_ready))

    async def _serve(self, on_ready: Callable[[SimulatorServer], None] | None = None) -> None:
        self._stop_event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._protocol = _Protocol(self.config, self.market)
        # Bind before prewarming, so a taken port or a bad host fails in milliseconds.
        server = await self._bind()
        self.port = server.sockets[0].getsockname()[1]
        try:
            if self.config.prewarm:
                started = time.monotonic()
                self.market.prewarm()
                log.info(
                    "[simulator] prewarmed %d codes in %.1fs",
                    self.market.n_codes,
                    time.monotonic() - started,
                )
            if self._stop_requested.is_set():
                return
            await server.start_serving()
            self._ready.set()
            if on_ready is not None:
                on_ready(self)
            await self._stop_event.wait()
        finally:
            server.close()
            self._protocol.stopping.set()
            for writer in list(self._protocol.writers):
                with contextlib.suppress(Exception):
                    writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _bind(self) -> asyncio.Server:
        """The listening socket (not yet accepting), or SimulatorStartError saying what to do."""
        assert self._protocol is not None
        try:
            return await asyncio.start_server(
                self._protocol.handle_connection,
                self.host,
                self.port,
                limit=1 << 20,
                backlog=512,
                start_serving=False,
            )
        except OSError as exc:
            raise SimulatorStartError(_bind_problem(self.host, self.port, exc)) from exc


def _child_main(config: SimulatorConfig, host: str, port: int, conn: Any) -> None:
    """Entry point of SimulatorProcess: serve, report the port (or why not), die with the
    parent."""
    server = SimulatorServer(config, host, port)

    def watch_parent() -> None:
        with contextlib.suppress(EOFError, OSError):
            conn.recv()  # returns or raises only when the parent closes its end or dies
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        server.serve_forever(on_ready=lambda s: conn.send(("ready", s.port)))
    except SimulatorStartError as exc:
        conn.send(("error", str(exc)))


class SimulatorProcess:
    """The simulator in a child process (spawned), so its CPU is off the client's GIL.

    The child exits when the parent dies (it watches a pipe) and `__exit__` terminates and joins
    it, so no orphan is left behind.
    """

    def __init__(
        self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Any = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> SimulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float | None = None) -> None:
        timeout = timeout or (900.0 if self.config.prewarm else 60.0)
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        self._process = ctx.Process(
            target=_child_main,
            args=(self.config, self.host, self.port, child_conn),
            name="baostock-simulator",
            daemon=True,
        )
        self._process.start()
        child_conn.close()
        self._conn = parent_conn
        try:
            if not parent_conn.poll(timeout):
                raise TimeoutError(f"simulator process did not start within {timeout} s")
            status, detail = parent_conn.recv()
        except (TimeoutError, EOFError) as exc:
            self.stop()
            raise RuntimeError(f"simulator process failed to start: {exc!r}") from exc
        if status == "error":
            self.stop()
            raise SimulatorStartError(detail)
        self.port = detail

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        if self._conn is not None:
            self._conn.close()
        self._process = None
