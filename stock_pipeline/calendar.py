"""The SSE trading calendar, offline: which days are sessions, and how far that is known.

Two sources, merged:
- bundled: the XSHG holidays that `exchange_calendars` ships (hard-coded by its contributors,
  1991 to the end of its last year, today 2026-12-31). Read from the package's source file
  without importing the package, which would cost about 1.4 s at every definitions load;
- stored: BaoStock's `query_trade_dates`, written by the calendar asset as a small JSON file
  under STOCK_PIPELINE_HOME (`store_baostock_calendar`). It extends the bundled calendar past
  its end without a code change or a package upgrade.

Where both know a day, the bundled calendar decides and the calendar asset's check reports any
disagreement (`disagreements`). No day past what either source knows is ever a session: the
trading-day partitions end where the calendar does.
"""

from __future__ import annotations

import ast
import datetime as dt
import importlib.util
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger("stock_pipeline.calendar")

# The Shanghai Stock Exchange's first trading day.
SSE_FIRST_SESSION = dt.date(1990, 12, 19)
STORED_CALENDAR_FILE = Path("calendar") / "baostock_trade_dates.json"
_XSHG_MODULE = "exchange_calendar_xshg.py"
_XSHG_HOLIDAYS = "precomputed_shanghai_holidays"


class NotATradingDayError(ValueError):
    """A date that must be a session is not one (or is not known to be one yet)."""


def _days(values: Iterable[dt.date]) -> np.ndarray:
    return np.array(sorted(values), dtype="datetime64[D]")


def _date(value: np.datetime64) -> dt.date:
    return value.astype("datetime64[D]").item()


@dataclass(frozen=True)
class BundledCalendar:
    """XSHG sessions as exchange_calendars knows them, and the last day it knows."""

    sessions: np.ndarray  # datetime64[D], sorted
    last_day: dt.date
    version: str


def _xshg_holidays_from_source(path: Path) -> list[dt.date]:
    """The holiday list literal of exchange_calendar_xshg.py (`pd.to_datetime([...])`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == _XSHG_HOLIDAYS for t in node.targets)
            and isinstance(node.value, ast.Call)
            and node.value.args
        ):
            return [dt.date.fromisoformat(s) for s in ast.literal_eval(node.value.args[0])]
    raise ValueError(f"{path} has no {_XSHG_HOLIDAYS} list")


def _xshg_holidays_from_library() -> list[dt.date]:
    """The slow but sure way: ask exchange_calendars itself (imports every calendar)."""
    import exchange_calendars

    calendar = exchange_calendars.get_calendar("XSHG", start=SSE_FIRST_SESSION.isoformat())
    sessions = {d.date() for d in calendar.sessions}
    end = calendar.last_session.date()
    weekdays = np.arange(SSE_FIRST_SESSION, end + dt.timedelta(days=1), dtype="datetime64[D]")
    weekdays = weekdays[np.is_busday(weekdays)]
    return [d for d in (_date(w) for w in weekdays) if d not in sessions]


def _package_folder() -> Path:
    spec = importlib.util.find_spec("exchange_calendars")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("exchange_calendars is not installed: run `uv sync`")
    return Path(next(iter(spec.submodule_search_locations)))


def _xshg_source() -> Path:
    return _package_folder() / _XSHG_MODULE


@lru_cache(maxsize=1)
def bundled_calendar() -> BundledCalendar:
    """XSHG sessions from SSE_FIRST_SESSION to the end of exchange_calendars' last year."""
    folder = _package_folder()
    try:
        holidays = _xshg_holidays_from_source(_xshg_source())
    except (OSError, SyntaxError, ValueError) as exc:
        log.warning("[calendar] reading XSHG holidays from source failed (%s); importing", exc)
        holidays = _xshg_holidays_from_library()
    last_day = dt.date(max(h.year for h in holidays), 12, 31)
    days = np.arange(SSE_FIRST_SESSION, last_day + dt.timedelta(days=1), dtype="datetime64[D]")
    sessions = days[np.is_busday(days, holidays=np.array(holidays, dtype="datetime64[D]"))]
    version = _package_version(folder)
    return BundledCalendar(sessions, last_day, version)


