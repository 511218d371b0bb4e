"""Whole columns of numbers to BaoStock's text with NumPy, and rows to JSON without a Python
object per value (pure).

Formatting a k-line value by value in Python costs more than generating it. Here a `Column`
is a row of pieces per value: uint8 matrices (one row per value) and constants shared by every
row, with NUL (0) as filler anywhere: dropping the NULs gives the text. `Table` lays the pieces
of every column side by side in one matrix and drops the NULs once for a whole page. The text
is byte for byte what `format(value, spec)` gives: `fixed` hands the few values it cannot
decide exactly (near a rounding tie, huge, NaN) to `format` itself.

NumPy's cost per call outweighs its speed on a handful of values (a one-day request has one
per column): columns of fewer than _SMALL values are formatted by Python and kept as strings,
and a table of such columns is joined by Python too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_NUL, _SEP = 0, 1
_POW10 = 10 ** np.arange(19, dtype=np.int64)  # 10**0 .. 10**18, all exact in int64
_EXACT_LIMIT = 2.0**52  # scaled values below this are exact integers in float64
# "0000" .. "9999" as uint32 (their 4 ASCII bytes): one gather turns 4 digits into text.
_FOUR_DIGITS = np.array([f"{i:04d}".encode() for i in range(10_000)]).view(np.uint32)

Piece = np.ndarray | bytes  # (n, width) uint8, or the same bytes in every row
# Below this many values Python's own formatting is cheaper than NumPy's per-call overhead
# (a one-day request has one value per column).
_SMALL = 24


@dataclass(frozen=True)
class Column:
    """n strings as pieces laid side by side (rows in `empty` are the empty string), or as
    Python strings in `values` (small columns), or both."""

    n: int
    pieces: tuple[Piece, ...] = ()
    empty: np.ndarray | None = None  # bool per row
    values: list[str] | None = None

    @property
    def width(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.shape[1] for p in self._laid_out().pieces)

    def _laid_out(self) -> Column:
        """The column as pieces (small columns are converted)."""
        if self.pieces or self.values is None:
            return self
        return strings(self.values)


def _digits(q: np.ndarray, width: int | None = None) -> np.ndarray:
    """Non-negative int64s as decimal digits, most significant first, right-aligned.

    With `width`, every row has exactly that many digits (zero-padded, q < 10**width);
    without, leading zeros are NUL.
    """
    pad = width is not None
    if width is None:
        width = len(str(int(q.max()))) if len(q) else 1
    chunks = (width + 3) // 4
    out = np.empty((len(q), chunks), dtype=np.uint32)
    rest = q
    for j in range(chunks - 1, 0, -1):
        rest, low = np.divmod(rest, 10_000)
        out[:, j] = _FOUR_DIGITS[low]
    out[:, 0] = _FOUR_DIGITS[rest]
    digits = out.view(np.uint8)[:, 4 * chunks - width :]
    if not pad and width > 1:
        shown = np.searchsorted(_POW10[1:width], q, side="right") + 1
        digits = digits * (np.arange(width) >= (width - shown)[:, None])
    return digits


def _sign(negative: np.ndarray) -> tuple[Piece, ...]:
    return ((negative * np.uint8(ord("-")))[:, None],) if negative.any() else ()


def integers(values: np.ndarray) -> Column:
    """Like format(v, "d") for each (float values are truncated toward zero, like int())."""
    v = np.asarray(values).astype(np.int64)
    if len(v) < _SMALL:
        return Column(len(v), values=[str(x) for x in v.tolist()])
    return Column(len(v), (*_sign(v < 0), _digits(np.abs(v))))


def fixed(values: np.ndarray, decimals: int) -> Column:
    """Like format(v, f".{decimals}f") for each float, exactly (1 <= decimals <= 15)."""
    if not 1 <= decimals <= 15:
        raise ValueError(f"decimals must be in 1..15, got {decimals}")
    v = np.asarray(values, dtype=np.float64)
    if len(v) < _SMALL:
        return Column(len(v), values=[format(x, f".{decimals}f") for x in v.tolist()])
    y = np.abs(v) * float(_POW10[decimals])
    # format() rounds the exact binary value; y is off from it by at most |y| * 2**-53, so
    # rint(y) agrees unless y lies that close to a tie. Those, NaN, inf and huge values go
    # to format() (the comparisons are False for NaN, which selects it too).
    with np.errstate(invalid="ignore"):
        tie_distance = np.abs(y - np.floor(y) - 0.5)
        fast = (y < _EXACT_LIMIT) & (tie_distance > y * 2.0**-50)
    m = np.where(fast, np.rint(y), 0.0).astype(np.int64)
    whole, frac = np.divmod(m, _POW10[decimals])
    pieces = (*_sign(np.signbit(v)), _digits(whole), b".", _digits(frac, decimals))
    slow = np.flatnonzero(~fast)
    if len(slow):
        spec = f".{decimals}f"
        pieces = _replace_rows(len(v), pieces, slow, [format(float(v[i]), spec) for i in slow])
    return Column(len(v), pieces)


def cents(values: np.ndarray) -> Column:
    """Integer cents as BaoStock prints prices: 1056 -> "10.5600" (like market.cents_str)."""
    c = np.asarray(values).astype(np.int64)
    if len(c) < _SMALL:
        return Column(len(c), values=[f"{x // 100}.{x % 100:02d}00" for x in c.tolist()])
    whole, frac = np.divmod(c, 100)  # floor, as in Python
    n = len(whole)
    frac_text = _FOUR_DIGITS[frac * 100].view(np.uint8).reshape(n, 4)  # "rr00"
    return Column(n, (*_sign(whole < 0), _digits(np.abs(whole)), b".", frac_text))


def strings(values: Sequence[str]) -> Column:
    """Any strings (UTF-8), one row each."""
    encoded = np.array([s.encode() for s in values], dtype=bytes)
    if len(encoded) == 0:
        return Column(0, values=[])
    matrix = encoded.view(np.uint8).reshape(len(values), encoded.dtype.itemsize)
    return Column(len(values), (matrix,), values=list(values))


def constant(text: str, n: int) -> Column:
    """The same string in each of n rows."""
    return Column(n, (text.encode(),) if text else (), values=[text] * n)


def flags(values: np.ndarray) -> Column:
    """Booleans as "1" / "0"."""
    if len(values) < _SMALL:
        return Column(len(values), values=["1" if v else "0" for v in values.tolist()])
    return Column(len(values), ((np.asarray(values, dtype=np.uint8) + ord("0"))[:, None],))


def take(column: Column, rows: np.ndarray | slice) -> Column:
    """The column's values at `rows` (indices or a slice)."""
    n = len(range(column.n)[rows]) if isinstance(rows, slice) else len(rows)
    values = column.values
    if values is not None:
        values = values[rows] if isinstance(rows, slice) else [values[i] for i in rows.tolist()]
        if n < _SMALL:
            return Column(n, values=values)
    pieces = tuple(p if isinstance(p, bytes) else p[rows] for p in column.pieces)
    empty = None if column.empty is None else column.empty[rows]
    return Column(n, pieces, empty, values)


