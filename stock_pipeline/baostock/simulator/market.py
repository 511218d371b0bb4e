"""The synthetic A-share market behind the simulator (pure: no I/O, no wall clock).

Everything is a deterministic function of (seed, n_codes, start, end):

- the exchange calendar (`calendar.py`): the real SSE sessions up to the end of the bundled
  XSHG calendar, generated weekends and holidays after it;
- the universe: `n_codes` stocks over sh.60xxxx, sh.688xxx, sz.00xxxx and sz.30xxxx, with IPOs
  and delistings spread over time, plus the index codes of `apis.INDEX_CODES`;
- per stock, generated lazily and kept in an LRU cache keyed by code: a daily close path in
  integer cents with price limits (+-10%, +-20% for STAR/ChiNext, +-5% while ST), suspensions,
  yearly dividends / bonus shares that move the ex-right preclose, and the adjustment factors
  that follow from them;
- indexes: cap-weighted return chains over their members' prices.

Prices are held in cents and rounded half-up like the exchanges do, so a limit-up close is
exactly `round(preclose * 1.1, 2)`.

Adjusted prices (adjustflag "1" hfq and "2" qfq) are `round(price * factor, 4)` where factor is
the 6-decimal backAdjustFactor / foreAdjustFactor that query_adjust_factor serves for the latest
ex-right date <= the bar's date. Before a stock's first ex-right date in the window the factors are
back = 1 and fore = round(1 / last backAdjustFactor, 6) (1 when it never had one). As with
BaoStock, qfq is relative to the latest ex-right date (here: the last one in the window, never
today's date). A client recomputing adjusted prices from the factors matches to 1e-4.

History starts at `start`: a stock listed before it has its first bar on the first trading day of
the window, with preclose equal to its starting price.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np

from ..apis import INDEX_CODES, K_DAILY_FIELDS, K_PERIOD_FIELDS
from . import text
from .calendar import is_trading_day, open_flags, trading_day_array
from .fundamentals import (
    REPORT_ID_BASE as _REPORT_ID_BASE,
)
from .fundamentals import (
    REPORT_ID_SPAN as _REPORT_ID_SPAN,
)
from .fundamentals import (
    Fundamentals,
    build_fundamentals,
    publication_ordinals,
)

DEFAULT_START = date(2010, 1, 1)
DEFAULT_END = date(2026, 12, 31)

BOARD_SH_MAIN = "sh_main"
BOARD_STAR = "star"  # sh.688xxx
BOARD_SZ_MAIN = "sz_main"
BOARD_CHINEXT = "chinext"  # sz.30xxxx

# board -> (exchange prefix, first number, how many numbers, share of the universe, opening day)
_BOARDS = {
    BOARD_SH_MAIN: ("sh", 600000, 6000, 0.38, date(1990, 12, 19)),
    BOARD_STAR: ("sh", 688000, 1000, 0.10, date(2019, 7, 22)),
    BOARD_SZ_MAIN: ("sz", 1, 4000, 0.32, date(1991, 4, 3)),
    BOARD_CHINEXT: ("sz", 300000, 2000, 0.20, date(2009, 10, 30)),
}
_BOARD_ORDER = (BOARD_SH_MAIN, BOARD_STAR, BOARD_SZ_MAIN, BOARD_CHINEXT)
# Always present (docs and tests use them): listed before the window, never delisted.
ANCHOR_CODES = ("sh.600000", "sz.000001")
# ChiNext moved from +-10% to +-20% limits on this day.
CHINEXT_20PCT_FROM = date(2020, 8, 24)

_INDEX_INFO = {
    # code: (name, base date, level at window start, member rule)
    "sh.000001": ("上证综合指数", date(1991, 7, 15), 3243.76, "sh_all"),
    "sh.000016": ("上证50指数", date(2004, 1, 2), 2238.06, "sz50"),
    "sh.000300": ("沪深300指数", date(2005, 4, 8), 3575.68, "hs300"),
    "sh.000905": ("中证500指数", date(2007, 1, 15), 4372.12, "zz500"),
    "sz.399001": ("深证成份指数", date(1995, 1, 23), 13533.41, "sz_component"),
    "sz.399006": ("创业板指数", date(2010, 6, 1), 1000.0, "chinext100"),
}

# CSRC industry classification (证监会行业分类), names as BaoStock spells them (no spaces).
CSRC_INDUSTRIES = (
    "C39计算机、通信和其他电子设备制造业",
    "C27医药制造业",
    "C26化学原料和化学制品制造业",
    "C38电气机械和器材制造业",
    "C35专用设备制造业",
    "C34通用设备制造业",
    "C36汽车制造业",
    "C15酒、饮料和精制茶制造业",
    "C13农副食品加工业",
    "C30非金属矿物制品业",
    "C32有色金属冶炼和压延加工业",
    "I65软件和信息技术服务业",
    "I64互联网和相关服务",
    "J66货币金融服务",
    "J67资本市场服务",
    "K70房地产业",
    "D44电力、热力生产和供应业",
    "E48土木工程建筑业",
    "F51批发业",
    "G54道路运输业",
    "B06煤炭开采和洗选业",
    "R86广播、电视、电影和录音制作业",
)
INDUSTRY_CLASSIFICATION = "证监会行业分类"

_NAME_HEAD = "华中东南新金国长海天恒宏安通信达科正联盛远泰兴鑫瑞明光北西永嘉"
_NAME_TAIL = (
    "科技", "股份", "电子", "医药", "能源", "控股", "电气", "材料", "汽车", "食品", "传媒",
    "化工", "环保", "智能", "生物", "重工", "精密", "软件", "物流", "矿业", "建设", "电力",
)  # fmt: skip


def code_id(code: str) -> int:
    """A stable integer for a code: sh.600000 -> 1600000, sz.000001 -> 2000001."""
    return (1 if code.startswith("sh.") else 2) * 1_000_000 + int(code[3:])


def cents_str(c: int) -> str:
    """Integer cents as BaoStock formats prices: 1056 -> '10.5600'."""
    return f"{c // 100}.{c % 100:02d}00"


def _half_up(x: np.ndarray | float) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5 + 1e-9)


def _ou(e: np.ndarray, phi: float) -> np.ndarray:
    """x_t = phi * x_{t-1} + e_t, vectorised in blocks (the closed form loses precision if long)."""
    out = np.empty_like(e)
    state = 0.0
    for s in range(0, len(e), 2048):
        block = e[s : s + 2048]
        powers = phi ** np.arange(len(block))
        out[s : s + 2048] = powers * (state * phi + np.cumsum(block / powers))
        state = out[s + len(block) - 1]
    return out


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def _uniforms(key: int, streams: int, idx: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in [0, 1), shape (streams, len(idx)): splitmix64 of (key, stream,
    idx). Random access by day index, so a bar never depends on which range was asked for."""
    base = np.uint64((key * 0x9E3779B1) & 0xFFFFFFFFFFFFFFFF)
    lanes = np.arange(streams, dtype=np.uint64)[:, None] * np.uint64(0x85EBCA77C2B2AE63)
    with np.errstate(over="ignore"):
        z = base + lanes + idx.astype(np.uint64)[None, :] * _M1
        z = (z ^ (z >> _S30)) * _M2
        z = (z ^ (z >> _S27)) * _M3
        z ^= z >> _S31
    return (z >> _S11).astype(np.float64) * (1.0 / (1 << 53))


