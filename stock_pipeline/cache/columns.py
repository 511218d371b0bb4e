"""Typed columns of a small frame: what the codec writes and reads, what PostgreSQL rows are
turned into, and what the read API's frames are built from. Pure: no I/O.

Float columns are kept together as one (columns x rows) float64 block, because the frames are
mostly floats: a decoded block is one np.frombuffer and becomes one pandas block, which keeps
building a frame at tens of microseconds (pd.DataFrame(dict) costs 200-400 us for the same).
Every other column is one array in its wire form:

    date  int32 days since 1970-01-01, NAT_DAYS for NULL   -> datetime64[ns], NaT
    float float64, NaN for NULL (in the block)             -> float64
    int   int64 plus a bool mask (True: NULL)               -> Int64
    bool  int8: 1, 0, or -1 for NULL                         -> boolean
    text  str, never NULL                                   -> str
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandas.api.internals import create_dataframe_from_blocks

Kind = Literal["date", "float", "int", "bool", "text"]
KINDS: tuple[Kind, ...] = ("date", "float", "int", "bool", "text")

NAT_DAYS = np.iinfo(np.int32).min  # a date column's NULL
_DAY_NS = 86_400 * 10**9
STR_DTYPE = pd.StringDtype(na_value=np.nan)  # what dtype="str" means (pandas 3)


@dataclass(frozen=True)
class Columns:
    """A small frame's columns (see the module docstring for each kind's form).

    `names` and `kinds` are in frame order; `floats` holds the float columns in that order, one
    row per column; `others` the remaining columns by name; `masks` the NULL masks of int
    columns.
    """

    names: tuple[str, ...]
    kinds: tuple[Kind, ...]
    rows: int
    floats: np.ndarray
    others: Mapping[str, np.ndarray]
    masks: Mapping[str, np.ndarray]

    @property
    def float_names(self) -> tuple[str, ...]:
        return _float_names(self.names, self.kinds)

    def float_row(self, name: str) -> int:
        """The row of the float column `name` in `floats`."""
        return self.float_names.index(name)

    def column(self, name: str) -> np.ndarray:
        """One column in its wire form (a float column as a row of the block)."""
        if name in self.others:
            return self.others[name]
        return self.floats[self.float_row(name)]

    def take(self, rows: slice) -> Columns:
        """The rows in `rows` (a slice: views, no copy)."""
        floats = self.floats[:, rows]
        return Columns(
            self.names,
            self.kinds,
            floats.shape[1],
            floats,
            {name: values[rows] for name, values in self.others.items()},
            {name: mask[rows] for name, mask in self.masks.items()},
        )

    def with_floats(self, floats: np.ndarray) -> Columns:
        """The same columns with another float block (e.g. adjusted prices)."""
        return Columns(self.names, self.kinds, self.rows, floats, self.others, self.masks)


@functools.cache
def _float_names(names: tuple[str, ...], kinds: tuple[Kind, ...]) -> tuple[str, ...]:
    return tuple(n for n, k in zip(names, kinds, strict=True) if k == "float")


def empty(names: Sequence[str], kinds: Sequence[Kind]) -> Columns:
    """No rows, with these columns."""
    return from_rows(names, kinds, [])


def check_layout(names: Sequence[str], kinds: Sequence[Kind]) -> None:
    """Raise ValueError for two columns of one name, or a kind that is not one of KINDS."""
    _check_layout(tuple(names), tuple(kinds))


@functools.cache
def _check_layout(names: tuple[str, ...], kinds: tuple[Kind, ...]) -> None:
    if len(names) != len(kinds):
        raise ValueError(f"{len(names)} column names but {len(kinds)} kinds")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"columns {twice} appear more than once")
    unknown = sorted({k for k in kinds if k not in KINDS})
    if unknown:
        raise ValueError(f"unknown column kinds {unknown}: use {', '.join(KINDS)}")


def from_rows(
    names: Sequence[str], kinds: Sequence[Kind], rows: Sequence[Sequence[Any]]
) -> Columns:
    """DB-API rows (tuples in `names` order, None for NULL) as Columns.

    A date column must arrive as whole days since 1970-01-01 (select `day - DATE '1970-01-01'`):
    one int per row instead of a datetime.date, which is faster to fetch and to convert.
    """
    names, kinds = tuple(names), tuple(kinds)
    check_layout(names, kinds)
    table = np.array(rows, dtype=object).reshape(len(rows), len(names))
    positions = [i for i, k in enumerate(kinds) if k == "float"]
    floats = np.ascontiguousarray(table[:, positions].T.astype(np.float64))
    others: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for i, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        if kind == "float":
            continue
        values = table[:, i]
        null = np.equal(values, None)
        if kind == "text":
            if null.any():
                raise ValueError(f"text column {name} holds NULL: text columns cannot")
            others[name] = values.astype(str)
            continue
        filled = np.where(null, 0, values)
        if kind == "date":
            others[name] = np.where(null, NAT_DAYS, filled).astype(np.int32)
        elif kind == "int":
            others[name], masks[name] = filled.astype(np.int64), null.astype(bool)
        else:  # bool
            others[name] = np.where(null, -1, filled.astype(bool)).astype(np.int8)
    return Columns(names, kinds, len(rows), floats, others, masks)


def kind_of_dtype(dtype: Any) -> Kind:
    """The kind a pandas/NumPy dtype is stored as; ValueError for one the cache cannot hold."""
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if isinstance(dtype, np.dtype) and dtype.kind == "M":
        return "date"
    if pd.api.types.is_string_dtype(dtype):
        return "text"
    raise ValueError(f"dtype {dtype} cannot be stored: use float, int, bool, dates or text")


def from_frame(frame: pd.DataFrame) -> Columns:
    """A DataFrame's columns (its index is left out) as Columns."""
    names = tuple(str(name) for name in frame.columns)
    try:
        kinds = tuple(kind_of_dtype(dtype) for dtype in frame.dtypes)
    except ValueError as exc:
        bad = next(n for n, d in frame.dtypes.items() if _kind_or_none(d) is None)
        raise ValueError(f"column {bad}: {exc}") from None
    check_layout(names, kinds)
    rows = len(frame)
    float_columns = [frame.iloc[:, i] for i, k in enumerate(kinds) if k == "float"]
    floats = (
        np.vstack([c.to_numpy(np.float64, na_value=np.nan) for c in float_columns])
        if float_columns
        else np.empty((0, rows))
    )
    others: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for i, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        series = frame.iloc[:, i]
        null = series.isna().to_numpy()
        if kind == "date":
            others[name] = _days(name, series, null)
        elif kind == "int":
            others[name] = series.to_numpy(np.int64, na_value=0)
            masks[name] = null
        elif kind == "bool":
            values = series.to_numpy(bool, na_value=False)
            others[name] = np.where(null, -1, values).astype(np.int8)
        elif kind == "text":
            if null.any():
                raise ValueError(f"text column {name} holds NULL: text columns cannot")
            others[name] = series.to_numpy(str)
    return Columns(names, kinds, rows, np.ascontiguousarray(floats), others, masks)


