"""Environment configuration, read in one place.

Every setting is an environment variable named STOCK_PIPELINE_*; README.md and .env.example list
them. A bad value raises SettingsError naming the variable and what it accepts.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from stock_pipeline.baostock.apis import INDEX_CODES

ENV_PREFIX = "STOCK_PIPELINE_"
# A cache prefix is matched literally in SCAN patterns: no glob characters, no spaces.
CACHE_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
# A BaoStock security code: exchange, dot, six digits (sh.000300).
SECURITY_CODE_PATTERN = re.compile(r"(sh|sz|bj)\.\d{6}")
# The cache keeps a replaced version readable for a minute: its keys must live longer than that.
CACHE_MIN_TTL_S = 120


URL_FIELDS = ("database_url", "redis_url", "dagster_database_url")


class SettingsError(ValueError):
    """A STOCK_PIPELINE_* variable holds a value the pipeline cannot use."""


@dataclass(frozen=True)
class BaostockEndpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> BaostockEndpoint:
        """'host:port' (IPv6 in brackets) -> BaostockEndpoint; ValueError if it is not that."""
        match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", text.strip())
        if not match or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:10030)")
        return cls(match.group(1), int(match.group(2)))


@dataclass(frozen=True)
class Settings:
    """All runtime configuration. Build with `Settings.from_env()`."""

    # None means: start (or attach to) the embedded server under `home`.
    database_url: str | None = None
    redis_url: str | None = None
    # None means BaoStock's real service (the client's built-in address).
    baostock_endpoint: BaostockEndpoint | None = None
    home: Path = field(default_factory=lambda: Path.cwd() / ".stock_pipeline")
    # First trading day of the warehouse's history (the first daily partition).
    start_date: dt.date = dt.date(2015, 1, 5)

    # SQLAlchemy pool (seed 000 D5: 10 + 20 overflow for the concurrent after-close chain).
    db_pool_size: int = 10
    db_max_overflow: int = 20
    db_pool_recycle_s: int = 1800
    # Rows per COPY chunk: bounds client and temp-table memory (seed 000 D1).
    copy_chunk_rows: int = 50_000
    # Connections a whole-partition build (a full import, a re-import of a year) loads and
    # indexes with: one COPY stream keeps one server core busy.
    copy_streams: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))

    # BaoStock blacklists aggressive clients: conservative defaults, raise them knowingly.
    baostock_concurrency: int = 4
    baostock_qps: float = 20.0
    baostock_request_timeout_s: float = 30.0
    baostock_session_ttl_s: float = 3600.0
    baostock_max_retries: int = 3
    baostock_batch_size: int = 100
    # Retry delays: full jitter over base * 2**attempt, capped; a blacklist reply pauses the pool.
    baostock_backoff_base_s: float = 0.5
    baostock_backoff_max_s: float = 30.0
    baostock_blacklist_backoff_s: float = 60.0
    # BaoStock's anonymous account unless set; the password never reaches logs or reprs.
    baostock_user: str = "anonymous"
    baostock_password: str = field(default="123456", repr=False)

    # Share of a day's listed-and-trading stocks allowed to lack a bar before the coverage
    # check fails (0: every one must have its bar).
    coverage_tolerance: float = 0.0
    # Ranges of at least this many trading days load with index management (drop secondary
    # indexes, load, rebuild) when they would at least double the table.
    bulk_load_min_days: int = 120

    # Redis hot cache (cache/). Keys expire after cache_ttl_s: longer than the longest exchange
    # holiday (about 9 days at Spring Festival), so a cache refreshed before it outlives it.
    cache_ttl_s: int = 864_000
    # Trading days of bars kept per code: what strategies read most.
    cache_bars: int = 60
    # Every cache key starts with `{cache_prefix}:`, so several pipelines can share one Redis.
    cache_prefix: str = "stock_pipeline"

    # Dagster's own storage (runs, event logs, schedules): a PostgreSQL database apart from the
    # warehouse. None: a `dagster` database on the embedded server, or on the warehouse's server
    # when DATABASE_URL is set.
    dagster_database_url: str | None = None
    # Runs the instance's queue starts at once: a 5-year range run peaks near 1.3 GB.
    max_concurrent_runs: int = 2
    # BaoStock sessions all runs together may hold (BaoStock blacklists clients that open too
    # many): the `baostock` pool admits budget // baostock_concurrency raw steps at a time.
    baostock_session_budget: int = 4
    # A run whose worker crashed is retried this often; failed assets retry by their own policy.
    run_retries: int = 2

    # Automation. The daily run requests the day's partition at this Shanghai time on trading
    # days (BaoStock has published the day by then); the daily assets are overdue after the
    # deadline.
    daily_run_time: dt.time = dt.time(17, 30)
    freshness_deadline: dt.time = dt.time(18, 30)
    # The integrity sensor checks this many latest trading days, every interval, and requests a
    # gap it already requested again only after the cooldown (a filled-then-lost gap at once).
    integrity_days: int = 30
    integrity_interval_s: int = 600
    integrity_retry_cooldown_s: int = 3600
    # Indexes whose daily bars the P3 group syncs (BaoStock codes, comma-separated).
    index_codes: tuple[str, ...] = INDEX_CODES
    # A statement period is re-fetched weekly until this many days after its legal deadline
    # (late reports, corrections), then left alone.
    finance_grace_days: int = 60

    log_level: str = "INFO"

    def __repr__(self) -> str:
        """The dataclass repr with the URLs' passwords masked (repr=False fields left out)."""
        shown = []
        for spec in fields(self):
            if spec.repr:
                value = getattr(self, spec.name)
                if spec.name in URL_FIELDS and value is not None:
                    value = redact_url(value)
                shown.append(f"{spec.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        reader = _EnvReader(env)
        defaults = cls()
        settings = cls(
            database_url=reader.url("DATABASE_URL", ("postgresql", "postgres")),
            redis_url=reader.url("REDIS_URL", ("redis", "rediss", "unix")),
            baostock_endpoint=reader.endpoint("BAOSTOCK_ENDPOINT"),
            home=reader.path("HOME", defaults.home),
            start_date=reader.day("START_DATE", defaults.start_date, minimum=dt.date(1990, 12, 19)),
            db_pool_size=reader.integer("DB_POOL_SIZE", defaults.db_pool_size, minimum=1),
            db_max_overflow=reader.integer("DB_MAX_OVERFLOW", defaults.db_max_overflow, minimum=0),
            db_pool_recycle_s=reader.integer(
                "DB_POOL_RECYCLE_S", defaults.db_pool_recycle_s, minimum=1
            ),
            copy_chunk_rows=reader.integer("COPY_CHUNK_ROWS", defaults.copy_chunk_rows, minimum=1),
            copy_streams=reader.integer("COPY_STREAMS", defaults.copy_streams, minimum=1),
            baostock_concurrency=reader.integer(
                "BAOSTOCK_CONCURRENCY", defaults.baostock_concurrency, minimum=1
            ),
            baostock_qps=reader.number("BAOSTOCK_QPS", defaults.baostock_qps),
            baostock_request_timeout_s=reader.number(
                "BAOSTOCK_REQUEST_TIMEOUT_S", defaults.baostock_request_timeout_s
            ),
            baostock_session_ttl_s=reader.number(
                "BAOSTOCK_SESSION_TTL_S", defaults.baostock_session_ttl_s
            ),
            baostock_max_retries=reader.integer(
                "BAOSTOCK_MAX_RETRIES", defaults.baostock_max_retries, minimum=0
            ),
            baostock_batch_size=reader.integer(
                "BAOSTOCK_BATCH_SIZE", defaults.baostock_batch_size, minimum=1
            ),
            baostock_backoff_base_s=reader.number(
                "BAOSTOCK_BACKOFF_BASE_S", defaults.baostock_backoff_base_s
            ),
            baostock_backoff_max_s=reader.number(
                "BAOSTOCK_BACKOFF_MAX_S", defaults.baostock_backoff_max_s
            ),
            baostock_blacklist_backoff_s=reader.number(
                "BAOSTOCK_BLACKLIST_BACKOFF_S", defaults.baostock_blacklist_backoff_s
            ),
            baostock_user=reader.text("BAOSTOCK_USER", defaults.baostock_user),
            baostock_password=reader.text("BAOSTOCK_PASSWORD", defaults.baostock_password),
            coverage_tolerance=reader.fraction("COVERAGE_TOLERANCE", defaults.coverage_tolerance),
            bulk_load_min_days=reader.integer(
                "BULK_LOAD_MIN_DAYS", defaults.bulk_load_min_days, minimum=1
            ),
            cache_ttl_s=reader.integer(
                "CACHE_TTL_S", defaults.cache_ttl_s, minimum=CACHE_MIN_TTL_S
            ),
            cache_bars=reader.integer("CACHE_BARS", defaults.cache_bars, minimum=1),
            cache_prefix=reader.cache_prefix("CACHE_PREFIX", defaults.cache_prefix),
            dagster_database_url=reader.url("DAGSTER_DATABASE_URL", ("postgresql", "postgres")),
            max_concurrent_runs=reader.integer(
                "MAX_CONCURRENT_RUNS", defaults.max_concurrent_runs, minimum=1
            ),
            baostock_session_budget=reader.integer(
                "BAOSTOCK_SESSION_BUDGET", defaults.baostock_session_budget, minimum=1
            ),
            run_retries=reader.integer("RUN_RETRIES", defaults.run_retries, minimum=0),
            daily_run_time=reader.time_of_day("DAILY_RUN_TIME", defaults.daily_run_time),
            freshness_deadline=reader.time_of_day(
                "FRESHNESS_DEADLINE", defaults.freshness_deadline
            ),
            integrity_days=reader.integer("INTEGRITY_DAYS", defaults.integrity_days, minimum=1),
            integrity_interval_s=reader.integer(
                "INTEGRITY_INTERVAL_S", defaults.integrity_interval_s, minimum=30
            ),
            integrity_retry_cooldown_s=reader.integer(
                "INTEGRITY_RETRY_COOLDOWN_S", defaults.integrity_retry_cooldown_s, minimum=0
            ),
            finance_grace_days=reader.integer(
                "FINANCE_GRACE_DAYS", defaults.finance_grace_days, minimum=0
            ),
            index_codes=reader.codes("INDEX_CODES", defaults.index_codes),
            log_level=reader.choice(
                "LOG_LEVEL", defaults.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
        )
        settings.require_consistent()
        return settings

    def require_consistent(self) -> None:
        """Settings that are each fine but contradict one another."""
        if self.baostock_session_budget < self.baostock_concurrency:
            raise SettingsError(
                f"{ENV_PREFIX}BAOSTOCK_SESSION_BUDGET ({self.baostock_session_budget}) is below "
                f"{ENV_PREFIX}BAOSTOCK_CONCURRENCY ({self.baostock_concurrency}): one raw step "
                "alone would exceed it; raise the budget or lower the concurrency"
            )
        if self.freshness_deadline <= self.daily_run_time:
            raise SettingsError(
                f"{ENV_PREFIX}FRESHNESS_DEADLINE ({self.freshness_deadline:%H:%M}) must be after "
                f"{ENV_PREFIX}DAILY_RUN_TIME ({self.daily_run_time:%H:%M})"
            )

    @property
    def baostock_pool_limit(self) -> int:
        """Raw steps the `baostock` pool admits at once across runs: each opens up to
        baostock_concurrency sessions, so together they stay within the session budget."""
        return self.baostock_session_budget // self.baostock_concurrency


class _EnvReader:
    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(ENV_PREFIX + name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _fail(self, name: str, accepted: str, value: str) -> SettingsError:
        return SettingsError(f"{ENV_PREFIX}{name} must be {accepted}; got {value!r}")

    def integer(self, name: str, default: int, minimum: int) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self._fail(name, f"an integer >= {minimum}", raw) from None
        if value < minimum:
            raise self._fail(name, f"an integer >= {minimum}", raw)
        return value

    def number(self, name: str, default: float) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self._fail(name, "a positive number", raw) from None
        if not value > 0:
            raise self._fail(name, "a positive number", raw)
        return value

    def fraction(self, name: str, default: float) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self._fail(name, "a number from 0 to 1", raw) from None
        if not 0.0 <= value <= 1.0:
            raise self._fail(name, "a number from 0 to 1", raw)
        return value

    def day(self, name: str, default: dt.date, minimum: dt.date) -> dt.date:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = dt.date.fromisoformat(raw)
        except ValueError:
            raise self._fail(name, "a date YYYY-MM-DD", raw) from None
        if value < minimum:
            raise self._fail(name, f"a date on or after {minimum}", raw)
        return value

    def time_of_day(self, name: str, default: dt.time) -> dt.time:
        raw = self._raw(name)
        if raw is None:
            return default
        match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", raw)
        if match is None:
            raise self._fail(name, "a time HH:MM (Asia/Shanghai)", raw)
        return dt.time(int(match.group(1)), int(match.group(2)))

    def text(self, name: str, default: str) -> str:
        raw = self._raw(name)
        return default if raw is None else raw

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.upper() not in choices:
            raise self._fail(name, "one of " + ", ".join(choices), raw)
        return raw.upper()

    def cache_prefix(self, name: str, default: str) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        if not CACHE_PREFIX_PATTERN.fullmatch(raw):
            accepted = "1-100 letters, digits, _ . : or - (starting with a letter or digit)"
            raise self._fail(name, accepted, raw)
        return raw

    def codes(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._raw(name)
        if raw is None:
            return default
        codes = tuple(dict.fromkeys(c.strip().lower() for c in raw.split(",") if c.strip()))
        if not codes or not all(SECURITY_CODE_PATTERN.fullmatch(c) for c in codes):
            accepted = "comma-separated BaoStock codes like sh.000300,sz.399001"
            raise self._fail(name, accepted, raw)
        return codes

    def path(self, name: str, default: Path) -> Path:
        raw = self._raw(name)
        return Path(raw).expanduser().resolve() if raw else default.resolve()

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        raw = self._raw(name)
        if raw is None:
            return None
        scheme = raw.split("://", 1)[0].split("+", 1)[0].lower() if "://" in raw else ""
        if scheme not in schemes:
            shown = redact_url(raw)
            raise SettingsError(
                f"{ENV_PREFIX}{name} must be a URL starting with "
                + " or ".join(f"{s}://" for s in schemes)
                + f"; got {shown!r}. Unset it to use the embedded server."
            )
        return raw

    def endpoint(self, name: str) -> BaostockEndpoint | None:
        raw = self._raw(name)
        if raw is None:
            return None
        try:
            return BaostockEndpoint.parse(raw)
        except ValueError:
            accepted = "host:port (e.g. 127.0.0.1:10030); unset for BaoStock"
            raise self._fail(name, accepted, raw) from None


def redact_url(url: str) -> str:
    """The URL, or libpq `key=value` string, with any password replaced by ***: safe for logs,
    errors and metadata.

    Reads the password as widely as any driver might: up to the last @ (so an unencoded @, /, ?
    or # in it stays hidden), also in a URL written without // (`postgresql:user:pw@host/db`),
    and in `password=` query parameters and key=value pairs.
    """
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:(?://)?", url)
    if scheme is None:  # libpq key=value: password=secret or password='se cret'
        return re.sub(
            r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", r"\1***", url, flags=re.I
        )
    head, rest = url[: scheme.end()], url[scheme.end() :]
    rest = re.sub(r"([?&](?:ssl)?password=)[^&#]*", r"\1***", rest, flags=re.I)
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = userinfo.split(":", 1)[0] + ":***@" + host
    return head + rest
