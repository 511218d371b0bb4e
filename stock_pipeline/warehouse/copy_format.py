"""DataFrame columns -> validated typed arrays -> PostgreSQL binary COPY bytes, with NumPy; and
back: binary COPY bytes -> typed arrays.

Pure functions, no I/O. The writer (writer.py) calls `prepare_column` for every column of a chunk
and `encode_binary` to turn the chunk into one binary COPY stream; `to_records` produces plain
Python tuples for the INSERT fallback. The reader (reader.py) calls `decode_binary` on the
output of a `COPY (query) TO STDOUT (FORMAT binary)`.

Why a hand-written encoder: asyncpg's `copy_records_to_table` needs one Python tuple per row and
encodes value by value; building 1,000,000 tuples from a DataFrame costs more than the server
spends storing them. Here rows that share a byte layout (same NULL pattern, same text lengths; in
market data nearly every row) are written as one 2-D uint8 block with one strided copy per column.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import BigInteger, Boolean, Date, DateTime, Float, Integer, SmallInteger, String
from sqlalchemy.types import TypeEngine

Kind = Literal["float8", "float4", "int8", "int4", "int2", "bool", "date", "timestamp", "text"]

_PG_EPOCH_DAYS = 10_957  # 2000-01-01 counted from 1970-01-01: PostgreSQL's date zero
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400 * 1_000_000
_INT_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-(2**63), 2**63 - 1),
    "int4": (-(2**31), 2**31 - 1),
    "int2": (-(2**15), 2**15 - 1),
}
# Wire format of each kind; the structured-array assignment byte-swaps while it copies.
_WIRE: dict[str, str] = {
    "float8": ">f8",
    "float4": ">f4",
    "int8": ">i8",
    "int4": ">i4",
    "int2": ">i2",
    "bool": "?",
    "date": ">i4",
    "timestamp": ">i8",
}
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER = _COPY_SIGNATURE + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
# More layout groups than this fraction of the rows: rows are too irregular for block writes.
_MAX_GROUP_FRACTION = 8
_NUMERIC_INFERRED = {"integer", "floating", "mixed-integer-float", "decimal", "empty"}


def kind_of(sql_type: TypeEngine) -> Kind:
    """The binary COPY kind of a SQLAlchemy column type (the warehouse uses only these)."""
    # Subclasses first: BigInteger and SmallInteger are Integers.
    for cls, kind in (
        (BigInteger, "int8"),
        (SmallInteger, "int2"),
        (Integer, "int4"),
        (Float, "float8"),
        (Boolean, "bool"),
        (DateTime, "timestamp"),
        (Date, "date"),
        (String, "text"),
    ):
        if isinstance(sql_type, cls):
            return kind  # type: ignore[return-value]
    raise TypeError(f"the COPY writer does not handle column type {sql_type!r}")


class BadValue(ValueError):
    """A value that the column's type cannot hold; `row` is its position in the prepared data."""

    def __init__(self, column: str, row: int, value: Any, problem: str):
        super().__init__(f"column {column}: value {value!r} {problem}")
        self.column = column
        self.row = row
        self.value = value
        self.problem = problem


