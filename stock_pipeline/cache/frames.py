"""The frames the read API returns and the cache stores: their columns, the latest-bar hash's
text form, and the price adjustment. Pure: no I/O.

Columns come from the table specs (tables.py: stock_daily, INDICATOR_COLUMNS), so a column
added there reaches the cache and the read API without another list to edit. Whether a frame
was read from Redis or from PostgreSQL, it is built here from Columns, so both are identical.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd

from stock_pipeline.cache.columns import (
    NAT_DAYS,
    STR_DTYPE,
    Columns,
    Kind,
    from_rows,
    kind_of_dtype,
    to_frame,
)
from stock_pipeline.warehouse.reader import frame_dtypes
from stock_pipeline.warehouse.tables import INDICATOR_COLUMNS, stock_daily

Adjust = Literal["none", "hfq", "qfq"]
ADJUSTMENTS: tuple[str, ...] = get_args(Adjust)
PRICE_COLUMNS = ("open", "high", "low", "close", "pre_close")
FACTOR_COLUMN = "back_adjust_factor"
INDICATOR_DATE = "indicator_date"  # the latest indicators' own day, in `latest` frames
# The latest hash's one packed field: the row in codec form, for readers (HGETALL of the text
# fields costs redis-py ~0.25 ms of parsing; one field, ~20 us).
PACKED_FIELD = "_frame"


def _bar_kinds() -> dict[str, Kind]:
    skipped = {"code", "trade_date", "updated_at"}
    columns = [c for c in stock_daily.c if c.name not in skipped]
    return {name: kind_of_dtype(dtype) for name, dtype in frame_dtypes(columns).items()}


@dataclass(frozen=True)
class Layout:
    """A frame's columns and their kinds, in order."""

    names: tuple[str, ...]
    kinds: tuple[Kind, ...]

    @classmethod
    def of(cls, kinds: Mapping[str, Kind]) -> Layout:
        return cls(tuple(kinds), tuple(kinds.values()))

    def kind(self, name: str) -> Kind:
        return self.kinds[self.names.index(name)]

    def rows(self, rows: Sequence[Sequence[object]]) -> Columns:
        """DB-API rows in this layout's order (dates as days since 1970) as Columns."""
        return from_rows(self.names, self.kinds, rows)

    def check(self, columns: Columns) -> Columns:
        """`columns` if they have this layout; ValueError otherwise (a cache written by a
        version of the code with other columns)."""
        if columns.names != self.names or columns.kinds != self.kinds:
            raise ValueError(
                f"cached frame has columns {list(columns.names)}, this code expects "
                f"{list(self.names)}: refresh the cache"
            )
        return columns

    def select(self, names: Iterable[str]) -> Layout:
        wanted = list(names)
        return Layout(tuple(wanted), tuple(self.kind(n) for n in wanted))


BAR_VALUES: dict[str, Kind] = _bar_kinds()  # stock_daily's values: open ... back_adjust_factor
INDICATOR_VALUES: dict[str, Kind] = dict.fromkeys(INDICATOR_COLUMNS, "float")

# What the cache stores and the read API returns.
BARS = Layout.of({"trade_date": "date", **BAR_VALUES})
INDICATORS = Layout.of({"trade_date": "date", **INDICATOR_VALUES})
LATEST = Layout.of({"trade_date": "date", **BAR_VALUES, INDICATOR_DATE: "date", **INDICATOR_VALUES})
CROSS_SECTION = Layout.of({"code": "text", "trade_date": "date", **BAR_VALUES, **INDICATOR_VALUES})


def check_adjust(adjust: str | None) -> Adjust:
    """'none', 'hfq' or 'qfq' (None means 'none'); ValueError otherwise."""
    value = "none" if adjust is None else adjust
    if value not in ADJUSTMENTS:
        raise ValueError(
            f"adjust must be 'none' (as traded), 'hfq' (back-adjusted) or 'qfq' "
            f"(forward-adjusted); got {adjust!r}"
        )
    return value  # type: ignore[return-value]


def check_columns(
    requested: str | Iterable[str] | None, valid: Sequence[str], what: str
) -> tuple[str, ...]:
    """The requested columns (all of `valid` for None; a str is one column), in the order
    asked; ValueError naming the unknown ones and listing the valid ones."""
    if requested is None:
        return tuple(valid)
    wanted = (requested,) if isinstance(requested, str) else tuple(requested)
    unknown = [c for c in wanted if c not in valid]
    if unknown:
        raise ValueError(f"unknown {what} column(s) {unknown}; valid: {', '.join(valid)}")
    if not wanted:
        raise ValueError(f"no {what} columns asked for; valid: {', '.join(valid)}")
    return wanted