def _normals(key: int, streams: int, idx: np.ndarray) -> np.ndarray:
    """Bell-shaped counter-based noise with unit variance: a logistic draw (one hash per value,
    slightly fatter tails than a normal, which suits price noise)."""
    u = _uniforms(key, streams, idx) + (0.5 / (1 << 53))  # never exactly 0
    return np.clip(np.log(u / (1.0 - u)) * (math.sqrt(3.0) / math.pi), -6.0, 6.0)


@dataclass(frozen=True)
class Listing:
    """Static facts of one security."""

    code: str
    name: str
    board: str  # one of the BOARD_* constants, or "index"
    ipo: date
    out: date | None  # delisting date: last trading day is the trading day before it
    industry: str
    size: float  # log market-cap score used to rank index members

    @property
    def is_index(self) -> bool:
        return self.board == "index"


@dataclass(frozen=True)
class CorporateAction:
    """A dividend / bonus-share event and its announcement timeline."""

    code: str
    report_year: int  # fiscal year the plan pays for
    plan_date: date  # dividPlanAnnounceDate (with the annual report)
    agm_date: date
    regist_date: date
    ex_date: date  # dividOperateDate
    pay_date: date
    cash_ps: float  # yuan per share, before tax
    stocks_ps: float  # bonus shares per share (送股)
    reserve_ps: float  # shares converted from capital reserve per share (转增)
    preclose_cents: int  # ex-right reference price of the ex date


@dataclass(frozen=True)
class AdjustFactor:
    """One row of query_adjust_factor (factors already rounded to 6 decimals)."""

    code: str
    ex_date: date
    fore: float
    back: float


@dataclass
class _Profile:
    """Cheap per-stock parameters (no price path): suspensions, ST, corporate-action schedule."""

    first: int  # grid index of the first bar
    last: int  # grid index of the last bar (inclusive)
    traded: np.ndarray  # bool per listed day
    st: np.ndarray  # bool per listed day
    limit_pct: np.ndarray  # int per listed day: 5, 10 or 20
    p0_cents: int
    sigma: float
    beta: float
    phi: float
    turn_base: float
    total0: float
    float_ratio: float
    ipo_in_window: bool


@dataclass
class _Series:
    """A stock's generated daily history over its listed days (grid indices first..last)."""

    first: int
    close: np.ndarray  # int64 cents per listed day, carried over suspensions
    preclose: np.ndarray  # int64 cents per listed day
    actions: list[CorporateAction]
    factors: list[AdjustFactor]
    fore_before_first: float
    share_steps: np.ndarray  # listed-day indices where the share count changes (ex dates)
    total_after: np.ndarray  # total shares from each step on (index 0: before any step)
    liqa_after: np.ndarray


@dataclass
class _IndexSeries:
    first: int  # grid index of the first bar
    close: np.ndarray  # float levels per grid day from `first`
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    volume: np.ndarray
    amount: np.ndarray


@dataclass
class _StatusBook:
    """Per code (all codes, sorted): listing span, and where its traded flags sit in `traded`."""

    ipo: np.ndarray  # ordinal of the first listed day
    out: np.ndarray  # ordinal of the delisting day (date.max when listed for good)
    is_index: np.ndarray
    first: np.ndarray  # grid index of the first bar (stocks)
    last: np.ndarray
    offset: np.ndarray  # start of the stock's flags in `traded`
    traded: np.ndarray  # every stock's _Profile.traded, concatenated
    table: text.Table  # query_all_stock rows of every code: code, a status placeholder, name