@dataclass
class PreparedColumn:
    """One column as typed NumPy arrays, native byte order.

    values: float64, int64 (range-checked for the column), bool, int32 days since 2000-01-01
    (date), int64 microseconds since 2000-01-01 UTC (timestamp); for text the UTF-8 bytes of all
    values, each followed by a NUL, located by `starts` and `lengths`.
    null: True where NULL, or None when nothing is NULL. objects: the str values (text only).
    """

    name: str
    kind: Kind
    values: np.ndarray
    null: np.ndarray | None
    lengths: np.ndarray | None = None
    objects: np.ndarray | None = None
    starts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.values) if self.starts is None else len(self.starts)

    def slice(self, start: int, stop: int) -> PreparedColumn:
        """Rows [start, stop) as views, no copy."""

        def cut(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[start:stop]

        values = self.values if self.kind == "text" else self.values[start:stop]
        return PreparedColumn(
            self.name,
            self.kind,
            values,
            cut(self.null),
            cut(self.lengths),
            cut(self.objects),
            cut(self.starts),
        )

    def take(self, rows: np.ndarray) -> PreparedColumn:
        """The rows at positions `rows` (text values stay in the shared byte buffer)."""

        def pick(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[rows]

        values = self.values if self.kind == "text" else self.values[rows]
        return PreparedColumn(
            self.name,
            self.kind,
            values,
            pick(self.null),
            pick(self.lengths),
            pick(self.objects),
            pick(self.starts),
        )

    def as_dates(self) -> np.ndarray:
        """A date column's values as datetime64[D]."""
        assert self.kind == "date"
        return (self.values.astype(np.int64) + _PG_EPOCH_DAYS).astype("datetime64[D]")

    def text_values(self, rows: slice | np.ndarray, width: int) -> np.ndarray:
        """The bytes of `rows` (all `width` bytes long) as an S<width> array."""
        assert self.starts is not None and self.lengths is not None
        starts = self.starts[rows]
        if len(starts) > 1 and (np.diff(starts) == width + 1).all():
            # Consecutive values of equal length: a strided view, no gather.
            return np.ndarray(
                (len(starts),), f"S{width}", self.values, int(starts[0]), (width + 1,)
            )
        gathered = self.values[starts[:, None] + np.arange(width)]
        return gathered.view(f"S{width}")[:, 0]


def _first_bad(column: str, values: np.ndarray, bad: np.ndarray, problem: str) -> BadValue:
    row = int(np.flatnonzero(bad)[0])
    value = values[row]
    return BadValue(column, row, value.item() if isinstance(value, np.generic) else value, problem)


def _null_mask(mask: np.ndarray) -> np.ndarray | None:
    return mask if mask.any() else None


def _as_float(column: str, series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and a NULL mask (NaN and None become NULL)."""
    if pd.api.types.is_bool_dtype(series.dtype) or not (
        pd.api.types.is_numeric_dtype(series.dtype) or series.dtype == object
    ):
        raw = series.to_numpy(dtype=object)
        return _raise(column, raw, np.ones(len(raw), dtype=bool), "is not a number")
    if series.dtype == object:
        raw = series.to_numpy()
        inferred = pd.api.types.infer_dtype(raw, skipna=True)
        if inferred not in _NUMERIC_INFERRED:
            bad = np.fromiter((not _is_number_or_none(v) for v in raw), dtype=bool, count=len(raw))
            return _raise(column, raw, bad, "is not a number")
        values = pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    return values, np.isnan(values)


def _is_number_or_none(value: Any) -> bool:
    if value is None or isinstance(value, bool | np.bool_):
        return value is None
    if isinstance(value, int | float | np.number):
        return True
    return type(value).__name__ == "Decimal" or value is pd.NA


def _raise(column: str, raw: np.ndarray, bad: np.ndarray, problem: str) -> Any:
    raise _first_bad(column, raw, bad, problem)


def _as_int(column: str, series: pd.Series, kind: Kind) -> tuple[np.ndarray, np.ndarray]:
    """int64 values (range-checked for the column's width) and a NULL mask."""
    low, high = _INT_RANGES[kind]
    null = series.isna().to_numpy()
    if pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.int64, na_value=0) if null.any() else series.to_numpy()
        if series.dtype == np.uint64 and (series.to_numpy() > high).any():
            raw = series.to_numpy()
            return _raise(column, raw, raw > high, f"is out of range for {kind}")
        values = values.astype(np.int64, copy=False)
    else:
        raw = series.to_numpy(dtype=object)
        if series.dtype == object:
            inferred = pd.api.types.infer_dtype(raw, skipna=True)
            if inferred == "integer":
                # Python ints beyond int64 would overflow silently in a NumPy cast.
                big = np.fromiter(
                    (v is not None and not pd.isna(v) and not low <= v <= high for v in raw),
                    dtype=bool,
                    count=len(raw),
                )
                if big.any():
                    return _raise(column, raw, big, f"is out of range for {kind}")
            elif inferred not in _NUMERIC_INFERRED:
                bad = np.fromiter(
                    (not _is_number_or_none(v) for v in raw), dtype=bool, count=len(raw)
                )
                return _raise(column, raw, bad, "is not an integer")
        elif not pd.api.types.is_float_dtype(series.dtype):
            return _raise(column, raw, ~null, "is not an integer")
        floats, null = _as_float(column, series)
        filled = np.where(null, 0.0, floats)
        fraction = filled != np.floor(filled)
        if fraction.any():
            return _raise(column, raw, fraction, "is not an integer")
        # float64 holds 2**63 exactly; anything at or above it is out of int64 range.
        outside = (filled < float(low)) | (filled >= float(high) + 1.0)
        if outside.any():
            return _raise(column, raw, outside, f"is out of range for {kind}")
        values = filled.astype(np.int64)
    if kind != "int8":
        outside = ~null & ((values < low) | (values > high))
        if outside.any():
            return _raise(
                column, series.to_numpy(dtype=object), outside, f"is out of range for {kind}"
            )
    return values, null


def _as_bool(column: str, series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """bool values and a NULL mask; accepts booleans and the numbers 0 and 1."""
    null = series.isna().to_numpy()
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy(dtype=bool, na_value=False), null
    raw = series.to_numpy(dtype=object)
    if pd.api.types.is_numeric_dtype(series.dtype):
        numbers = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif series.dtype == object:
        numbers = np.fromiter(
            (
                float(v) if isinstance(v, bool | int | float | np.bool_ | np.number) else np.nan
                for v in raw
            ),
            dtype=np.float64,
            count=len(raw),
        )
    else:
        numbers = np.full(len(raw), np.nan)
    ok = null | (numbers == 0) | (numbers == 1)
    if not ok.all():
        return _raise(column, raw, ~ok, "is not a boolean")
    return numbers == 1, null


def _as_datetime64(column: str, series: pd.Series, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """datetime64[unit] values (UTC for tz-aware input) and a NULL mask."""
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        dtype = series.dtype
    if pd.api.types.is_datetime64_dtype(dtype):
        raw = series.to_numpy()
        null = np.isnat(raw)
        return raw.astype(f"datetime64[{unit}]"), null
    raw = series.to_numpy(dtype=object)
    null = series.isna().to_numpy()
    # Dates repeat (one per trading day), so convert each distinct value once.
    codes, uniques = pd.factorize(raw[~null] if null.any() else raw)
    converted = np.empty(len(uniques), dtype=f"datetime64[{unit}]")
    for i, value in enumerate(uniques):
        converted[i] = _one_datetime(column, value, unit, raw, null)
    values = np.full(len(raw), np.datetime64("NaT"), dtype=f"datetime64[{unit}]")
    values[~null] = converted[codes]
    return values, null


def _one_datetime(
    column: str, value: Any, unit: str, raw: np.ndarray, null: np.ndarray
) -> np.datetime64:
    try:
        if isinstance(value, dt.datetime | pd.Timestamp):
            stamp = pd.Timestamp(value)
            if stamp.tzinfo is not None:
                stamp = stamp.tz_convert("UTC").tz_localize(None)
            if unit == "D" and stamp != stamp.normalize():
                raise ValueError("has a time of day")
            return stamp.to_datetime64().astype(f"datetime64[{unit}]")
        if isinstance(value, dt.date | np.datetime64):
            return np.datetime64(value, unit)
        if isinstance(value, str):
            return np.datetime64(dt.date.fromisoformat(value) if unit == "D" else value, unit)
        raise ValueError("wrong type")
    except (ValueError, TypeError, OverflowError):
        bad = ~null & np.array([v is value or v == value for v in raw], dtype=bool)
        problem = "is not a date" if unit == "D" else "is not a timestamp"
        raise _first_bad(column, raw, bad, problem) from None


def _as_text(column: str, series: pd.Series) -> PreparedColumn:
    """UTF-8 bytes of all values joined by NUL separators, with start offsets and lengths."""
    raw = series.to_numpy(dtype=object)
    if not len(raw):
        empty = np.zeros(0, dtype=np.int64)
        return PreparedColumn(column, "text", np.zeros(0, np.uint8), None, empty, raw, empty)
    null = None
    try:
        # One join validates that every value is a str and encodes them all in C.
        joined = "\x00".join(raw.tolist())
    except TypeError:
        null = series.isna().to_numpy()
        bad = ~null & np.fromiter((not isinstance(v, str) for v in raw), bool, count=len(raw))
        if bad.any():
            raise _first_bad(column, raw, bad, "is not a string") from None
        joined = "\x00".join(np.where(null, "", raw).tolist())
    data = np.frombuffer((joined + "\x00").encode("utf-8"), dtype=np.uint8)
    ends = np.flatnonzero(data == 0)
    if len(ends) != len(raw):
        bad = np.fromiter((isinstance(v, str) and "\x00" in v for v in raw), bool, len(raw))
        raise _first_bad(column, raw, bad, "contains a NUL character, which text cannot hold")
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    return PreparedColumn(column, "text", data, null, ends - starts, raw, starts)


def prepare_column(name: str, kind: Kind, series: pd.Series) -> PreparedColumn:
    """Convert and validate one column; raises BadValue for the first value it cannot hold."""
    if kind == "text":
        return _as_text(name, series)
    if kind == "float8":
        values, null = _as_float(name, series)
    elif kind in ("int8", "int4", "int2"):
        values, null = _as_int(name, series, kind)
    elif kind == "bool":
        values, null = _as_bool(name, series)
    elif kind == "date":
        days, null = _as_datetime64(name, series, "D")
        values = days.view(np.int64) - _PG_EPOCH_DAYS
        outside = ~null & ((values < -(2**31)) | (values >= 2**31))
        if outside.any():
            raise _first_bad(name, series.to_numpy(dtype=object), outside, "is out of range")
        values = values.astype(np.int32)
    else:
        micros, null = _as_datetime64(name, series, "us")
        values = micros.view(np.int64) - _PG_EPOCH_US
    if null.any():
        values = np.where(null, values.dtype.type(0), values)  # NULL slots hold NaT/NaN garbage
    return PreparedColumn(name, kind, values, _null_mask(null))


def _layout_keys(columns: Sequence[PreparedColumn]) -> np.ndarray | None:
    """Per-row layout: one column per field whose NULL-ness or byte length varies; None when
    every row has the same layout."""
    parts = []
    for col in columns:
        if col.kind == "text":
            assert col.lengths is not None
            lengths = col.lengths if col.null is None else np.where(col.null, -1, col.lengths)
            if len(lengths) and (lengths != lengths[0]).any():
                parts.append(lengths)
        elif col.null is not None and not col.null.all():
            parts.append(col.null.astype(np.int64))
    if not parts:
        return None
    return np.stack(parts, axis=1)


def _row_layout(
    columns: Sequence[PreparedColumn], first: int
) -> tuple[np.dtype, np.ndarray, list[int]]:
    """For rows laid out like row `first`: a structured dtype over one tuple (fields f<i> for the
    non-NULL values), the tuple's constant bytes (field count, length words) and the widths."""
    template = bytearray(struct.pack(">h", len(columns)))
    names, formats, offsets, widths = [], [], [], []
    for i, col in enumerate(columns):
        if col.null is not None and col.null[first]:
            template += struct.pack(">i", -1)
            widths.append(-1)
            continue
        if col.kind == "text":
            assert col.lengths is not None
            width, fmt = int(col.lengths[first]), f"S{int(col.lengths[first])}"
        else:
            fmt = _WIRE[col.kind]
            width = np.dtype(fmt).itemsize
        template += struct.pack(">i", width)
        if width:
            names.append(f"f{i}")
            formats.append(fmt)
            offsets.append(len(template))
        template += bytes(width)
        widths.append(width)
    dtype = np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": len(template)}
    )
    return dtype, np.frombuffer(bytes(template), dtype=np.uint8), widths


def encode_binary(columns: Sequence[PreparedColumn]) -> tuple[np.ndarray, np.ndarray | None] | None:
    """One complete binary COPY stream (header, tuples, trailer) for the rows of `columns`.

    Returns the bytes as a uint8 array and the row order used (tuple i of the stream is row
    order[i], None meaning unchanged: COPY error line numbers map back through it), or None when
    the rows are too irregular for block writes (then use `to_records`).
    """
    n = len(columns[0]) if columns else 0
    keys = _layout_keys(columns)
    order: np.ndarray | None = None
    bounds = [0, n]
    if keys is not None:
        order = np.lexsort(keys.T[::-1])
        sorted_keys = keys[order]
        change = np.flatnonzero((sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)) + 1
        bounds = [0, *change.tolist(), n]
        if len(bounds) - 1 > max(64, n // _MAX_GROUP_FRACTION):
            return None
    groups = []
    total = len(_COPY_HEADER) + len(_COPY_TRAILER)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if stop > start:
            layout = _row_layout(columns, start if order is None else int(order[start]))
            groups.append((start, stop, layout))
            total += (stop - start) * layout[0].itemsize
    out = np.empty(total, dtype=np.uint8)
    out[: len(_COPY_HEADER)] = np.frombuffer(_COPY_HEADER, dtype=np.uint8)
    pos = len(_COPY_HEADER)
    for start, stop, (dtype, template, widths) in groups:
        size = (stop - start) * dtype.itemsize
        block = out[pos : pos + size]
        block.reshape(stop - start, dtype.itemsize)[:] = template
        tuples = block.view(dtype)
        rows = slice(start, stop) if order is None else order[start:stop]
        for i, (col, width) in enumerate(zip(columns, widths, strict=True)):
            if width > 0:
                values = col.text_values(rows, width) if col.kind == "text" else col.values[rows]
                tuples[f"f{i}"] = values
        pos += size
    out[pos:] = np.frombuffer(_COPY_TRAILER, dtype=np.uint8)
    return out, order


def to_records(columns: Sequence[PreparedColumn]) -> list[tuple]:
    """The rows as Python tuples (None for NULL) for asyncpg's executemany or records COPY."""
    lists = []
    for col in columns:
        if col.kind == "text":
            assert col.objects is not None
            values = col.objects.copy()
        elif col.kind == "date":
            days = col.values.astype(np.int64) + _PG_EPOCH_DAYS
            values = days.astype("datetime64[D]").astype(object)
        elif col.kind == "timestamp":
            naive = (col.values + _PG_EPOCH_US).astype("datetime64[us]").astype(object)
            values = np.array([v.replace(tzinfo=dt.UTC) for v in naive], dtype=object)
        else:
            values = col.values.astype(object)
        if col.null is not None:
            values[col.null] = None
        lists.append(values.tolist())
    return list(zip(*lists, strict=True))


# -- decoding ----------------------------------------------------------------------------------
#
# A binary COPY tuple is a field count (int16) and, per field, a length (int32, -1 for NULL)
# and that many bytes. Tuples follow each other without an index: where one starts depends on
# the sizes of all before it. When every tuple has the same layout (no NULLs, text of equal byte
# length: what reader.py's query wrapping makes of market data, whose codes are all 9 bytes)
# the stream is an (n, size) table and each column one strided view. When text lengths vary,
# the tuples are first located one by one (reading only the text lengths), then gathered.

# What each kind decodes to: the encoder's value encodings, in native byte order.
_DECODED: dict[str, type] = {
    "float8": np.float64,
    "float4": np.float64,
    "int8": np.int64,
    "int4": np.int64,
    "int2": np.int64,
    "bool": np.bool_,
    "date": np.int32,
    "timestamp": np.int64,
}


def decode_binary(data: np.ndarray, kinds: Sequence[Kind]) -> list[np.ndarray]:
    """The fields of a binary COPY stream (uint8 array) holding no NULLs, one array per field:
    float64 (float8, float4), int64 (int8, int4, int2), bool, int32 days since 2000-01-01
    (date), int64 microseconds since 2000-01-01 (timestamp), object arrays of str (text).

    Raises ValueError for a stream that is not binary COPY of these kinds, or holds a NULL.
    """
    body = _body(data)
    if not len(body):
        return [np.empty(0, dtype=_DECODED.get(kind, object)) for kind in kinds]
    lengths = _first_layout(body, kinds)
    columns = _decode_one_layout(body, kinds, lengths)
    return columns if columns is not None else _decode_located(body, kinds)


def _width(kind: Kind) -> int:
    return np.dtype(_WIRE[kind]).itemsize


def _body(data: np.ndarray) -> np.ndarray:
    """The tuples of a binary COPY stream, without header and trailer."""
    if len(data) < len(_COPY_HEADER) + 2 or data[:11].tobytes() != _COPY_SIGNATURE:
        raise ValueError("not a binary COPY stream (no PGCOPY signature)")
    extension = int.from_bytes(data[15:19].tobytes(), "big")
    if data[-2:].tobytes() != _COPY_TRAILER:
        raise ValueError("binary COPY stream is truncated (no trailer)")
    return data[len(_COPY_HEADER) + extension : -2]


def _first_layout(body: np.ndarray, kinds: Sequence[Kind]) -> list[int]:
    """The field lengths of the first tuple, checked: no NULL, numbers of their width."""
    if int.from_bytes(body[:2].tobytes(), "big") != len(kinds):
        raise ValueError(f"binary COPY tuples do not have {len(kinds)} fields")
    lengths, pos = [], 2
    for i, kind in enumerate(kinds):
        length = int.from_bytes(body[pos : pos + 4].tobytes(), "big", signed=True)
        if length < 0:
            raise ValueError(f"field {i} is NULL: decode_binary takes streams without NULLs")
        if kind != "text" and length != _width(kind):
            raise ValueError(f"field {i} has {length} bytes, not the {_width(kind)} of {kind}")
        lengths.append(length)
        pos += 4 + length
    return lengths


# Tuples decoded at a time: a block stays in the CPU cache while each of its columns is
# copied out (one strided pass over all tuples per column would fetch every tuple from memory
# once per column).
_BLOCK_TUPLES = 1 << 14


def _decode_one_layout(
    body: np.ndarray, kinds: Sequence[Kind], lengths: Sequence[int]
) -> list[np.ndarray] | None:
    """The fields when every tuple has the first tuple's layout, else None.

    The tuples are then an (n, size) table, each field a strided column. Checked in order as
    they are copied out: tuple k + 1 starts right after tuple k when k has the first tuple's
    field count and length words, so every tuple passing the check proves them all."""
    size = 2 + sum(4 + n for n in lengths)
    if len(body) % size:
        return None
    table = body.reshape(len(body) // size, size)
    out = [
        np.empty((len(table), length), np.uint8)
        if kind == "text"
        else np.empty(len(table), _DECODED[kind])
        for kind, length in zip(kinds, lengths, strict=True)
    ]
    for low in range(0, len(table), _BLOCK_TUPLES):
        block = table[low : low + _BLOCK_TUPLES]
        high = low + len(block)
        if not (block[:, :2].view(">i2")[:, 0] == len(kinds)).all():
            return None
        pos = 2
        for kind, length, column in zip(kinds, lengths, out, strict=True):
            if not (block[:, pos : pos + 4].view(">i4")[:, 0] == length).all():
                return None
            value = block[:, pos + 4 : pos + 4 + length]
            column[low:high] = value if kind == "text" else value.view(_WIRE[kind])[:, 0]
            pos += 4 + length
    return [
        _text_values(column) if kind == "text" else column
        for kind, column in zip(kinds, out, strict=True)
    ]


def _text_values(values: np.ndarray) -> np.ndarray:
    """An (n, width) uint8 array of UTF-8 values as an object array of str."""
    n, width = values.shape
    if width == 0:
        return np.full(n, "", dtype=object)
    # Rows in code order repeat each code: decode each run once and share the str objects.
    starts = np.flatnonzero(np.append(True, (values[1:] != values[:-1]).any(axis=1)))
    if len(starts) < n // 4:
        runs = _text_values(values[starts])
        return np.repeat(runs, np.diff(np.append(starts, n)))
    # PostgreSQL text never holds NUL, so NUL separates the values: one decode, one split.
    joined = np.zeros((n, width + 1), dtype=np.uint8)
    joined[:, :width] = values
    return _split(joined)


def _split(joined: np.ndarray) -> np.ndarray:
    """UTF-8 values each followed by a NUL, as an object array of str."""
    return np.array(joined.tobytes().decode("utf-8").split("\x00")[:-1], dtype=object)


def _decode_located(body: np.ndarray, kinds: Sequence[Kind]) -> list[np.ndarray]:
    """Fields of tuples whose text lengths vary: tuples located, then values gathered."""
    starts, text_lengths = _locate(body, kinds)
    if not (_gather(body, starts, ">i2") == len(kinds)).all():
        raise ValueError(f"binary COPY tuples do not have {len(kinds)} fields")
    columns, pos, text = [], starts + 2, 0
    for i, kind in enumerate(kinds):
        if kind == "text":
            length = text_lengths[:, text]
            text += 1
            columns.append(_ragged_text(body, pos + 4, length))
        else:
            length = _width(kind)
            if not (_gather(body, pos, ">i4") == length).all():
                raise ValueError(f"field {i} is NULL or not {length} bytes in some tuple")
            columns.append(_gather(body, pos + 4, _WIRE[kind]).astype(_DECODED[kind]))
        pos = pos + 4 + length
    return columns


def _gather(body: np.ndarray, starts: np.ndarray, wire: str) -> np.ndarray:
    """The values of dtype `wire` at byte offsets `starts`."""
    width = np.dtype(wire).itemsize
    return body[starts[:, None] + np.arange(width)].view(wire)[:, 0]


def _ragged_text(body: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Text values of varying byte lengths at `starts` as an object array of str."""
    total, n = int(lengths.sum()), len(lengths)
    before = np.cumsum(lengths) - lengths  # bytes of the values before each one
    source = np.repeat(starts - before, lengths) + np.arange(total)
    target = np.arange(total) + np.repeat(np.arange(n), lengths)  # one NUL after each value
    joined = np.zeros(total + n, dtype=np.uint8)
    joined[target] = body[source]
    return _split(joined)


def _locate(body: np.ndarray, kinds: Sequence[Kind]) -> tuple[np.ndarray, np.ndarray]:
    """Where each tuple starts, and the byte length of each of its text fields, walking the
    tuples one by one (Python, a few operations per tuple)."""
    # Bytes before each text field's length word, counted from the end of the field before
    # (or the tuple start), and after the last text field.
    gaps, skip = [], 2
    for kind in kinds:
        if kind == "text":
            gaps.append(skip)
            skip = 0
        else:
            skip += 4 + _width(kind)
    view, from_bytes = body.data, int.from_bytes
    starts: list[int] = []
    lengths: list[int] = []
    pos, end = 0, len(body)
    while pos < end:
        starts.append(pos)
        for gap in gaps:
            pos += gap
            length = from_bytes(view[pos : pos + 4], "big", signed=True)
            if length < 0:
                raise ValueError("a text field is NULL: decode_binary takes streams without NULLs")
            lengths.append(length)
            pos += 4 + length
        pos += skip
    if pos != end:
        raise ValueError(
            "binary COPY tuples do not add up to the stream: a NULL where none may be, or a "
            "truncated stream"
        )
    located = np.array(lengths, dtype=np.int64).reshape(len(starts), len(gaps))
    return np.array(starts, dtype=np.int64), located
