"""BaostockPool: N logged-in BaoStock sessions, one worker process each, used concurrently.

Why processes: the `baostock` client keeps its socket in module globals, so two sessions in one
process answer each other's requests (reproduced: up to 190 of 200 results carried another
thread's stock). Each worker (`worker.py`) owns one session and serves one request at a time,
in order. Replies carry the request's sequence number and are matched to it; the reply of a
cancelled request is dropped, and a worker whose state is in doubt (timeout, reply out of
order, dead process) is killed and replaced instead of reused. Together that rules out
cross-talk. Each worker gets up to two requests ahead (PIPELINE_DEPTH) so it never waits for
the parent between requests.

`query()` returns BaoStock's rows as strings; `query_frame()` has the worker convert them to the
typed DataFrame (typed.py) and send that, which costs the parent far less CPU (batch fetches in
fetch.py use it).

Around the workers the pool adds what a polite, robust client needs:
- a token bucket shared by all sessions (`qps`): every message sent to the server counts, logins
  and extra pages included; a query pays one token before it is handed to a worker and its extra
  messages afterwards (logouts at shutdown are not limited);
- a bound on silence (`request_timeout_s`): the worker's socket times out on a silent server
  and the worker reconnects; a worker that sends nothing (neither a reply nor word that a page
  arrived) for the timeout plus a second (wedged, dead) is killed and replaced. A long history
  of many pages takes as long as it takes while every page arrives in time;
- retries with exponential backoff and full jitter for transient failures, fast failure for
  permanent ones, and a pool-wide pause after a blacklist reply;
- session TTL (the worker re-logs in when its session is older than `session_ttl_s`);
- credentials (`user`, `password`; BaoStock's anonymous account by default), the password kept
  out of reprs and logs;
- clean shutdown: every session logged out, every worker joined (or terminated), on errors,
  cancellation and Ctrl-C too.

Use it from async code, Dagster assets included (`async def` assets, through
`resources.BaostockResource`):
`async with BaostockPool.from_settings(settings) as pool: await pool.query(...)`.
Workers are forked from multiprocessing's forkserver, so a script that starts a pool needs the
usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import pandas as pd

from stock_pipeline.baostock.errors import (
    BLACKLIST_CODE,
    BaostockError,
    BlacklistedError,
    ConnectionLost,
    PermanentError,
    PoolClosedError,
    PoolPausedError,
    RequestTimeout,
    TransientError,
    from_reply,
)
from stock_pipeline.baostock.typed import to_frame
from stock_pipeline.baostock.worker import (
    BAD_REQUEST,
    CLIENT_FAILURE,
    MALFORMED,
    SOCKET_FAILURE,
    Progress,
    Reply,
    WorkerConfig,
    serve,
)
from stock_pipeline.settings import Settings

logger = logging.getLogger("stock_pipeline.baostock")
client_logger = logging.getLogger("stock_pipeline.baostock.client")

# Extra silence the parent grants a worker beyond its own socket timeout before killing it: the
# worker usually reports its socket timeout itself and keeps its process.
_KILL_GRACE_S = 1.0
# Requests sent ahead to each worker (see _Worker). 2 = one running, one waiting in its pipe.
PIPELINE_DEPTH = 2
_JOIN_TIMEOUT_S = 3.0
# Login replies that mean the user name or password is wrong, empty, or not allowed.
_CREDENTIAL_CODES = frozenset(
    {"10001002", "10001005", "10001006", "10001007", "10001008", "10001009", "10001012"}
)


@dataclass(frozen=True)
class PoolConfig:
    """How many sessions, how fast, how patient. Build with `PoolConfig.from_settings()`."""

    endpoint: tuple[str, int] | None = None  # None: BaoStock's own server
    concurrency: int = 4
    qps: float = 20.0
    request_timeout_s: float = 30.0
    session_ttl_s: float = 3600.0
    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    blacklist_backoff_s: float = 60.0
    page_size: int | None = None  # None keeps the client's 2000 rows per page
    user: str = "anonymous"  # BaoStock's anonymous account, as the client's login() defaults
    password: str = field(default="123456", repr=False)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.qps > 0:
            raise ValueError(f"qps must be > 0, got {self.qps}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> PoolConfig:
        """The pool configuration from STOCK_PIPELINE_BAOSTOCK_* settings, with overrides."""
        endpoint = settings.baostock_endpoint
        config = cls(
            endpoint=(endpoint.host, endpoint.port) if endpoint else None,
            concurrency=settings.baostock_concurrency,
            qps=settings.baostock_qps,
            request_timeout_s=settings.baostock_request_timeout_s,
            session_ttl_s=settings.baostock_session_ttl_s,
            max_retries=settings.baostock_max_retries,
            backoff_base_s=settings.baostock_backoff_base_s,
            backoff_max_s=settings.baostock_backoff_max_s,
            blacklist_backoff_s=settings.baostock_blacklist_backoff_s,
            user=settings.baostock_user,
            password=settings.baostock_password,
        )
        return replace(config, **overrides)

    @property
    def where(self) -> str:
        return f"{self.endpoint[0]}:{self.endpoint[1]}" if self.endpoint else "BaoStock"


@dataclass(kw_only=True)
class _Answer:
    """What every request reports besides its data.

    Timings: `pool_wait_s` waiting for a session (for a place in a worker's pipeline, then
    behind the request ahead in it), `rate_wait_s` for a rate-limit token, `api_s` in the client
    (network plus its JSON parsing, all pages), `roundtrip_s` from when the worker could start
    until its reply was read (api_s plus any conversion plus process hand-over).
    """

    api: str
    params: dict[str, Any]
    fields: list[str]  # BaoStock's field names, in the order of the rows' values
    attempts: int = 1
    pool_wait_s: float = 0.0
    rate_wait_s: float = 0.0
    api_s: float = 0.0
    roundtrip_s: float = 0.0
    server_requests: int = 1


@dataclass(kw_only=True)
class QueryResult(_Answer):
    """Rows of one request (all pages) as BaoStock sent them: lists of strings."""

    rows: list[list[str]]


@dataclass(kw_only=True)
class FrameResult(_Answer):
    """One request converted to typed columns by the worker (`query_frame`).

    `frame` holds the rows with the catalog's columns, except for replies of fewer than
    worker.FRAME_MIN_ROWS rows: those come back as `rows` (strings) with `frame` None, for the
    caller to convert many at once (a frame costs ~0.5 ms however few rows it holds).
    `to_frame()` gives the typed frame either way. `convert_s`: the worker's conversion time.
    """

    frame: pd.DataFrame | None
    rows: list[list[str]]
    convert_s: float = 0.0

    @property
    def row_count(self) -> int:
        return len(self.frame) if self.frame is not None else len(self.rows)

    def to_frame(self) -> pd.DataFrame:
        """The typed frame (converted here if the worker left the rows); raises
        MalformedValueError for values that do not parse."""
        return self.frame if self.frame is not None else to_frame(self.api, self.fields, self.rows)


@dataclass
class PoolStats:
    """Counters over the pool's life, for the totals log line and tests."""

    requests: int = 0  # query attempts sent to workers
    retries: int = 0
    timeouts: int = 0
    connection_losses: int = 0
    blacklist_replies: int = 0
    workers_started: int = 0
    workers_killed: int = 0
    server_requests: int = 0
    logins: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class TokenBucket:
    """Requests-per-second limit shared by every session of a pool.

    Capacity is one token: requests are spaced evenly rather than sent in bursts, the polite
    choice toward a server that blacklists aggressive clients. `debit` charges messages after
    the fact (extra pages, re-logins); the balance may go negative and later callers wait it
    off, so the long-run rate holds. `pause` stops everyone (after a blacklist reply).
    """

    def __init__(self, rate: float):
        self.rate = rate
        self._tokens = 1.0
        self._updated = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()  # FIFO: callers get tokens in arrival order

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(1.0, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, while_paused: Callable[[], None] | None = None) -> None:
        """Wait for one token and for any pause to end.

        During a pause `while_paused` is called every quarter second; it may raise to stop
        waiting (the pool's circuit breaker does, once a blacklist persists).
        """
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    if while_paused is not None:
                        while_paused()
                    await asyncio.sleep(min(self._paused_until - now, 0.25))
                    continue
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)

    def debit(self, tokens: float) -> None:
        """Charge messages already sent."""
        if tokens > 0:
            self._refill()
            self._tokens -= tokens

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds` (extends, never shortens, a running pause)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - time.monotonic())


def _worker_context() -> multiprocessing.context.BaseContext:
    """A forkserver context that has baostock (and pandas, which it imports) preloaded.

    Spawning a fresh interpreter costs ~2.5 s of imports per worker; forking from a clean
    forkserver costs milliseconds, and unlike plain fork it is safe in threaded parents
    (asyncio executors, Dagster).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["baostock", "stock_pipeline.baostock.worker"])
    return ctx


class _Worker:
    """Parent-side handle of one worker process (one BaoStock session).

    Requests are pipelined: up to PIPELINE_DEPTH of them may be sent to the worker, which
    serves them one by one in order; the next one is already waiting in its pipe when the
    previous finishes, so the parent's reaction time is off each request's critical path. The
    server still sees one request at a time per session. Replies are matched to requests by
    sequence number; a reply out of order breaks the worker (it is killed), and the reply of a
    cancelled request is dropped on arrival, never handed to another caller. Progress messages
    (a page arrived, more to come) only prove the worker alive.
    """

    _start_lock = threading.Lock()  # Process.start() from executor threads, one at a time

    def __init__(self, slot: int, ctx: multiprocessing.context.BaseContext, config: WorkerConfig):
        self.slot = slot
        self._ctx = ctx
        self._config = config
        self._seq = itertools.count(1)
        self.conn: Connection | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        self.load = 0  # requests assigned by the pool and not yet released
        self.starting = asyncio.Lock()  # one replacement at a time
        self._loop: asyncio.AbstractEventLoop | None = None
        # seq -> (future of its reply, when sent), in the order sent (= the order answered).
        self._outstanding: collections.OrderedDict[int, tuple[asyncio.Future[Reply], float]] = (
            collections.OrderedDict()
        )
        self._last_reply_at = 0.0
        self._last_heard = 0.0  # last reply or progress message

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def queued(self) -> int:
        """Requests sent and not answered yet (including abandoned ones)."""
        return len(self._outstanding)

    def start_blocking(self) -> None:
        """Start the process (blocking: `start` runs it in an executor)."""
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=serve,
            args=(child_conn, self._config),
            name=f"baostock-worker-{self.slot}",
            daemon=True,  # multiprocessing terminates daemons at interpreter exit
        )
        with self._start_lock:
            process.start()
        child_conn.close()
        self.conn, self.process = parent_conn, process

    async def start(self) -> None:
        """Start the process and have the event loop read its replies as they arrive."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.start_blocking)
        assert self.conn is not None
        self._loop = loop
        loop.add_reader(self.conn.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        assert self.conn is not None and self._loop is not None
        try:
            # A whole message: the worker sends each in one go.
            message: Reply | Progress = self.conn.recv()
        except (EOFError, OSError) as exc:
            self._loop.remove_reader(self.conn.fileno())  # EOF stays readable: stop the calls
            self._fail_outstanding(exc)
            return
        now = time.perf_counter()
        self._last_heard = now
        head = next(iter(self._outstanding), None)
        if message.seq != head:
            self._fail_outstanding(
                OSError(f"worker {self.slot}: message for {message.seq}, expected {head}")
            )
            return
        if isinstance(message, Progress):
            return
        reply = message
        future, sent_at = self._outstanding.pop(head)
        # The worker started on it when it was sent or when the previous reply left, if later.
        reply.queued_s = max(0.0, self._last_reply_at - sent_at)
        self._last_reply_at = now
        if not future.done():  # done = its caller was cancelled: drop the reply
            future.set_result(reply)

    def _fail_outstanding(self, error: BaseException) -> None:
        outstanding, self._outstanding = self._outstanding, collections.OrderedDict()
        for future, _ in outstanding.values():
            if not future.done():
                # RuntimeError: the loop is already closed (finalizer at interpreter exit).
                with contextlib.suppress(RuntimeError):
                    future.set_exception(type(error)(*error.args))

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    async def call(self, message: tuple[Any, ...], silence_s: float) -> Reply:
        """Send one message and return its reply; raises TimeoutError, EOFError or OSError.

        TimeoutError once the worker has sent nothing (no reply, no progress) for `silence_s`
        since this message was sent or since its last message, whichever is later: a request
        queued behind others waits as long as they make progress.
        """
        if self.conn is None:
            raise EOFError(f"worker {self.slot} is not running")
        seq = next(self._seq)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.conn.send((message[0], seq, *message[1:]))
        sent_at = time.perf_counter()
        self._outstanding[seq] = (future, sent_at)
        try:
            while not future.done():
                quiet_until = max(sent_at, self._last_heard) + silence_s
                remaining = quiet_until - time.perf_counter()
                if remaining <= 0:
                    raise TimeoutError(f"worker {self.slot} silent for {silence_s:.1f}s")
                await asyncio.wait((future,), timeout=remaining)
            return future.result()
        finally:
            future.cancel()  # no-op once answered; else its reply is dropped on arrival

    def kill(self) -> None:
        """SIGKILL the process now and reap it: its request and session are abandoned.

        SIGKILL rather than SIGTERM: a wedged (e.g. stopped) process would not act on SIGTERM,
        and an abandoned session has nothing left to clean up.
        """
        if self.conn is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(ValueError, OSError, RuntimeError):
                    self._loop.remove_reader(self.conn.fileno())
            self.conn.close()
            self.conn = None
        self._fail_outstanding(EOFError(f"worker {self.slot} was stopped"))
        process, self.process = self.process, None
        if process is None:
            return
        if process.is_alive():
            process.kill()
        process.join(_JOIN_TIMEOUT_S)
        if process.exitcode is not None:
            process.close()

    async def shutdown(self, timeout: float) -> None:
        """Ask the worker to log out and exit; terminate it if it does not within `timeout`."""
        if self.conn is not None and self.alive():
            try:
                await self.call(("close",), timeout)
            except (TimeoutError, EOFError, OSError) as exc:
                logger.debug("worker %s did not close cleanly: %r", self.slot, exc)
        process = self.process
        if process is not None:
            await asyncio.get_running_loop().run_in_executor(None, process.join, _JOIN_TIMEOUT_S)
        self.kill()


class BaostockPool:
    """Concurrent BaoStock sessions with rate limit, timeouts, retries and clean shutdown."""

    def __init__(self, config: PoolConfig):
        self.config = config
        self.stats = PoolStats()
        self._ctx = _worker_context()
        self._worker_config = WorkerConfig(
            endpoint=config.endpoint,
            socket_timeout_s=config.request_timeout_s,
            session_ttl_s=config.session_ttl_s,
            parent_pid=os.getpid(),
            user=config.user,
            password=config.password,
            page_size=config.page_size,
        )
        self._workers: list[_Worker] = [
            _Worker(slot, self._ctx, self._worker_config) for slot in range(config.concurrency)
        ]
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._turn = 0  # round-robin start among equally busy workers
        self._limiter: TokenBucket | None = None
        self._started = False
        self._ready = False
        self._closed = False
        self._blacklist_streak = 0  # consecutive blacklist replies (reset by any other reply)
        self._probing = False  # a probe request is testing a tripped breaker
        # Last resort if close() never runs (e.g. a second Ctrl-C): kill the workers at exit.
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BaostockPool:
        """A pool configured from settings; keyword overrides replace PoolConfig fields."""
        return cls(PoolConfig.from_settings(settings, **overrides))

    @property
    def concurrency(self) -> int:
        return self.config.concurrency

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for tests and diagnostics)."""
        return [w.pid for w in self._workers if w.pid is not None and w.alive()]

    async def __aenter__(self) -> BaostockPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every worker and log each session in; fails if no session can log in."""
        if self._started:
            return
        self._started = True
        self._limiter = TokenBucket(self.config.qps)
        started = time.perf_counter()
        try:
            for worker in self._workers:  # one at a time: forks from the forkserver are quick
                await worker.start()
                self.stats.workers_started += 1
            results = await asyncio.gather(
                *(self._login_with_retries(w) for w in self._workers), return_exceptions=True
            )
        except BaseException:
            await self.close()
            raise
        failures = [r for r in results if isinstance(r, BaseException)]
        permanent = [f for f in failures if isinstance(f, PermanentError)]
        if permanent or len(failures) == len(self._workers):
            await self.close()
            first = (permanent or failures)[0]
            raise self._login_failure(first) from first
        for failure in failures:  # those sessions log in lazily on their first request
            logger.warning("[baostock] a session failed to log in, will retry: %s", failure)
        self._ready = True
        logger.info(
            "[baostock] pool ready: %d sessions at %s, qps=%g, timeout=%gs, %.1fs",
            self.config.concurrency,
            self.config.where,
            self.config.qps,
            self.config.request_timeout_s,
            time.perf_counter() - started,
        )

    def _login_failure(self, cause: BaseException) -> BaseException:
        """The error that ends start(): where, as whom, why, and what to change."""
        if not isinstance(cause, BaostockError):
            return cause
        hint = ""
        if cause.error_code in _CREDENTIAL_CODES:
            hint = "; check STOCK_PIPELINE_BAOSTOCK_USER and STOCK_PIPELINE_BAOSTOCK_PASSWORD"
        return type(cause)(
            f"cannot log in to {self.config.where} as user {self.config.user!r}: "
            f"{cause.reason}{hint}",
            api="login",
            error_code=cause.error_code,
        )

    async def _login_with_retries(self, worker: _Worker) -> None:
        assert self._limiter is not None
        for attempt in range(1, self.config.max_retries + 2):
            await self._limiter.acquire()
            try:
                reply = await worker.call(("login",), self._deadline)
            except (TimeoutError, EOFError, OSError) as exc:
                self._kill(worker)
                await worker.start()
                self.stats.workers_started += 1
                error: BaostockError = TransientError(f"login failed: {exc!r}", api="login")
            else:
                self.stats.logins += 1
                self._log_output(reply)
                if reply.error_code == "0":
                    return
                error = self._error(reply, "login", {})
            if not error.transient or attempt > self.config.max_retries:
                raise error
            await asyncio.sleep(self._backoff(attempt, error))

    @property
    def _deadline(self) -> float:
        """The longest silence tolerated from a worker (a login, a reply, a page) before it is
        killed: its own socket timeout plus a grace."""
        return self.config.request_timeout_s + _KILL_GRACE_S

    async def query(self, api: str, /, **params: Any) -> QueryResult:
        """Run one BaoStock `api` call (e.g. "query_history_k_data_plus") with keyword `params`.

        Returns every page's rows. Transient failures are retried up to `max_retries` times with
        exponential backoff and full jitter; raises PermanentError at once for a bad request,
        TransientError when the retries are used up, PoolClosedError after close().
        """
        reply, answer = await self._request("query", api, params)
        return QueryResult(rows=reply.rows, **answer)

    async def query_frame(self, api: str, /, **params: Any) -> FrameResult:
        """Like `query`, with the rows converted to typed columns in the worker (FrameResult).

        Values that do not parse as their catalog types fail the request with PermanentError
        (never NULL); the rows of small replies come back unconverted (see FrameResult).
        """
        reply, answer = await self._request("frame", api, params)
        return FrameResult(frame=reply.frame, rows=reply.rows, convert_s=reply.convert_s, **answer)

    async def _request(
        self, op: str, api: str, params: dict[str, Any]
    ) -> tuple[Reply, dict[str, Any]]:
        """Attempts until one succeeds: the reply and the answer's common fields (_Answer)."""
        attempts = 0
        while True:
            attempts += 1
            try:
                reply, answer = await self._attempt(op, api, params)
            except PoolPausedError:
                raise  # not sent; retrying during the pause would only queue more work
            except TransientError as exc:
                await self._before_retry(exc, attempts)
                continue
            answer["attempts"] = attempts
            return reply, answer

    async def _before_retry(self, error: TransientError, attempts: int) -> None:
        """Back off before the next attempt; re-raise `error` once the retries are used up."""
        if isinstance(error, BlacklistedError):
            assert self._limiter is not None
            self._blacklist_streak += 1
            self._limiter.pause(self.config.blacklist_backoff_s)
        if attempts > self.config.max_retries:
            error.reason = f"{error.reason} (gave up after {attempts} attempts)"
            error.args = (error._render(),)
            raise error
        delay = self._backoff(attempts, error)
        self.stats.retries += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("[baostock] retry %d in %.2fs: %s", attempts, delay, error)
        await asyncio.sleep(delay)

    def _backoff(self, attempt: int, error: BaseException) -> float:
        """Full-jitter exponential backoff: uniform(0, min(max, base * 2**(attempt-1)))."""
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)

    async def _acquire_worker(self) -> _Worker:
        """The least busy worker with room in its pipeline; waits (FIFO) while all are full."""
        while True:
            if self._closed or not self._ready:
                raise PoolClosedError(
                    "the pool is closed" if self._closed else "call start() first"
                )
            candidates = [w for w in self._workers if w.load < PIPELINE_DEPTH]
            if candidates:
                # Ties rotate, so sequential callers spread over every session too.
                n, turn = len(self._workers), self._turn
                worker = min(candidates, key=lambda w: (w.load, w.queued, (w.slot - turn) % n))
                self._turn = (worker.slot + 1) % n
                worker.load += 1
                return worker
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                self._wake_next()  # pass on a wake-up this waiter may have consumed
                raise

    def _release_worker(self, worker: _Worker) -> None:
        worker.load -= 1
        self._wake_next()

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _attempt(
        self, op: str, api: str, params: dict[str, Any]
    ) -> tuple[Reply, dict[str, Any]]:
        """One try: a session, a rate-limit token, the worker's reply (raised if an error)."""
        assert self._limiter is not None
        self._check_breaker(api, params, claim_probe=False)  # fail fast before queueing
        t0 = time.perf_counter()
        worker = await self._acquire_worker()
        try:
            t1 = time.perf_counter()
            await self._limiter.acquire(lambda: self._check_breaker(api, params, False))
            t2 = time.perf_counter()
            reply = await self._send(worker, (op, api, params), api, params)
            # On cancellation the worker still answers; the reply is dropped on arrival.
            t3 = time.perf_counter()
        finally:
            self._release_worker(worker)
        self._account(reply)
        if reply.error_code != "0":
            raise self._error(reply, api, params)
        return reply, {
            "api": api,
            "params": params,
            "fields": reply.fields,
            "pool_wait_s": t1 - t0 + reply.queued_s,
            "rate_wait_s": t2 - t1,
            "api_s": reply.call_s + reply.drain_s,
            "roundtrip_s": t3 - t2 - reply.queued_s,
            "server_requests": reply.server_requests,
        }

    async def _send(
        self, worker: _Worker, message: tuple[Any, ...], api: str, params: dict[str, Any]
    ) -> Reply:
        """`message` on `worker` (started first if it was replaced); a worker that stays silent
        too long or is lost is killed, and the request fails transiently."""
        probe = self._check_breaker(api, params, claim_probe=True)
        try:
            if worker.conn is None:
                # Replaced lazily: a killed worker's successor starts when it is next chosen.
                # (A worker that died on its own shows up as EOF on its pipe, then is killed.)
                async with worker.starting:
                    if worker.conn is None:
                        await worker.start()
                        self.stats.workers_started += 1
            self.stats.requests += 1
            return await worker.call(message, self._deadline)
        except TimeoutError:
            self.stats.timeouts += 1
            self._kill(worker)
            raise RequestTimeout(
                f"worker silent for {self._deadline:.1f}s (no reply, no page); session "
                "replaced (raise STOCK_PIPELINE_BAOSTOCK_REQUEST_TIMEOUT_S if the server is "
                "just slow)",
                api=api,
                params=params,
            ) from None
        except (EOFError, OSError) as exc:
            self.stats.connection_losses += 1
            self._kill(worker)
            if self._closed:
                raise PoolClosedError("the pool was closed during the request") from exc
            raise ConnectionLost(
                f"worker process lost ({exc!r}); session replaced", api=api, params=params
            ) from exc
        finally:
            if probe:
                self._probing = False

    def _account(self, reply: Reply) -> None:
        """Count a reply's messages to the server, charge the extra ones, log its output."""
        assert self._limiter is not None
        self.stats.server_requests += reply.server_requests
        self._limiter.debit(reply.server_requests - 1)
        if reply.relogged:
            self.stats.logins += 1
        self._log_output(reply)
        if reply.error_code != BLACKLIST_CODE:
            self._blacklist_streak = 0  # the server answers us normally again

    def _check_breaker(self, api: str, params: dict[str, Any], claim_probe: bool) -> bool:
        """Circuit breaker after persistent blacklist replies; True if this request is the probe.

        Tripped when more than `max_retries` replies in a row were blacklist replies. Then every
        request fails fast while the pool is paused; after the pause exactly one request goes
        out as a probe (the others still fail fast) and any normal reply closes the breaker.
        Waiting in line instead would hit a refusing server again with the whole queue.
        """
        assert self._limiter is not None
        if self._blacklist_streak <= self.config.max_retries:
            return False
        paused_for = self._limiter.paused_for()
        if paused_for == 0 and not self._probing:
            self._probing = claim_probe
            return claim_probe
        raise PoolPausedError(
            f"not sent: BaoStock refused the last {self._blacklist_streak} requests as "
            f"blacklisted; pool paused for {paused_for:.0f}s more. Lower "
            "STOCK_PIPELINE_BAOSTOCK_QPS / _CONCURRENCY and retry later",
            api=api,
            params=params,
        )

    def _error(self, reply: Reply, api: str, params: dict[str, Any]) -> BaostockError:
        if reply.error_code == SOCKET_FAILURE:
            self.stats.connection_losses += 1
            return ConnectionLost(reply.error_msg, api=api, params=params)
        if reply.error_code == CLIENT_FAILURE:
            return TransientError(f"client failed: {reply.error_msg}", api=api, params=params)
        if reply.error_code in (BAD_REQUEST, MALFORMED):
            return PermanentError(reply.error_msg, api=api, params=params)
        error = from_reply(reply.error_code, reply.error_msg, api=api, params=params)
        if isinstance(error, BlacklistedError):
            self.stats.blacklist_replies += 1
        return error

    def _log_output(self, reply: Reply) -> None:
        if reply.output and client_logger.isEnabledFor(logging.DEBUG):
            for line in reply.output:
                client_logger.debug("[baostock.client] %s", line)

    def _kill(self, worker: _Worker) -> None:
        if worker.process is not None:
            self.stats.workers_killed += 1
        worker.kill()

    async def close(self) -> None:
        """Log every session out and stop every worker (terminating any that hang).

        Requests still running get up to the request timeout to finish; requests waiting for a
        session fail with PoolClosedError.
        """
        if self._closed:
            return
        self._closed = True
        for waiter in self._waiters:  # they wake up, see `closed` and fail
            if not waiter.done():
                waiter.set_result(None)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._deadline
        while any(w.load for w in self._workers) and loop.time() < give_up:
            await asyncio.sleep(0.01)
        await asyncio.gather(
            *(w.shutdown(min(5.0, self._deadline)) for w in self._workers if not w.load),
            return_exceptions=True,
        )
        for worker in self._workers:  # whatever survived (e.g. close() itself was cancelled)
            worker.kill()
        self._finalizer.detach()
        logger.info("[baostock] pool closed: %s", self.stats.as_dict())


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        try:
            worker.kill()
        except Exception:  # interpreter shutdown; best effort
            pass