def _package_version(folder: Path) -> str:
    try:
        text = (folder / "_version.py").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    match = re.search(r"version\s*=\s*['\"]([^'\"]+)['\"]", text)
    return match.group(1) if match else "unknown"


@dataclass(frozen=True)
class StoredCalendar:
    """BaoStock's calendar as the calendar asset stored it: sessions in [first_day, last_day]."""

    sessions: np.ndarray
    first_day: dt.date
    last_day: dt.date


def stored_calendar_path(home: Path) -> Path:
    return home / STORED_CALENDAR_FILE


def store_baostock_calendar(
    home: Path, days: Sequence[dt.date], is_session: Sequence[bool]
) -> StoredCalendar:
    """Write BaoStock's trade dates (every calendar day with its flag) for definitions to read.

    Written atomically: a reader sees the old file or the new one.
    """
    if len(days) == 0:
        raise ValueError("BaoStock returned no trade dates: nothing to store")
    order = np.argsort(np.array(days, dtype="datetime64[D]"))
    ordered = [days[i] for i in order]
    first, last = ordered[0], ordered[-1]
    expected = (last - first).days + 1
    if len(set(ordered)) != expected:
        raise ValueError(
            f"BaoStock's trade dates from {first} to {last} have {len(set(ordered))} distinct "
            f"days, expected {expected}: the calendar has gaps"
        )
    sessions = [d for d, s in zip(days, is_session, strict=True) if s]
    stored = StoredCalendar(_days(sessions), first, last)
    path = stored_calendar_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "source": "baostock query_trade_dates",
        "first_day": first.isoformat(),
        "last_day": last.isoformat(),
        "sessions": [d.isoformat() for d in sorted(sessions)],
    }
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=".calendar-", suffix=".tmp", delete=False, encoding="utf-8"
    ) as tmp:
        json.dump(payload, tmp, separators=(",", ":"))
    os.replace(tmp.name, path)
    return stored