class _Lru:
    """A small thread-safe LRU map (the server thread and tests share one Market)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.maxsize:
                self.items.popitem(last=False)


class Market:
    """The deterministic synthetic market. Thread-safe; per-stock series are generated lazily."""

    def __init__(
        self,
        seed: int = 7,
        n_codes: int = 5000,
        start: date = DEFAULT_START,
        end: date = DEFAULT_END,
        cache_size: int = 8192,
    ) -> None:
        if end <= start:
            raise ValueError(f"market window end {end} must be after start {start}")
        capacity = sum(b[2] for b in _BOARDS.values())
        if not 2 <= n_codes <= capacity:
            raise ValueError(f"n_codes must be between 2 and {capacity}, got {n_codes}")
        self.seed = seed
        self.n_codes = n_codes
        self.start = start
        self.end = end
        self._today = end
        self._lock = threading.RLock()
        self.grid = trading_day_array(start, end)
        self.grid_dates: list[date] = [d.item() for d in self.grid]
        self.grid_strs: list[str] = [d.isoformat() for d in self.grid_dates]
        self._grid_text = text.strings(self.grid_strs)
        self._grid_ord = np.array([d.toordinal() for d in self.grid_dates], dtype=np.int64)
        self._grid_month = np.array([d.year * 12 + d.month for d in self.grid_dates])
        self._market_log = self._build_market_factor()
        self.listings: dict[str, Listing] = {}
        self._build_universe()
        self._stock_codes = sorted(c for c, lst in self.listings.items() if not lst.is_index)
        self._ipo_ord = np.array([self.listings[c].ipo.toordinal() for c in self._stock_codes])
        self._out_ord = np.array(
            [(self.listings[c].out or date.max).toordinal() for c in self._stock_codes]
        )
        self._code_ids = np.array([code_id(c) for c in self._stock_codes], dtype=np.int64)
        self._sizes = np.array([self.listings[c].size for c in self._stock_codes])
        self._is_sh = np.array([c.startswith("sh.") for c in self._stock_codes])
        self._is_chinext = np.array(
            [self.listings[c].board == BOARD_CHINEXT for c in self._stock_codes]
        )
        self._profiles: dict[str, _Profile] = {}
        self._series = _Lru(cache_size)
        self._indexes: dict[str, _IndexSeries] = {}
        self._fundamentals = _Lru(cache_size)
        self._valuation_tables = _Lru(cache_size)
        self._member_cache: dict[tuple[str, date], list[str]] = {}
        self._report_tables: dict[str, np.ndarray] = {}
        self._status: _StatusBook | None = None

    @property
    def today(self) -> date:
        """The day the simulator answers as of (default: `end`): statements published after it
        are not served yet, restatements dated after it not applied. Tests move it forward to
        replay later visits to the same market; a Market with another `end` is another market
        (its listings and statements are drawn differently)."""
        return self._today

    @today.setter
    def today(self, day: date) -> None:
        if not self.start <= day <= self.end:
            raise ValueError(f"today {day} must lie in the market window {self.start}..{self.end}")
        self._today = day

    # ----- calendar -----------------------------------------------------------------------------

    def is_trading_day(self, day: date) -> bool:
        return is_trading_day(day)

    def open_flags(self, start: date, end: date) -> np.ndarray:
        """One bool per calendar day of [start, end]: True on trading days."""
        return open_flags(start, end)

    def trading_days(self, start: date, end: date) -> list[date]:
        """Exchange trading days in [start, end] (any range, not only the history window)."""
        if start >= self.start and end <= self.end:
            lo, hi = self._grid_range(start, end)
            return self.grid_dates[lo:hi]
        return [d.item() for d in trading_day_array(start, end)]

    def _grid_range(self, start: date, end: date) -> tuple[int, int]:
        """Half-open grid index range of the trading days in [start, end]."""
        lo = int(np.searchsorted(self._grid_ord, start.toordinal(), side="left"))
        hi = int(np.searchsorted(self._grid_ord, end.toordinal(), side="right"))
        return lo, max(lo, hi)

    def grid_index(self, day: date) -> int | None:
        i = int(np.searchsorted(self._grid_ord, day.toordinal()))
        return i if i < len(self._grid_ord) and self._grid_ord[i] == day.toordinal() else None

    # ----- universe -----------------------------------------------------------------------------

    def _build_market_factor(self) -> np.ndarray:
        rng = np.random.default_rng((self.seed, 0x4D4B54))
        n = len(self.grid)
        shocks = rng.standard_normal(n) * 0.011
        crash = rng.random(n) < 0.004
        shocks[crash] += rng.normal(-0.04, 0.02, int(crash.sum()))
        return np.arange(n) * 0.00018 + _ou(shocks, 0.9985)

    def _build_universe(self) -> None:
        rng = np.random.default_rng((self.seed, 0x554E49))
        counts = {b: int(self.n_codes * _BOARDS[b][3]) for b in _BOARD_ORDER}
        counts[BOARD_SH_MAIN] += self.n_codes - sum(counts.values())
        last_ipo = self.end - timedelta(days=45)
        for board in _BOARD_ORDER:
            prefix, first_num, span, _, opened = _BOARDS[board]
            k = counts[board]
            if k == 0:
                continue
            numbers = np.sort(rng.choice(span, size=k, replace=False)) + first_num
            if board in (BOARD_SH_MAIN, BOARD_SZ_MAIN):
                numbers[0] = first_num  # the anchor codes sh.600000 / sz.000001
            pre_lo, pre_hi = opened.toordinal(), self.start.toordinal() - 1
            in_lo = max(opened, self.start).toordinal()
            in_hi = last_ipo.toordinal()
            pre_share = 0.0 if pre_hi < pre_lo else (0.6 if board != BOARD_CHINEXT else 0.08)
            pre = rng.random(k) < pre_share
            ipo = np.where(
                pre,
                rng.integers(pre_lo, max(pre_lo, pre_hi) + 1, k),
                rng.integers(in_lo, max(in_lo, in_hi) + 1, k),
            )
            ipo.sort()  # lower code numbers listed earlier, as on the real exchanges
            if pre_share > 0 and board in (BOARD_SH_MAIN, BOARD_SZ_MAIN):
                ipo[0] = opened.toordinal()
            delist = rng.random(k) < 0.04
            for j in range(k):
                code = f"{prefix}.{numbers[j]:06d}"
                ipo_day = _next_trading_day(date.fromordinal(int(ipo[j])))
                out = None
                earliest_out = max(ipo_day + timedelta(days=730), self.start + timedelta(days=365))
                if delist[j] and code not in ANCHOR_CODES and earliest_out < last_ipo:
                    span_days = (last_ipo - earliest_out).days
                    out = _next_trading_day(
                        earliest_out + timedelta(days=int(rng.integers(0, span_days + 1)))
                    )
                name = (
                    _NAME_HEAD[rng.integers(len(_NAME_HEAD))]
                    + _NAME_HEAD[rng.integers(len(_NAME_HEAD))]
                    + _NAME_TAIL[rng.integers(len(_NAME_TAIL))]
                )
                self.listings[code] = Listing(
                    code=code,
                    name=name,
                    board=board,
                    ipo=ipo_day,
                    out=out,
                    industry=CSRC_INDUSTRIES[int(rng.integers(len(CSRC_INDUSTRIES)))],
                    size=float(rng.normal(0, 1)),
                )
        for code, (name, base, _, _) in _INDEX_INFO.items():
            self.listings[code] = Listing(code, name, "index", base, None, "", 0.0)

    def all_codes(self) -> list[str]:
        """Every stock code of the universe (listed at any time), sorted. Indexes excluded."""
        return list(self._stock_codes)

    def index_codes(self) -> list[str]:
        return list(INDEX_CODES)

    def codes(self, day: date) -> list[str]:
        """Stocks listed on `day` (IPO done, not yet delisted), sorted."""
        o = day.toordinal()
        listed = np.flatnonzero((self._ipo_ord <= o) & (self._out_ord > o))
        return [self._stock_codes[i] for i in listed.tolist()]

    def listing(self, code: str) -> Listing | None:
        return self.listings.get(code)

    def all_stock_table(self, day: date) -> text.Table:
        """query_all_stock's rows on a trading day of the window: every code listed that day
        (indexes too), sorted, with its trade status (is_traded) and name."""
        book = self._status_book()
        i = self.grid_index(day)
        if i is None:
            return text.Table([])
        o = day.toordinal()
        rows = np.flatnonzero((book.ipo <= o) & (book.out > o))
        inside = (book.first[rows] <= i) & (i <= book.last[rows])
        at = np.where(inside, book.offset[rows] + i - book.first[rows], 0)
        traded = book.is_index[rows] | (inside & book.traded[at])
        table = book.table.select(rows)
        table.put(1, text.flags(traded))
        return table

    def _status_book(self) -> _StatusBook:
        """Every code's listing span and per-day trade status in flat arrays (built once)."""
        if self._status is not None:
            return self._status
        with self._lock:
            if self._status is None:
                self._status = self._build_status_book()
        return self._status

    def _build_status_book(self) -> _StatusBook:
        codes = sorted(self.listings)
        n = len(codes)
        first, last = np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int64)
        offset = np.zeros(n, dtype=np.int64)
        traded: list[np.ndarray] = []
        size = 0
        for j, code in enumerate(codes):
            prof = self._profile(code)
            if prof is None:  # an index: traded whenever listed
                continue
            first[j], last[j], offset[j] = prof.first, prof.last, size
            traded.append(prof.traded)
            size += len(prof.traded)
        listings = [self.listings[c] for c in codes]
        table = text.Table(
            [
                text.strings(codes),
                text.flags(np.zeros(n, dtype=bool)),
                text.strings([lst.name for lst in listings]),
            ]
        )
        return _StatusBook(
            ipo=np.array([lst.ipo.toordinal() for lst in listings], dtype=np.int64),
            out=np.array([(lst.out or date.max).toordinal() for lst in listings], dtype=np.int64),
            is_index=np.array([lst.is_index for lst in listings]),
            first=first,
            last=last,
            offset=offset,
            traded=np.concatenate([*traded, np.zeros(1, dtype=bool)]),
            table=table,
        )

    def is_traded(self, code: str, day: date) -> bool:
        """True if `code` has a bar with trading (tradestatus 1) on `day`."""
        lst = self.listings.get(code)
        i = self.grid_index(day)
        if lst is None or i is None:
            return False
        if lst.is_index:
            return day >= lst.ipo
        prof = self._profile(code)
        if prof is None or not prof.first <= i <= prof.last:
            return False
        return bool(prof.traded[i - prof.first])

    # ----- per-stock model ----------------------------------------------------------------------

    def _profile(self, code: str) -> _Profile | None:
        prof = self._profiles.get(code)
        if prof is not None:
            return prof
        lst = self.listings.get(code)
        if lst is None or lst.is_index:
            return None
        with self._lock:
            prof = self._profiles.get(code)
            if prof is None:
                prof = self._build_profile(lst)
                self._profiles[code] = prof
        return prof

    def _build_profile(self, lst: Listing) -> _Profile:
        rng = np.random.default_rng((self.seed, code_id(lst.code), 1))
        first = int(np.searchsorted(self._grid_ord, lst.ipo.toordinal()))
        if lst.out is None:
            last = len(self.grid) - 1
        else:
            last = int(np.searchsorted(self._grid_ord, lst.out.toordinal())) - 1
        n = max(0, last - first + 1)
        traded = np.ones(n, dtype=bool)
        for _ in range(int(rng.poisson(n / 400))):
            begin = int(rng.integers(1, max(2, n - 1)))
            length = int(rng.geometric(0.25)) if rng.random() < 0.85 else int(rng.integers(20, 90))
            traded[begin : min(n - 1, begin + length)] = False
        st = np.zeros(n, dtype=bool)
        if n > 300 and rng.random() < 0.07:
            begin = int(rng.integers(60, n - 200))
            st[begin : begin + int(rng.integers(150, 700))] = True
        days = self.grid[first : last + 1]
        if lst.board == BOARD_STAR:
            limit = np.full(n, 20)
        elif lst.board == BOARD_CHINEXT:
            limit = np.where(days >= np.datetime64(CHINEXT_20PCT_FROM), 20, 10)
        else:
            limit = np.full(n, 10)
        limit = np.where(st, 5, limit).astype(np.int64)
        p0 = int(np.clip(rng.lognormal(math.log(12.0), 0.55), 3.0, 150.0) * 100)
        return _Profile(
            first=first,
            last=last,
            traded=traded,
            st=st,
            limit_pct=limit,
            p0_cents=p0,
            sigma=float(rng.uniform(0.016, 0.03)),
            beta=float(rng.uniform(0.6, 1.4)),
            phi=float(rng.uniform(0.996, 0.999)),
            turn_base=float(rng.uniform(0.004, 0.03)),
            total0=float(np.round(rng.lognormal(math.log(6e8), 1.0), -4)),
            float_ratio=float(rng.uniform(0.3, 1.0)),
            ipo_in_window=lst.ipo >= self.start,
        )

    def _series_of(self, code: str) -> _Series | None:
        series = self._series.get(code)
        if series is not None:
            return series
        prof = self._profile(code)
        if prof is None or prof.last < prof.first:
            return None
        with self._lock:
            series = self._series.get(code)
            if series is None:
                series = self._build_series(self.listings[code], prof)
                self._series.put(code, series)
        return series

    def _action_schedule(
        self, lst: Listing, prof: _Profile
    ) -> list[tuple[int, int, float, float, float]]:
        """Planned (report_year, listed-day index, cash, stocks, reserve) before price checks."""
        rng = np.random.default_rng((self.seed, code_id(lst.code), 3))
        years = np.arange(max(lst.ipo.year, self.start.year - 1), self.end.year)
        draw = rng.random((len(years), 6))
        june = np.array([date(int(y) + 1, 6, 1).toordinal() for y in years], dtype=np.int64)
        target = june + (draw[:, 0] * 60).astype(np.int64)
        g = np.searchsorted(self._grid_ord, target)
        k = g - prof.first
        keep = (draw[:, 1] <= 0.75) & (target <= self.end.toordinal()) & (k >= 120)
        keep &= g <= prof.last
        cash = np.round(0.02 + draw[:, 2] ** 2 * 0.8, 3)
        bonus = np.array([0.1, 0.2, 0.3, 0.5])[(draw[:, 3] * 4).astype(int)]
        stocks = np.where(draw[:, 4] < 0.1, bonus, 0.0)
        conversion = np.array([0.2, 0.3, 0.5, 1.0])[np.minimum(3, (draw[:, 5] / 0.03).astype(int))]
        reserve = np.where(draw[:, 5] < 0.12, conversion, 0.0)
        return [
            (int(years[i]), int(k[i]), float(cash[i]), float(stocks[i]), float(reserve[i]))
            for i in np.flatnonzero(keep).tolist()
        ]

    def _build_series(self, lst: Listing, prof: _Profile) -> _Series:
        rng = np.random.default_rng((self.seed, code_id(lst.code), 2))
        n = prof.last - prof.first + 1
        limit = prof.limit_pct / 100.0
        shocks = rng.standard_normal(n) * prof.sigma
        jump = rng.random(n) < 0.012
        shocks[jump] += np.where(rng.random(int(jump.sum())) < 0.55, 1, -1) * limit[jump] * 1.2
        market = self._market_log[prof.first : prof.last + 1] - self._market_log[prof.first]
        log_path = math.log(prof.p0_cents / 100) + prof.beta * market + _ou(shocks, prof.phi)
        ipo_pop = 0.0
        if prof.ipo_in_window:
            ipo_pop = float(min(0.44, abs(rng.normal(0.25, 0.15))))
            log_path = log_path + ipo_pop

        tr = np.flatnonzero(prof.traded)  # traded listed-day indices
        path = log_path[tr]
        ret = np.diff(path, prepend=math.log(prof.p0_cents / 100))
        lim_tr = prof.limit_pct[tr]

        schedule = self._action_schedule(lst, prof)
        ex_pos: dict[int, tuple[int, float, float, float]] = {}
        for year, k, cash, stocks, reserve in schedule:
            j = int(np.searchsorted(tr, k))
            if 0 < j < len(tr) and j not in ex_pos:
                ex_pos[j] = (year, cash, stocks, reserve)

        # Only "event" days need sequential treatment: the first bar, ex-right days and days whose
        # return is near the limit. Between events the close is exp(path + constant correction).
        near = np.flatnonzero(np.abs(ret) > lim_tr / 100.0 - 0.015)
        events = set(near.tolist()) | set(ex_pos) | {0}
        for _ in range(20):
            close_tr, pre_tr, ex_final = self._solve_events(
                sorted(events), path, ret, lim_tr, ex_pos, prof, ipo_pop
            )
            hi = (pre_tr * (100 + lim_tr) + 50) // 100
            lo = (pre_tr * (100 - lim_tr) + 50) // 100
            bad = np.flatnonzero((close_tr > hi) | (close_tr < lo))
            bad = bad[(bad > 0) | (not prof.ipo_in_window)]
            if len(bad) == 0:
                break
            events |= set(bad.tolist())
        else:  # pragma: no cover - rounding never cascades this far in practice
            raise RuntimeError(f"price path of {lst.code} did not converge")

        close = np.empty(n, dtype=np.int64)
        carry = np.zeros(n, dtype=np.int64)
        carry[tr] = np.arange(len(tr))
        carry = np.maximum.accumulate(np.where(prof.traded, carry, 0))
        close[:] = close_tr[carry]
        preclose = np.empty(n, dtype=np.int64)
        preclose[0] = prof.p0_cents
        preclose[1:] = close[:-1]
        preclose[tr] = pre_tr

        actions: list[CorporateAction] = []
        factors: list[AdjustFactor] = []
        steps, total_after, liqa_after = [], [prof.total0], [prof.total0 * prof.float_ratio]
        back = 1.0
        backs: list[tuple[date, float]] = []
        for j in sorted(ex_final):
            year, cash, stocks, reserve = ex_final[j]
            k = int(tr[j])
            g = prof.first + k
            ex_day = self.grid_dates[g]
            back *= float(close[k - 1]) / float(preclose[k])
            backs.append((ex_day, round(back, 6)))
            plan = self._plan_date(lst.code, year, ex_day)
            agm = plan + timedelta(days=30 + code_id(lst.code) % 20)
            agm = min(agm, ex_day - timedelta(days=14))
            regist = self.grid_dates[g - 1]
            actions.append(
                CorporateAction(
                    code=lst.code,
                    report_year=year,
                    plan_date=min(plan, agm - timedelta(days=7)),
                    agm_date=agm,
                    regist_date=regist,
                    ex_date=ex_day,
                    pay_date=ex_day,
                    cash_ps=cash,
                    stocks_ps=stocks,
                    reserve_ps=reserve,
                    preclose_cents=int(preclose[k]),
                )
            )
            if stocks + reserve > 0:
                steps.append(k)
                total_after.append(round(total_after[-1] * (1 + stocks + reserve)))
                liqa_after.append(round(liqa_after[-1] * (1 + stocks + reserve)))
        last_back = backs[-1][1] if backs else 1.0
        for ex_day, b in backs:
            factors.append(AdjustFactor(lst.code, ex_day, round(b / last_back, 6), b))
        return _Series(
            first=prof.first,
            close=close,
            preclose=preclose,
            actions=actions,
            factors=factors,
            fore_before_first=round(1.0 / last_back, 6),
            share_steps=np.array(steps, dtype=np.int64),
            total_after=np.array(total_after, dtype=np.float64),
            liqa_after=np.array(liqa_after, dtype=np.float64),
        )

    @staticmethod
    def _solve_events(
        events: list[int],
        path: np.ndarray,
        ret: np.ndarray,
        lim: np.ndarray,
        ex_pos: dict[int, tuple[int, float, float, float]],
        prof: _Profile,
        ipo_pop: float,
    ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, float, float, float]]]:
        """Closes and precloses of traded days: events sequentially, the rest vectorised.

        Between events close = half_up(exp(path) * scale * 100) with a constant `scale` set by
        the last event; the loop uses the very same float operations, so the close it assumes
        for the day before an event is the one the vectorised pass produces.
        """
        m = len(path)
        exp_path = np.exp(path)
        ep, growth, lim_l = exp_path.tolist(), np.exp(ret).tolist(), lim.tolist()
        ev_close: dict[int, int] = {}
        ev_pre: dict[int, int] = {}
        ev_scale: list[float] = []
        ex_final: dict[int, tuple[int, float, float, float]] = {}
        scale = 1.0
        floor = math.floor
        for j in events:
            if j == 0:
                prev = prof.p0_cents
            elif j - 1 in ev_close:
                prev = ev_close[j - 1]
            else:
                prev = floor(ep[j - 1] * scale * 100 + 0.5 + 1e-9)
            pre = prev
            if j in ex_pos:
                year, cash, stocks, reserve = ex_pos[j]
                if prev < 600:  # no bonus shares on cheap stocks
                    stocks = reserve = 0.0
                cash = min(cash, round(prev / 100 * 0.06, 3))
                if cash >= 0.001 or stocks + reserve > 0:
                    pre = floor((prev - cash * 100) / (1.0 + stocks + reserve) + 0.5 + 1e-9)
                    ex_final[j] = (year, cash, stocks, reserve)
            if j == 0 and prof.ipo_in_window:
                close = floor(prof.p0_cents * math.exp(ipo_pop) + 0.5 + 1e-9)
            else:
                close = floor(pre * growth[j] + 0.5 + 1e-9)
                p = lim_l[j]
                low, high = (pre * (100 - p) + 50) // 100, (pre * (100 + p) + 50) // 100
                close = min(max(close, low), high)
            close = max(close, 1)
            ev_close[j] = close
            ev_pre[j] = pre
            scale = close / 100 / ep[j]
            ev_scale.append(scale)
        ev = np.fromiter(ev_close, dtype=np.int64, count=len(ev_close))
        idx = np.zeros(m, dtype=np.int64)
        idx[ev] = np.arange(len(ev))
        marks = np.zeros(m, dtype=bool)
        marks[ev] = True
        # index of the latest event at or before each day (events include day 0)
        latest = np.maximum.accumulate(np.where(marks, np.arange(m), 0))
        scales = np.array(ev_scale)[idx[latest]]
        close_tr = np.floor(exp_path * scales * 100 + 0.5 + 1e-9).astype(np.int64)
        close_tr[ev] = np.fromiter(ev_close.values(), dtype=np.int64, count=len(ev))
        pre_tr = np.empty(m, dtype=np.int64)
        pre_tr[0] = prof.p0_cents
        pre_tr[1:] = close_tr[:-1]
        for j in ex_final:
            pre_tr[j] = ev_pre[j]
        pre_tr[0] = ev_pre[0]
        return close_tr, pre_tr, ex_final

    def _plan_date(self, code: str, year: int, ex_day: date) -> date:
        """Dividend plans are announced with the annual report."""
        return min(self.report_date(code, year, 4), ex_day - timedelta(days=30))

    def report_date(self, code: str, year: int, quarter: int) -> date:
        """Publication date of a stock's report for (year, quarter); deterministic per stock.

        Each company has a habit (early or late publisher) plus noise; an annual report never
        comes out after the next year's Q1 report (they are then published together).
        """
        table = self._report_tables.get(code)
        if table is None:
            key = self.seed * 1_000_003 + code_id(code) + 0x5EED
            lateness = _normals(key, 1, np.arange(_REPORT_ID_SPAN))[0] * 0.15
            lateness += _uniforms(key, 1, np.array([_REPORT_ID_SPAN]))[0, 0]
            table = publication_ordinals(np.clip(lateness, 0.0, 1.0))
            self._report_tables[code] = table
        rid = min(max(year * 4 + quarter - 1 - _REPORT_ID_BASE, 0), _REPORT_ID_SPAN - 1)
        return date.fromordinal(int(table[rid]))

    def fundamentals(self, code: str) -> Fundamentals | None:
        """Quarterly statements of a stock (None for indexes and unknown codes)."""
        fund = self._fundamentals.get(code)
        if fund is not None:
            return fund
        lst = self.listings.get(code)
        prof = self._profile(code)
        if lst is None or prof is None:
            return None
        with self._lock:
            fund = self._fundamentals.get(code)
            if fund is None:
                rng = np.random.default_rng((self.seed, code_id(code), 4))
                last_stat = min(self.end, lst.out or self.end)
                shares_at = self._shares_at_function(code, prof)
                scale = prof.total0 * prof.p0_cents / 100 * float(rng.uniform(0.3, 1.2))
                fund = build_fundamentals(
                    rng,
                    lst.ipo.year - 2,
                    last_stat,
                    shares_at,
                    lambda y, q: self.report_date(code, y, q),
                    scale,
                )
                self._fundamentals.put(code, fund)
        return fund

    def _shares_at_function(self, code: str, prof: _Profile):  # noqa: ANN202
        """(total, liqa) share arrays on given days, following the series' bonus-share steps."""
        series = self._series_of(code)

        def shares_at(days: list[date]) -> tuple[np.ndarray, np.ndarray]:
            if series is None or len(series.share_steps) == 0:
                ones = np.ones(len(days))
                return ones * prof.total0, ones * prof.total0 * prof.float_ratio
            ordinals = np.array([d.toordinal() for d in days], dtype=np.int64)
            k = np.searchsorted(self._grid_ord, ordinals, side="right") - 1
            step = np.searchsorted(series.share_steps, k - series.first, side="right")
            return series.total_after[step], series.liqa_after[step]

        return shares_at

    def prewarm(self) -> None:
        """Generate every stock's series, statements and the index levels up front."""
        for code in self._stock_codes:
            if self._series_of(code) is not None:
                self._valuation_table(code)
        for code in INDEX_CODES:
            self.index_series(code)
        self._status_book()

    # ----- public per-stock queries -------------------------------------------------------------

    def corporate_actions(self, code: str) -> list[CorporateAction]:
        """Dividends and bonus shares of `code` with ex-dates inside the window."""
        series = self._series_of(code)
        return list(series.actions) if series else []

    def adjust_factors(self, code: str, start: date, end: date) -> list[AdjustFactor]:
        """Adjustment factors whose ex-right date lies in [start, end] (query_adjust_factor)."""
        series = self._series_of(code)
        if series is None:
            return []
        return [f for f in series.factors if start <= f.ex_date <= end]

    def daily_bars(
        self, code: str, start: date, end: date, adjustflag: str = "3"
    ) -> list[dict[str, str]]:
        """Daily bars exactly as the server sends them (all 18 daily fields, strings)."""
        cols = self.daily_columns(code, start, end, adjustflag)
        names = list(cols)
        return [dict(zip(names, row, strict=True)) for row in zip(*cols.values(), strict=True)]

    def daily_columns(
        self,
        code: str,
        start: date,
        end: date,
        adjustflag: str = "3",
        fields: Sequence[str] | None = None,
    ) -> dict[str, list[str]]:
        """Column-oriented daily bars: field name -> list of strings (one per trading day).

        `fields` limits the work to those columns (default: all 18 daily fields).
        """
        cols = self.daily_text(code, start, end, adjustflag, fields)
        return {name: text.to_strings(col) for name, col in cols.items()}

    def daily_text(
        self,
        code: str,
        start: date,
        end: date,
        adjustflag: str = "3",
        fields: Sequence[str] | None = None,
    ) -> dict[str, text.Column]:
        """`daily_columns` as text columns (see text.py): what the server encodes from."""
        names = list(fields) if fields is not None else _DAILY_FIELDS
        lst = self.listings.get(code)
        if lst is not None and lst.is_index:
            cols = self._index_text(code, start, end)
            return {name: cols[name] for name in names}
        series = self._series_of(code)
        prof = self._profile(code)
        lo, hi = self._grid_range(start, end)
        if series is None or prof is None:
            return {name: _NO_TEXT for name in names}
        lo, hi = max(lo, prof.first), min(hi, prof.last + 1)
        if hi <= lo:
            return {name: _NO_TEXT for name in names}
        k = np.arange(lo - prof.first, hi - prof.first)
        valuation = any(name in _VALUATION_FIELDS for name in names)
        num = self._bar_numbers(code, prof, series, k, adjustflag, valuation=valuation)
        traded = prof.traded[k]
        suspended = ~traded
        n = len(k)

        def fmt(key: str, decimals: int) -> text.Column:
            if key not in num:
                return text.constant("", n)
            return text.blank(text.fixed(num[key], decimals), suspended)

        def price(key: str) -> text.Column:
            if adjustflag != "3":
                return fmt(key, 4)
            return text.blank(text.cents(num[key]), suspended)

        makers: dict[str, Callable[[], text.Column]] = {
            "date": lambda: text.take(self._grid_text, slice(lo, hi)),
            "code": lambda: text.constant(code, n),
            "open": lambda: price("open"),
            "high": lambda: price("high"),
            "low": lambda: price("low"),
            "close": lambda: price("close"),
            "preclose": lambda: price("preclose"),
            "volume": lambda: text.blank(text.integers(num["volume"]), suspended),
            "amount": lambda: fmt("amount", 4),
            "adjustflag": lambda: text.constant(adjustflag, n),
            "turn": lambda: fmt("turn", 6),
            "tradestatus": lambda: text.flags(traded),
            "pctChg": lambda: fmt("pct", 6),
            "peTTM": lambda: fmt("pe", 6),
            "pbMRQ": lambda: fmt("pb", 6),
            "psTTM": lambda: fmt("ps", 6),
            "pcfNcfTTM": lambda: fmt("pcf", 6),
            "isST": lambda: text.flags(prof.st[k]),
        }
        return {name: makers[name]() for name in names}

    def period_columns(
        self, code: str, start: date, end: date, frequency: str, adjustflag: str = "3"
    ) -> dict[str, list[str]]:
        """Weekly ("w") or monthly ("m") bars aggregated from the traded days in [start, end].

        A bar is dated on its last trading day; pctChg chains the daily changes, so it is the
        same whatever the adjustment; turn sums the daily turnover.
        """
        cols = self.period_text(code, start, end, frequency, adjustflag)
        return {name: text.to_strings(col) for name, col in cols.items()}

    def period_text(
        self, code: str, start: date, end: date, frequency: str, adjustflag: str = "3"
    ) -> dict[str, text.Column]:
        """`period_columns` as text columns (see text.py)."""
        lst = self.listings.get(code)
        empty = {f: _NO_TEXT for f in _PERIOD_FIELDS}
        lo, hi = self._grid_range(start, end)
        if lst is None:
            return empty
        if lst.is_index:
            idx = self.index_series(code)
            lo = max(lo, idx.first)
            if hi <= lo:
                return empty
            g = np.arange(lo, hi)
            s = g - idx.first
            pre_all = np.concatenate([[idx.close[0]], idx.close[:-1]])
            num = {
                "open": idx.open[s],
                "high": idx.high[s],
                "low": idx.low[s],
                "close": idx.close[s],
                "volume": idx.volume[s].astype(np.int64),
                "amount": idx.amount[s],
                "pct": (idx.close[s] / pre_all[s] - 1) * 100,
            }
            cents = False
        else:
            prof = self._profile(code)
            series = self._series_of(code)
            if prof is None or series is None:
                return empty
            lo, hi = max(lo, prof.first), min(hi, prof.last + 1)
            if hi <= lo:
                return empty
            k = np.arange(lo - prof.first, hi - prof.first)
            k = k[prof.traded[k]]
            if len(k) == 0:
                return empty
            g = k + prof.first
            num = self._bar_numbers(code, prof, series, k, adjustflag, valuation=False)
            cents = adjustflag == "3"
        group = (self._grid_ord[g] - 1) // 7 if frequency == "w" else self._grid_month[g]
        starts = np.flatnonzero(np.diff(group, prepend=group[0] - 1))
        ends = np.append(starts[1:], len(g)) - 1
        out = {
            "open": num["open"][starts],
            "high": np.maximum.reduceat(num["high"], starts),
            "low": np.minimum.reduceat(num["low"], starts),
            "close": num["close"][ends],
            "volume": np.add.reduceat(num["volume"], starts),
            "amount": np.add.reduceat(num["amount"], starts),
            "pct": np.expm1(np.add.reduceat(np.log1p(num["pct"] / 100), starts)) * 100,
        }
        n = len(starts)

        def price(values: np.ndarray) -> text.Column:
            return text.cents(values) if cents else text.fixed(values, 4)

        if lst.is_index:
            turn = text.constant("", n)
        else:
            turn = text.fixed(np.add.reduceat(num["turn"], starts), 6)
        return {
            "date": text.take(self._grid_text, g[ends]),
            "code": text.constant(code, n),
            "open": price(out["open"]),
            "high": price(out["high"]),
            "low": price(out["low"]),
            "close": price(out["close"]),
            "volume": text.integers(out["volume"]),
            "amount": text.fixed(out["amount"], 4),
            "adjustflag": text.constant(adjustflag, n),
            "turn": turn,
            "pctChg": text.fixed(out["pct"], 6),
        }

    def _bar_numbers(
        self,
        code: str,
        prof: _Profile,
        series: _Series,
        k: np.ndarray,
        adjustflag: str,
        valuation: bool = True,
    ) -> dict[str, np.ndarray]:
        """Numeric bar fields for listed-day indices k (prices in cents, or adjusted yuan)."""
        cid = code_id(code)
        g = k + prof.first
        close = series.close[k]
        pre = series.preclose[k]
        lim = prof.limit_pct[k]
        hi_lim = (pre * (100 + lim) + 50) // 100
        lo_lim = (pre * (100 - lim) + 50) // 100
        key = self.seed * 1_000_003 + cid
        noise = _normals(key, 4, g)
        gap = noise[0] * prof.sigma * 0.4
        open_ = np.clip(_half_up(pre * np.exp(gap)).astype(np.int64), lo_lim, hi_lim)
        top = np.maximum(open_, close)
        bottom = np.minimum(open_, close)
        high = np.clip(
            _half_up(top * (1 + np.abs(noise[1]) * prof.sigma * 0.5)).astype(np.int64),
            top,
            np.maximum(hi_lim, top),
        )
        low = np.clip(
            _half_up(bottom * (1 - np.abs(noise[2]) * prof.sigma * 0.5)).astype(np.int64),
            np.minimum(lo_lim, bottom),
            bottom,
        )
        pct = (close / pre - 1.0) * 100.0
        step = np.searchsorted(series.share_steps, k, side="right")
        liqa = series.liqa_after[step]
        total = series.total_after[step]
        turn_frac = prof.turn_base * np.exp(noise[3] * 0.45) * (1 + 6 * np.abs(pct) / 100)
        volume = (_half_up(liqa * turn_frac / 100) * 100).astype(np.int64)
        vwap = (open_ + high + low + close) / 400.0
        amount = np.round(volume * vwap, 4)
        out: dict[str, np.ndarray] = {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "preclose": pre,
            "volume": volume,
            "amount": amount,
            "turn": volume / liqa * 100.0,
            "pct": pct,
        }
        if valuation:
            out.update(self._valuation(code, g, close, total))
        if adjustflag in ("1", "2"):
            factor = self._factor_per_day(series, k, back=adjustflag == "1")
            for name in ("open", "high", "low", "close", "preclose"):
                out[name] = np.round(out[name] / 100.0 * factor, 4)
        return out

    def _factor_per_day(self, series: _Series, k: np.ndarray, back: bool) -> np.ndarray:
        """The 6-decimal factor in force on each listed day k (what query_adjust_factor implies)."""
        if not series.factors:
            return np.ones(len(k))
        ex_k = np.array(
            [self.grid_index(f.ex_date) - series.first for f in series.factors], dtype=np.int64
        )
        values = [f.back if back else f.fore for f in series.factors]
        before = 1.0 if back else series.fore_before_first
        table = np.array([before, *values])
        return table[np.searchsorted(ex_k, k, side="right")]

    def _valuation(
        self, code: str, g: np.ndarray, close: np.ndarray, total: np.ndarray
    ) -> dict[str, np.ndarray]:
        table = self._valuation_table(code)
        if table is None:
            return {}
        q = np.searchsorted(table["pub"], self._grid_ord[g], side="right") - 1
        q = np.clip(q, 0, len(table["pub"]) - 1)
        cap = close / 100.0 * total
        return {name: cap / table[name][q] for name in ("pe", "pb", "ps", "pcf")}

    def _valuation_table(self, code: str) -> dict[str, np.ndarray] | None:
        """Per quarter: publication ordinal and the denominators of pe/pb/ps/pcf (never 0)."""
        table = self._valuation_tables.get(code)
        if table is None:
            fund = self.fundamentals(code)
            if fund is None or len(fund) == 0:
                return None
            ttm = _ttm_table(fund)

            def nonzero(a: np.ndarray) -> np.ndarray:
                return np.where(np.abs(a) < 1.0, 1.0, a)

            table = {
                "pub": np.array([d.toordinal() for d in fund.pub_dates]),
                "pe": nonzero(ttm["parent_np"]),
                "pb": nonzero(fund.equity),
                "ps": nonzero(ttm["revenue"]),
                "pcf": nonzero(ttm["cfo"]),
            }
            self._valuation_tables.put(code, table)
        return table

    # ----- indexes ------------------------------------------------------------------------------

    def _index_text(self, code: str, start: date, end: date) -> dict[str, text.Column]:
        idx = self.index_series(code)
        lo, hi = self._grid_range(start, end)
        lo = max(lo, idx.first)
        if hi <= lo:
            return {f: _NO_TEXT for f in _DAILY_FIELDS}
        s = slice(lo - idx.first, hi - idx.first)
        close = idx.close[s]
        pre_all = np.concatenate([[idx.close[0]], idx.close[:-1]])
        pre = pre_all[s]
        n = hi - lo
        empty = text.constant("", n)
        return {
            "date": text.take(self._grid_text, slice(lo, hi)),
            "code": text.constant(code, n),
            "open": text.fixed(idx.open[s], 4),
            "high": text.fixed(idx.high[s], 4),
            "low": text.fixed(idx.low[s], 4),
            "close": text.fixed(close, 4),
            "preclose": text.fixed(pre, 4),
            "volume": text.integers(idx.volume[s]),
            "amount": text.fixed(idx.amount[s], 4),
            "adjustflag": text.constant("3", n),
            "turn": empty,
            "tradestatus": text.constant("1", n),
            "pctChg": text.fixed((close / pre - 1) * 100, 6),
            "peTTM": empty,
            "pbMRQ": empty,
            "psTTM": empty,
            "pcfNcfTTM": empty,
            "isST": text.constant("0", n),
        }

    def rebalance_dates(self) -> list[date]:
        """Index review effective dates: the Monday after the 2nd Friday of June and December."""
        out = [self.grid_dates[0]]
        for year in range(self.start.year, self.end.year + 1):
            for month in (6, 12):
                first = date(year, month, 1)
                friday = first + timedelta(days=(4 - first.weekday()) % 7 + 7)
                day = _next_trading_day(friday + timedelta(days=3))
                if self.grid_dates[0] < day <= self.end:
                    out.append(day)
        return out

    def index_members(self, index: str, day: date) -> list[str]:
        """Members of an index (or of 'hs300' / 'sz50' / 'zz500') in force on `day`."""
        rule = _INDEX_INFO[index][3] if index in _INDEX_INFO else index
        reviews = self.rebalance_dates()
        effective = reviews[0]
        for r in reviews:
            if r <= day:
                effective = r
        return self._members_at_review(rule, effective)

    def _members_at_review(self, rule: str, review: date) -> list[str]:
        key = (rule, review)
        cached = self._member_cache.get(key)
        if cached is not None:
            return cached
        o = review.toordinal()
        # Ranked by a size score that drifts a little each half-year, so reviews change members.
        period = review.year * 2 + (review.month > 6)
        drift = _normals(self.seed * 7919 + period, 1, self._code_ids)[0] * 0.15
        score = self._sizes + drift
        eligible = (self._ipo_ord <= o - 90) & (self._out_ord > o)  # seasoned, still listed
        pools = {
            "sh_all": eligible & self._is_sh,
            "sz50": eligible & self._is_sh,
            "hs300": eligible,
            "zz500": eligible,
            "sz_component": eligible & ~self._is_sh,
            "chinext100": eligible & self._is_chinext,
        }
        ranks = {"sh_all": None, "sz50": (0, 50), "hs300": (0, 300), "zz500": (300, 800)}
        ranks.update({"sz_component": (0, 500), "chinext100": (0, 100)})
        if rule not in pools:
            raise KeyError(f"unknown index rule {rule!r}")
        candidates = np.flatnonzero(pools[rule])
        window = ranks[rule]
        if window is not None:
            order = candidates[np.argsort(-score[candidates], kind="stable")]
            candidates = order[window[0] : window[1]]
        members = [self._stock_codes[i] for i in candidates.tolist()]
        members = sorted(members)
        self._member_cache[key] = members
        return members

    def index_series(self, code: str) -> _IndexSeries:
        """Daily index levels: a cap-weighted (free float) return chain over the members."""
        cached = self._indexes.get(code)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._indexes.get(code)
            if cached is None:
                cached = self._build_index(code)
                self._indexes[code] = cached
        return cached

    def _build_index(self, code: str) -> _IndexSeries:
        name, base, level0, rule = _INDEX_INFO[code]
        first = int(np.searchsorted(self._grid_ord, max(base, self.start).toordinal()))
        n = len(self.grid) - first
        weight = np.zeros(n)
        sums = {f: np.zeros(n) for f in ("close", "open", "high", "low")}
        volume = np.zeros(n)
        amount = np.zeros(n)
        reviews = [r for r in self.rebalance_dates()]
        bounds = [int(np.searchsorted(self._grid_ord, r.toordinal())) for r in reviews]
        bounds.append(len(self.grid))
        periods: dict[str, list[tuple[int, int]]] = {}
        for i, review in enumerate(reviews):
            lo, hi = max(bounds[i], first), bounds[i + 1]
            if hi <= lo:
                continue
            for c in self._members_at_review(rule, review):
                spans = periods.setdefault(c, [])
                if spans and spans[-1][1] == lo:  # still a member: extend the span
                    spans[-1] = (spans[-1][0], hi)
                else:
                    spans.append((lo, hi))
        for c, spans in periods.items():
            prof = self._profile(c)
            series = self._series_of(c)
            if prof is None or series is None:
                continue
            for lo, hi in spans:
                lo, hi = max(lo, prof.first), min(hi, prof.last + 1)
                if hi <= lo:
                    continue
                k = np.arange(lo - prof.first, hi - prof.first)
                k = k[prof.traded[k]]
                if len(k) == 0:
                    continue
                num = self._bar_numbers(c, prof, series, k, "3", valuation=False)
                step = np.searchsorted(series.share_steps, k, side="right")
                w = num["preclose"] / 100.0 * series.liqa_after[step]
                pos = k + prof.first - first  # unique within one span: plain += is exact
                weight[pos] += w
                for f in sums:
                    sums[f][pos] += w * (num[f] / num["preclose"] - 1.0)
                volume[pos] += num["volume"]
                amount[pos] += num["amount"]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = {f: np.where(weight > 0, s / weight, 0.0) for f, s in sums.items()}
        growth = 1.0 + rel["close"]
        growth[0] = 1.0
        close = level0 * np.cumprod(growth)
        pre = np.concatenate([[level0], close[:-1]])
        open_ = pre * (1 + rel["open"])
        high = np.maximum(pre * (1 + rel["high"]), np.maximum(open_, close))
        low = np.minimum(pre * (1 + rel["low"]), np.minimum(open_, close))
        return _IndexSeries(
            first=first,
            close=np.round(close, 4),
            open=np.round(open_, 4),
            high=np.round(high, 4),
            low=np.round(low, 4),
            volume=volume,
            amount=np.round(amount, 4),
        )


_PERIOD_FIELDS = [f.name for f in K_PERIOD_FIELDS]
_VALUATION_FIELDS = frozenset({"peTTM", "pbMRQ", "psTTM", "pcfNcfTTM"})
_DAILY_FIELDS = [f.name for f in K_DAILY_FIELDS]
_NO_TEXT = text.strings([])  # a column of no values


def _ttm_table(fund: Fundamentals) -> dict[str, np.ndarray]:
    """Trailing-twelve-month sums per quarter (annualised while history is shorter than a year)."""
    out = {}
    for name, values in (
        ("parent_np", fund.parent_net_profit),
        ("revenue", fund.revenue),
        ("cfo", fund.cfo),
    ):
        csum = np.concatenate([[0.0], np.cumsum(values)])
        i = np.arange(len(values))
        lo = np.maximum(0, i - 3)
        out[name] = (csum[i + 1] - csum[lo]) * 4 / (i + 1 - lo)
    return out


def _next_trading_day(day: date) -> date:
    while not is_trading_day(day):
        day += timedelta(days=1)
    return day