def blank(column: Column, rows: np.ndarray) -> Column:
    """The column with `rows` (a bool mask) shown as the empty string."""
    if not rows.any():
        return column
    values = column.values
    if values is not None:
        values = ["" if e else v for v, e in zip(values, rows.tolist(), strict=True)]
    empty = rows if column.empty is None else column.empty | rows
    return Column(column.n, column.pieces, empty if column.pieces else None, values)


def _replace_rows(
    n: int, pieces: tuple[Piece, ...], rows: np.ndarray, texts: list[str]
) -> tuple[Piece, ...]:
    """Pieces whose `rows` read `texts` instead (the other rows unchanged)."""
    matrix = _assemble(n, [Column(n, pieces)])
    encoded = [t.encode() for t in texts]
    width = max(matrix.shape[1], max(len(e) for e in encoded))
    out = np.zeros((n, width), dtype=np.uint8)
    out[:, : matrix.shape[1]] = matrix
    for i, data in zip(rows.tolist(), encoded, strict=True):
        out[i] = _NUL
        out[i, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    return (out,)


def _assemble(n: int, columns: Sequence[Column | bytes]) -> np.ndarray:
    """One matrix holding the columns (and constant separators) side by side."""
    width = sum(len(c) if isinstance(c, bytes) else c.width for c in columns)
    out = np.empty((n, width), dtype=np.uint8)
    pos = 0
    for item in columns:
        start = pos
        if isinstance(item, Column):
            item = item._laid_out()
        for piece in (item,) if isinstance(item, bytes) else item.pieces:
            if isinstance(piece, bytes):
                out[:, pos : pos + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
                pos += len(piece)
            else:
                out[:, pos : pos + piece.shape[1]] = piece
                pos += piece.shape[1]
        if isinstance(item, Column) and item.empty is not None and item.empty.any():
            out[np.flatnonzero(item.empty), start:pos] = _NUL
    return out


def _text(matrix: np.ndarray) -> str:
    flat = matrix.ravel()
    return flat[flat != _NUL].tobytes().decode()


def to_strings(column: Column) -> list[str]:
    """The column's values as Python strings."""
    if column.values is not None:
        return list(column.values)
    if column.n == 0:
        return []
    return _text(_assemble(column.n, [column, bytes([_SEP])])).split(chr(_SEP))[:-1]


class Table:
    """Rows of string fields kept as one matrix of their JSON text ('["a","b"],' per row), or
    for a few rows of small columns, as Python strings of that text.

    Values must need no JSON escaping (no quotes, backslashes or control characters), which
    holds for what the simulator puts here: numbers, dates, codes and security names.
    """

    def __init__(self, columns: Sequence[Column]) -> None:
        self.n = columns[0].n if columns else 0
        self._columns = list(columns)
        self._matrix: np.ndarray | None = None
        self._rows: list[str] | None = None
        if self.n < _SMALL and all(c.values is not None for c in columns):
            values = [c.values for c in columns]
            self._rows = ['["' + '","'.join(row) + '"]' for row in zip(*values, strict=True)]

    @property
    def matrix(self) -> np.ndarray:
        """The rows' JSON text, one row per table row, NUL as filler."""
        if self._matrix is None:
            items: list[Column | bytes] = []
            for i, column in enumerate(self._columns):
                items += [b'","' if i else b'["', column]
            items.append(b'"],')
            n = self.n
            self._matrix = _assemble(n, items) if n else np.zeros((0, 1), dtype=np.uint8)
        return self._matrix

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Where each column's bytes lie in a row of `matrix`."""
        out, pos = [], 0
        for i, column in enumerate(self._columns):
            pos += 3 if i else 2  # the separator before it
            out.append((pos, pos + column.width))
            pos += column.width
        return out

    @classmethod
    def _of_matrix(cls, matrix: np.ndarray, columns: list[Column]) -> Table:
        out = cls([])
        out.n, out._columns, out._matrix, out._rows = len(matrix), columns, matrix, None
        return out

    def select(self, rows: np.ndarray) -> Table:
        """A table of the rows at `rows` (a copy)."""
        return Table._of_matrix(self.matrix[rows], self._columns)

    def put(self, index: int, column: Column) -> None:
        """Overwrite column `index` with values of the same width (in place)."""
        start, end = self.spans[index]
        if column.width != end - start:
            raise ValueError(f"column {index} is {end - start} bytes wide, got {column.width}")
        self.matrix[:, start:end] = _assemble(self.n, [column])
        self._rows = None

    @classmethod
    def concat(cls, tables: Sequence[Table]) -> Table:
        """The rows of `tables`, one after the other."""
        if not tables:
            return cls([])
        width = max(t.matrix.shape[1] for t in tables)
        padded = [np.pad(t.matrix, ((0, 0), (0, width - t.matrix.shape[1]))) for t in tables]
        return Table._of_matrix(np.vstack(padded), [])

    def __len__(self) -> int:
        return self.n

    def records_json(self, lo: int = 0, hi: int | None = None) -> str:
        """The {"record":[[...]]} text of rows [lo, hi), as protocol.records_json writes it."""
        if self._rows is not None:
            return '{"record":[' + ",".join(self._rows[lo:hi]) + "]}"
        rows = _text(self.matrix[lo:hi])[:-1]  # no comma after the last row
        return '{"record":[' + rows + "]}"