def read_stored_calendar(home: Path) -> StoredCalendar | None:
    """The stored BaoStock calendar, or None when there is none (or it is unreadable)."""
    path = stored_calendar_path(home)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        first = dt.date.fromisoformat(payload["first_day"])
        last = dt.date.fromisoformat(payload["last_day"])
        sessions = _days(dt.date.fromisoformat(d) for d in payload["sessions"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Definitions must load anyway: fall back to the bundled calendar and say why.
        log.warning("[calendar] ignoring %s (%s); rematerialize raw_trade_dates", path, exc)
        return None
    return StoredCalendar(sessions, first, last)


@dataclass(frozen=True)
class TradingCalendar:
    """SSE sessions up to `last_day`, the last day whose status some source knows."""

    sessions: np.ndarray  # datetime64[D], sorted, unique
    last_day: dt.date
    bundled_last_day: dt.date
    stored_last_day: dt.date | None = None

    @property
    def extended(self) -> bool:
        """True when the stored BaoStock calendar reaches past the bundled one."""
        return self.last_day > self.bundled_last_day

    def _index(self, day: dt.date, side: str = "left") -> int:
        return int(np.searchsorted(self.sessions, np.datetime64(day, "D"), side=side))

    def is_session(self, day: dt.date) -> bool:
        i = self._index(day)
        return i < len(self.sessions) and _date(self.sessions[i]) == day

    def sessions_between(self, start: dt.date, end: dt.date) -> list[dt.date]:
        """Sessions in [start, end], in order."""
        lo, hi = self._index(start), self._index(end, "right")
        return [_date(d) for d in self.sessions[lo:hi]]

    def previous_session(self, day: dt.date) -> dt.date | None:
        """The last session strictly before `day`."""
        i = self._index(day)
        return _date(self.sessions[i - 1]) if i > 0 else None

    def next_session(self, day: dt.date) -> dt.date | None:
        """The first session strictly after `day` (None past the known calendar)."""
        i = self._index(day, "right")
        return _date(self.sessions[i]) if i < len(self.sessions) else None

    def first_session_on_or_after(self, day: dt.date) -> dt.date | None:
        i = self._index(day)
        return _date(self.sessions[i]) if i < len(self.sessions) else None

    def closed_weekdays(self, start: dt.date, end: dt.date) -> list[dt.date]:
        """Mondays to Fridays in [start, end] that are not sessions (holidays)."""
        days = np.arange(start, end + dt.timedelta(days=1), dtype="datetime64[D]")
        weekdays = days[np.is_busday(days)]
        closed = weekdays[~np.isin(weekdays, self.sessions)]
        return [_date(d) for d in closed]

    def require_session(self, day: dt.date, what: str = "date") -> dt.date:
        """`day` itself, or NotATradingDayError naming the nearest sessions."""
        if self.is_session(day):
            return day
        if day > self.last_day:
            raise NotATradingDayError(
                f"{what} {day} is past the known trading calendar (it ends {self.last_day}); "
                "materialize raw_trade_dates to extend it from BaoStock"
            )
        before, after = self.previous_session(day), self.next_session(day)
        nearest = " and ".join(str(d) for d in (before, after) if d is not None)
        kind = "a weekend" if day.weekday() >= 5 else "an exchange holiday"
        raise NotATradingDayError(
            f"{what} {day} is not a trading day ({kind}); the nearest trading days are {nearest}"
        )

    def require_range(self, start: dt.date, end: dt.date) -> list[dt.date]:
        """The sessions of [start, end], both of which must be sessions."""
        self.require_session(start, "start")
        self.require_session(end, "end")
        if end < start:
            raise NotATradingDayError(f"end {end} is before start {start}")
        return self.sessions_between(start, end)


def merge(bundled: BundledCalendar, stored: StoredCalendar | None) -> TradingCalendar:
    """The bundled calendar, extended by the stored one past the bundled end."""
    if stored is None or stored.last_day <= bundled.last_day:
        return TradingCalendar(
            bundled.sessions,
            bundled.last_day,
            bundled.last_day,
            stored.last_day if stored else None,
        )
    gap_from = bundled.last_day + dt.timedelta(days=1)
    if stored.first_day > gap_from:
        # BaoStock's list starts after the bundled end: the days between are unknown.
        log.warning(
            "[calendar] stored calendar starts %s, after the bundled end %s: not used",
            stored.first_day,
            bundled.last_day,
        )
        return TradingCalendar(bundled.sessions, bundled.last_day, bundled.last_day)
    later = stored.sessions[stored.sessions > np.datetime64(bundled.last_day, "D")]
    return TradingCalendar(
        np.concatenate([bundled.sessions, later]),
        stored.last_day,
        bundled.last_day,
        stored.last_day,
    )


def load_calendar(home: Path | None) -> TradingCalendar:
    """The merged calendar: bundled XSHG plus, when `home` holds one, the stored BaoStock one."""
    return merge(bundled_calendar(), read_stored_calendar(home) if home is not None else None)


@dataclass(frozen=True)
class Disagreement:
    day: dt.date
    bundled: bool  # is a session according to exchange_calendars
    baostock: bool

    def __str__(self) -> str:
        def word(flag: bool) -> str:
            return "open" if flag else "closed"

        bundled, baostock = word(self.bundled), word(self.baostock)
        return f"{self.day}: exchange_calendars {bundled}, BaoStock {baostock}"


def disagreements(
    bundled: BundledCalendar, days: Sequence[dt.date], is_session: Sequence[bool]
) -> list[Disagreement]:
    """Days both calendars cover on which they differ."""
    arr = np.array(days, dtype="datetime64[D]")
    flags = np.asarray(is_session, dtype=bool)
    covered = (arr >= bundled.sessions[0]) & (arr <= np.datetime64(bundled.last_day, "D"))
    arr, flags = arr[covered], flags[covered]
    in_bundled = np.isin(arr, bundled.sessions)
    differ = np.flatnonzero(in_bundled != flags)
    return [Disagreement(_date(arr[i]), bool(in_bundled[i]), bool(flags[i])) for i in differ]