def _kind_or_none(dtype: Any) -> Kind | None:
    try:
        return kind_of_dtype(dtype)
    except ValueError:
        return None


def _days(name: str, series: pd.Series, null: np.ndarray) -> np.ndarray:
    if getattr(series.dt, "tz", None) is not None:
        raise ValueError(f"column {name} holds timestamps with a time zone: store dates")
    ns = series.to_numpy("datetime64[ns]").view(np.int64)
    if (ns[~null] % _DAY_NS).any():
        raise ValueError(f"column {name} holds times of day: store dates")
    days = np.where(null, NAT_DAYS, ns // _DAY_NS)
    if (days[~null] <= NAT_DAYS).any() or (days[~null] > np.iinfo(np.int32).max).any():
        raise ValueError(f"column {name} holds a date outside int32 days")
    return days.astype(np.int32)


def dates(days: np.ndarray) -> np.ndarray:
    """int32 days since 1970 (NAT_DAYS for NULL) as datetime64[ns]."""
    wide = days.astype(np.int64)
    null = days == NAT_DAYS
    if null.any():
        wide[null] = np.iinfo(np.int64).min  # NaT
    return wide.view("datetime64[D]").astype("datetime64[ns]")


def pandas_array(columns: Columns, name: str, kind: Kind) -> Any:
    """Column `name` (not a float) as the array a frame holds."""
    values = columns.others[name]
    if kind == "date":
        return dates(values)
    if kind == "int":
        return pd.arrays.IntegerArray(values.copy(), columns.masks[name].copy())
    if kind == "bool":
        return pd.arrays.BooleanArray(values == 1, values < 0)
    return pd.array(values, dtype=STR_DTYPE)


@dataclass(frozen=True)
class _Layout:
    """Where each selected column goes in a frame built by to_frame."""

    columns: pd.Index
    float_rows: np.ndarray  # rows of the float block, in frame order
    float_places: np.ndarray  # their frame positions
    all_floats: bool  # the whole block, in its order: copied as it is
    dates: tuple[str, ...]  # date columns: one datetime64 block together
    date_places: np.ndarray
    others: tuple[tuple[str, Kind, np.ndarray], ...]  # (name, kind, [frame position])


@functools.lru_cache(maxsize=256)
def _layout(
    names: tuple[str, ...],
    kinds: tuple[Kind, ...],
    selected: tuple[str, ...] | None,
    index: str | None,
) -> _Layout:
    """Where the `selected` columns (None: all but `index`) go; KeyError for an unknown name."""
    if selected is None:
        selected = tuple(n for n in names if n != index)
    missing = [n for n in (*selected, *([index] if index else [])) if n not in names]
    if missing:
        raise KeyError(f"no columns {missing}; there are {list(names)}")
    kind_of = dict(zip(names, kinds, strict=True))
    floats = _float_names(names, kinds)
    float_rows, float_places, dates, date_places, others = [], [], [], [], []
    for place, name in enumerate(selected):
        if kind_of[name] == "float":
            float_rows.append(floats.index(name))
            float_places.append(place)
        elif kind_of[name] == "date":
            dates.append(name)
            date_places.append(place)
        else:
            others.append((name, kind_of[name], np.array([place], dtype=np.intp)))
    return _Layout(
        pd.Index(list(selected), dtype=STR_DTYPE),
        np.array(float_rows, dtype=np.intp),
        np.array(float_places, dtype=np.intp),
        float_rows == list(range(len(floats))),
        tuple(dates),
        np.array(date_places, dtype=np.intp),
        tuple(others),
    )


def to_frame(
    columns: Columns,
    *,
    index: str | pd.Index | None = None,
    select: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The columns as a DataFrame: `index` names the column that becomes the index, or is the
    index itself (else a RangeIndex); `select` names the columns and their order (default: all
    others, in order).

    Raises KeyError for a name that is not a column. The frame owns its data (nothing is
    shared with the decoded buffer, which is read-only).
    """
    by_name = index if isinstance(index, str) else None
    chosen = None if select is None else tuple(select)
    layout = _layout(columns.names, columns.kinds, chosen, by_name)
    blocks: list[tuple[Any, np.ndarray]] = []
    if len(layout.float_rows):
        block = columns.floats.copy() if layout.all_floats else columns.floats[layout.float_rows]
        blocks.append((block, layout.float_places))
    if layout.dates:  # a NumPy block is 2-D: (columns, rows)
        block = np.vstack([dates(columns.others[name]) for name in layout.dates])
        blocks.append((block, layout.date_places))
    for name, kind, place in layout.others:
        blocks.append((pandas_array(columns, name, kind), place))
    if by_name is None:
        rows_index = pd.RangeIndex(columns.rows) if index is None else index
    else:
        rows_index = _index(columns, by_name)
    return create_dataframe_from_blocks(blocks, rows_index, layout.columns)


def _index(columns: Columns, name: str) -> pd.Index:
    kind = columns.kinds[columns.names.index(name)]
    if kind == "float":
        return pd.Index(columns.column(name).copy(), name=name)
    if kind == "date":
        return pd.DatetimeIndex(dates(columns.others[name]), name=name)
    return pd.Index(pandas_array(columns, name, kind), name=name)