def day_number(day: dt.date) -> int:
    """Days since 1970-01-01: how the date columns hold a day."""
    return (day - dt.date(1970, 1, 1)).days


def between(columns: Columns, start: int | None, end: int | None) -> Columns:
    """The rows whose trade_date (sorted ascending) lies in [start, end] (day numbers)."""
    days = columns.others["trade_date"]
    low = 0 if start is None else int(np.searchsorted(days, start, "left"))
    high = len(days) if end is None else int(np.searchsorted(days, end, "right"))
    return columns.take(slice(low, max(low, high)))


def adjust_prices(columns: Columns, adjust: Adjust, latest_factor: float) -> Columns:
    """Bars with open/high/low/close/pre_close back-adjusted (price * factor of the day) or
    forward-adjusted (price * factor / `latest_factor`, the factor of the code's latest bar);
    'none' leaves them as traded. Other columns are kept as stored."""
    if adjust == "none":
        return columns
    floats = columns.floats.copy()
    prices = [columns.float_row(name) for name in PRICE_COLUMNS]
    adjusted = floats[prices] * floats[columns.float_row(FACTOR_COLUMN)]
    floats[prices] = adjusted / latest_factor if adjust == "qfq" else adjusted
    return columns.with_floats(floats)


def bars_frame(columns: Columns, adjust: Adjust, latest_factor: float) -> pd.DataFrame:
    """Bars (BARS layout) as the read API returns them: indexed by trade_date."""
    return to_frame(adjust_prices(columns, adjust, latest_factor), index="trade_date")


def latest_factor(columns: Columns) -> float:
    """The factor of the last row (the code's latest bar); NaN without rows."""
    factors = columns.floats[columns.float_row(FACTOR_COLUMN)]
    return float(factors[-1]) if len(factors) else float("nan")


def coded_frame(code: str, columns: Columns) -> pd.DataFrame:
    """One code's row(s) (LATEST layout) indexed by code."""
    return to_frame(columns, index=pd.Index([code] * columns.rows, dtype=STR_DTYPE, name="code"))


# The latest-bar hash: one field per LATEST column, values as text a person (or another
# language) reads: floats as repr (they round-trip exactly), dates ISO, bools 1/0, NULL empty.


def hash_fields(columns: Columns) -> list[dict[str, str]]:
    """Each row of `columns` (LATEST layout) as the fields of its hash."""
    texts = {
        name: _texts(columns, name, kind)
        for name, kind in zip(columns.names, columns.kinds, strict=True)
    }
    return [{name: values[i] for name, values in texts.items()} for i in range(columns.rows)]


def _texts(columns: Columns, name: str, kind: Kind) -> list[str]:
    values = columns.column(name)
    if kind == "float":
        return ["" if v != v else repr(v) for v in values.tolist()]
    if kind == "date":
        epoch = np.datetime64("1970-01-01", "D")
        return [
            "" if d == NAT_DAYS else str(epoch + np.timedelta64(d, "D")) for d in values.tolist()
        ]
    if kind == "int":
        mask = columns.masks[name].tolist()
        return ["" if null else str(v) for v, null in zip(values.tolist(), mask, strict=True)]
    if kind == "bool":
        return ["" if v < 0 else str(v) for v in values.tolist()]
    return values.tolist()


_PARSERS = {
    "float": lambda text: float(text) if text else None,
    "int": lambda text: int(text) if text else None,
    "bool": lambda text: bool(int(text)) if text else None,
    "date": lambda text: day_number(dt.date.fromisoformat(text.decode())) if text else None,
}


def from_hash(fields: Mapping[bytes, bytes], layout: Layout = LATEST) -> Columns:
    """A hash made from `hash_fields` (as redis-py returns it) as one row of Columns.
    ValueError naming the field for a value that does not parse, KeyError for a missing one."""
    row = []
    for name, kind in zip(layout.names, layout.kinds, strict=True):
        text = fields[name.encode()]
        try:
            row.append(_PARSERS[kind](text))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"field {name} holds {text[:40]!r}, not a {kind}") from None
    return layout.rows([row])
