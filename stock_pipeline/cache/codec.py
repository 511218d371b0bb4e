"""A small frame as compact bytes, and back in microseconds. Pure: no I/O.

The cache stores each code's recent bars and the day's cross-section in this form: a reader
decodes it with a few np.frombuffer calls, no parsing per value. Layout (little-endian):

    b"SPF1"  u32 rows  u16 columns  u16 header size (up to the padding)
    per column: u8 kind  u8 text width  u8 name length  name (UTF-8)
    zero padding to a multiple of 8
    the float block: every float column's rows (f8, NaN for NULL), column after column
    every other column in frame order, each padded to a multiple of 8:
      date  rows x i4 days since 1970-01-01 (NAT_DAYS for NULL)
      int   rows x i8, then rows x u1 (1: NULL)
      bool  rows x i1 (1, 0, -1 for NULL)
      text  rows x `width` bytes of UTF-8, NUL-padded (codes: 9 bytes each)

See columns.py for the kinds; `encode_frame` / `decode_frame` go from and to DataFrames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stock_pipeline.cache.columns import KINDS, Columns, Kind, check_layout, from_frame, to_frame

MAGIC = b"SPF1"
_HEAD = struct.Struct("<4sIHH")
_COLUMN = struct.Struct("<BBB")
_KIND_CODES: dict[Kind, int] = {kind: code for code, kind in enumerate(KINDS, start=1)}
_CODE_KINDS: dict[int, Kind] = {code: kind for kind, code in _KIND_CODES.items()}
_MAX_TEXT_WIDTH = 255


class CodecError(ValueError):
    """Bytes that are not an encoded frame (another value under the key, or cut short)."""


def _padded(size: int) -> int:
    return -(-size // 8) * 8


def _section_size(kind: Kind, rows: int, width: int) -> int:
    """Bytes of one non-float column, padding included."""
    if kind == "date":
        return _padded(rows * 4)
    if kind == "int":
        return _padded(rows * 9)
    if kind == "bool":
        return _padded(rows)
    return _padded(rows * width)


def encode(columns: Columns) -> bytes:
    """Columns as bytes (layout in the module docstring). ValueError for a text value longer
    than 255 bytes or a name longer than 255 bytes."""
    check_layout(columns.names, columns.kinds)
    rows = columns.rows
    texts = {
        name: np.char.encode(columns.others[name].astype(str), "utf-8")
        for name, kind in zip(columns.names, columns.kinds, strict=True)
        if kind == "text"
    }
    head = []
    for name, kind in zip(columns.names, columns.kinds, strict=True):
        encoded = name.encode()
        if len(encoded) > 255:
            raise ValueError(f"column name {name[:40]!r}... is longer than 255 bytes")
        width = texts[name].dtype.itemsize if kind == "text" and rows else 0
        if width > _MAX_TEXT_WIDTH:
            raise ValueError(f"text column {name} holds a value longer than 255 bytes")
        head.append(_COLUMN.pack(_KIND_CODES[kind], width, len(encoded)) + encoded)
    columns_part = b"".join(head)
    size = _HEAD.size + len(columns_part)
    if size > 65_535:
        raise ValueError(f"{len(columns.names)} columns make a header over 64 KiB")
    parts = [_pad(_HEAD.pack(MAGIC, rows, len(columns.names), size) + columns_part)]
    if len(columns.floats):
        parts.append(np.ascontiguousarray(columns.floats, dtype="<f8").tobytes())
    for name, kind in zip(columns.names, columns.kinds, strict=True):
        if kind == "float":
            continue
        values = columns.others[name]
        if kind == "date":
            section = values.astype("<i4").tobytes()
        elif kind == "int":
            section = (
                values.astype("<i8").tobytes() + columns.masks[name].astype(np.uint8).tobytes()
            )
        elif kind == "bool":
            section = values.astype(np.int8).tobytes()
        else:
            section = texts[name].tobytes()
        parts.append(_pad(section))
    return b"".join(parts)


def _pad(section: bytes) -> bytes:
    return section + b"\0" * (_padded(len(section)) - len(section))


@dataclass(frozen=True)
class _Header:
    """The column part of a header, parsed once per distinct header (see _header)."""

    names: tuple[str, ...]
    kinds: tuple[Kind, ...]
    widths: tuple[int, ...]
    n_floats: int
    others: tuple[tuple[str, Kind, int], ...]  # (name, kind, text width) of non-float columns


# Parsed headers by their bytes: the cache's blobs share a few, and parsing one costs tens of
# microseconds in Python, more than decoding the rest.
_HEADERS: dict[bytes, _Header] = {}
_MAX_HEADERS = 1024


def decode(blob: bytes) -> Columns:
    """Bytes made by `encode` as Columns (read-only views into `blob`). CodecError, saying what
    is wrong, for bytes that are not an encoded frame or are cut short."""
    if len(blob) < _HEAD.size or blob[:4] != MAGIC:
        raise CodecError(
            f"not an encoded frame: {len(blob)} bytes starting {bytes(blob[:8])!r} "
            f"(expected {MAGIC!r}); the key holds something else"
        )
    _, rows, count, header_size = _HEAD.unpack_from(blob)
    if header_size > len(blob):
        raise CodecError(f"frame header of {header_size} bytes cut short at {len(blob)}")
    header = _header(bytes(blob[_HEAD.size : header_size]), count)
    offset = _padded(header_size)
    expected = offset + header.n_floats * rows * 8
    for _, kind, width in header.others:
        expected += _section_size(kind, rows, width)
    if len(blob) != expected:
        raise CodecError(
            f"frame of {rows} rows x {count} columns should be {expected} bytes, got {len(blob)}"
            + (": cut short" if len(blob) < expected else "")
        )
    floats = np.frombuffer(blob, "<f8", header.n_floats * rows, offset)
    offset += header.n_floats * rows * 8
    others: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for name, kind, width in header.others:
        if kind == "date":
            others[name] = np.frombuffer(blob, "<i4", rows, offset)
        elif kind == "int":
            others[name] = np.frombuffer(blob, "<i8", rows, offset)
            masks[name] = np.frombuffer(blob, np.bool_, rows, offset + rows * 8)
        elif kind == "bool":
            others[name] = np.frombuffer(blob, np.int8, rows, offset)
        else:
            others[name] = _texts(blob, rows, offset, width)
        offset += _section_size(kind, rows, width)
    return Columns(
        header.names, header.kinds, rows, floats.reshape(header.n_floats, rows), others, masks
    )


def _texts(blob: bytes, rows: int, offset: int, width: int) -> np.ndarray:
    if not width:
        return np.full(rows, "", dtype="U1")
    raw = np.frombuffer(blob, f"S{width}", rows, offset)
    try:
        return raw.astype(f"U{width}")  # ASCII (every code): 20x faster than decoding UTF-8
    except UnicodeDecodeError:
        return np.char.decode(raw, "utf-8")


def _header(columns_part: bytes, count: int) -> _Header:
    header = _HEADERS.get(columns_part)
    if header is None or len(header.names) != count:
        header = _parse_header(columns_part, count)
        if len(_HEADERS) >= _MAX_HEADERS:
            _HEADERS.clear()
        _HEADERS[columns_part] = header
    return header


def _parse_header(part: bytes, count: int) -> _Header:
    names, kinds, widths = [], [], []
    offset = 0
    for i in range(count):
        if offset + _COLUMN.size > len(part):
            raise CodecError(f"frame header cut short at column {i + 1} of {count}")
        code, width, length = _COLUMN.unpack_from(part, offset)
        offset += _COLUMN.size
        if code not in _CODE_KINDS:
            raise CodecError(f"damaged frame header: column {i + 1} has unknown kind {code}")
        if offset + length > len(part):
            raise CodecError(f"frame header cut short in the name of column {i + 1}")
        try:
            names.append(part[offset : offset + length].decode())
        except UnicodeDecodeError:
            raise CodecError(f"damaged frame header: column {i + 1}'s name is not UTF-8") from None
        kinds.append(_CODE_KINDS[code])
        widths.append(width)
        offset += length
    if offset != len(part):
        raise CodecError(f"damaged frame header: {len(part) - offset} bytes after the columns")
    try:
        check_layout(names, kinds)
    except ValueError as exc:
        raise CodecError(f"damaged frame header: {exc}") from None
    others = tuple((n, k, w) for n, k, w in zip(names, kinds, widths, strict=True) if k != "float")
    return _Header(tuple(names), tuple(kinds), tuple(widths), kinds.count("float"), others)


def encode_frame(frame: pd.DataFrame) -> bytes:
    """A DataFrame's columns (not its index) as bytes; ValueError for a dtype the codec cannot
    hold (see columns.kind_of_dtype) or a NULL text."""
    return encode(from_frame(frame))


def decode_frame(blob: bytes) -> pd.DataFrame:
    """Bytes made by `encode_frame` as a DataFrame with a RangeIndex: floats float64, ints
    Int64, bools boolean, dates datetime64[ns], text str."""
    return to_frame(decode(blob))
