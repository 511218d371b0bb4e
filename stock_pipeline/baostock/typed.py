"""BaoStock rows (lists of strings) to a typed DataFrame, in one place.

Column names and types come from the API catalog (`apis.py`). Conversion is column-wise with
numpy/pandas, never value by value in Python:

| catalog type | dtype | NULL (empty string) |
| --- | --- | --- |
| date | datetime64[ns] (format YYYY-MM-DD, strictly) | NaT |
| float | float64 | NaN |
| int | Int64 (nullable) | <NA> |
| bool | boolean (nullable; "1"/"0") | <NA> |
| str | str (pandas' string dtype) | NaN |

A value that does not parse ("abc" in a float field, "2024-13-01" as a date, "1.5" in an int
field, "nan"/"inf" sent as text) is never turned into NULL: `to_frame` raises
MalformedValueError naming api, code, field and value; `to_frame_by_key` drops the rows of the
affected codes and returns the reason per code, for batch fetches that report failures per code;
`to_frame_or_reason` does the same for the rows of one request (what a pool worker converts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stock_pipeline.baostock.apis import Api, Field
from stock_pipeline.baostock.apis import api as lookup_api

# datetime64[ns] spans 1677-09-21 .. 2262-04-11; later dates are malformed for us.
_NS_MIN = np.datetime64(pd.Timestamp.min.ceil("D").date(), "D")
_NS_MAX = np.datetime64(pd.Timestamp.max.floor("D").date(), "D")
_MAX_REPORTED = 20  # bad cells quoted in one error message


@dataclass(frozen=True)
class BadValue:
    """One cell that does not parse as its catalog type."""

    api: str
    key: str  # the request key (usually the code) the row came from
    field: str  # BaoStock's field name
    value: str
    row: int  # index within the converted rows

    def __str__(self) -> str:
        return f"{self.api} {self.key}: {self.field}={self.value!r} (row {self.row})"


class MalformedValueError(ValueError):
    """BaoStock sent values that do not parse as their catalog types."""

    def __init__(self, api: str, problems: Sequence[BadValue], detail: str = ""):
        self.api = api
        self.problems = list(problems)
        shown = "; ".join(str(p) for p in self.problems[:_MAX_REPORTED])
        more = len(self.problems) - _MAX_REPORTED
        tail = f"; and {more} more" if more > 0 else ""
        super().__init__(
            detail or f"malformed values from {api} (not stored as NULL): {shown}{tail}"
        )


def _as_api(api: str | Api) -> Api:
    return api if isinstance(api, Api) else lookup_api(api)


def _catalog_fields(api: Api, fields: Sequence[str]) -> list[Field]:
    by_name = {f.name: f for f in api.fields}
    unknown = [name for name in fields if name not in by_name]
    if unknown:
        raise MalformedValueError(
            api.name,
            [],
            f"{api.name} returned fields {unknown} that the catalog (apis.py) does not "
            f"describe; known: {list(by_name)}",
        )
    return [by_name[name] for name in fields]


def empty_frame(api: str | Api, fields: Sequence[str] | None = None) -> pd.DataFrame:
    """A zero-row frame with the typed columns of `api` (or of the given BaoStock fields)."""
    spec = _as_api(api)
    return to_frame(spec, list(fields) if fields is not None else list(spec.field_names), [])


def _convert_column(
    field: Field, cells: np.ndarray
) -> tuple[np.ndarray | pd.api.extensions.ExtensionArray, np.ndarray]:
    """Typed values of one column and the mask of cells that did not parse."""
    empty = cells == ""
    n = len(cells)
    if field.type == "str":
        values = cells.copy()
        values[empty] = None
        return pd.array(values, dtype="str"), np.zeros(n, dtype=bool)
    if field.type == "float":
        filled = cells.copy()
        filled[empty] = "nan"
        try:
            numbers = filled.astype(np.float64)
            bad = ~np.isfinite(numbers) & ~empty
        except (ValueError, TypeError):
            numbers = pd.to_numeric(pd.Series(filled), errors="coerce").to_numpy(
                np.float64, copy=True
            )
            bad = ~np.isfinite(numbers) & ~empty
        numbers[bad] = np.nan
        return numbers, bad
    if field.type == "int":
        filled = cells.copy()
        filled[empty] = "0"
        bad = np.zeros(n, dtype=bool)
        try:
            ints = filled.astype(np.int64)  # int(str): "1.5", "1e3", "abc" all raise
        except (ValueError, TypeError, OverflowError):
            # Rare error path: find which cells are bad (digits only, optional sign).
            text = pd.Series(filled, dtype="str")
            bad = ~text.str.fullmatch(r"[+-]?\d{1,18}").to_numpy(bool)
            filled[bad] = "0"
            ints = filled.astype(np.int64)
        return pd.arrays.IntegerArray(ints, empty | bad), bad
    if field.type == "bool":
        ones = cells == "1"
        bad = ~(ones | (cells == "0") | empty)
        return pd.arrays.BooleanArray(ones, empty | bad), bad
    if field.type == "date":
        filled = cells.copy()
        filled[empty] = None
        parsed = pd.to_datetime(
            pd.Series(filled, dtype=object), format="%Y-%m-%d", errors="coerce"
        ).to_numpy("datetime64[D]")
        bad = np.isnat(parsed) & ~empty
        bad |= ~np.isnat(parsed) & ((parsed < _NS_MIN) | (parsed > _NS_MAX))
        parsed[bad] = np.datetime64("NaT")
        return parsed.astype("datetime64[ns]"), bad
    raise ValueError(f"field {field.name} has unknown catalog type {field.type!r}")


def _cells(api: Api, fields: Sequence[str], rows: Sequence[Sequence[str]]) -> np.ndarray:
    """Rows as a 2-D object array, checking every row has one value per field."""
    width = len(fields)
    if len(rows) == 0:
        return np.empty((0, width), dtype=object)
    try:
        cells = np.array(rows, dtype=object)
    except ValueError:
        cells = np.empty(0, dtype=object)  # ragged: reported below
    if cells.ndim != 2 or cells.shape[1] != width:
        bad = [i for i, row in enumerate(rows) if len(row) != width]
        raise MalformedValueError(
            api.name,
            [],
            f"{api.name}: rows {bad[:_MAX_REPORTED]} do not have {width} values "
            f"(fields {list(fields)})",
        )
    return cells


def _convert(
    api: Api,
    fields: Sequence[str],
    rows: Sequence[Sequence[str]],
    keys: Sequence[str] | None,
) -> tuple[dict[str, object], np.ndarray, list[BadValue]]:
    catalog = _catalog_fields(api, fields)
    cells = _cells(api, fields, rows)
    columns: dict[str, object] = {}
    any_bad = np.zeros(len(cells), dtype=bool)
    problems: list[BadValue] = []
    key_column = fields.index("code") if "code" in fields else None
    for j, field in enumerate(catalog):
        values, bad = _convert_column(field, cells[:, j])
        columns[field.column] = values
        if bad.any():
            any_bad |= bad
            for i in np.flatnonzero(bad):
                if keys is not None:
                    key = str(keys[i])
                elif key_column is not None:
                    key = str(cells[i, key_column])
                else:
                    key = f"row {i}"
                problems.append(BadValue(api.name, key, field.name, str(cells[i, j]), int(i)))
    return columns, any_bad, problems


def to_frame(
    api: str | Api,
    fields: Sequence[str],
    rows: Sequence[Sequence[str]],
    keys: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Typed DataFrame of BaoStock `rows` whose values are in `fields` order (BaoStock names).

    `keys` (one per row, e.g. the requested code) only serve error messages; without them the
    row's `code` value is quoted. Raises MalformedValueError on any value that does not parse.
    """
    spec = _as_api(api)
    columns, _, problems = _convert(spec, fields, rows, keys)
    if problems:
        raise MalformedValueError(spec.name, problems)
    return pd.DataFrame(columns, copy=False)


def to_frame_by_key(
    api: str | Api,
    fields: Sequence[str],
    rows: Sequence[Sequence[str]],
    keys: Sequence[str],
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Like `to_frame`, but a malformed value only rejects the rows of its key.

    Returns the frame of every key whose rows all parse, and {key: reason} for the others.
    """
    spec = _as_api(api)
    if len(keys) != len(rows):
        raise ValueError(f"{len(keys)} keys for {len(rows)} rows")
    columns, any_bad, problems = _convert(spec, fields, rows, keys)
    frame = pd.DataFrame(columns, copy=False)
    if not problems:
        return frame, {}
    by_key: dict[str, list[BadValue]] = {}
    for problem in problems:
        by_key.setdefault(problem.key, []).append(problem)
    reasons = {key: _reason(spec.name, bad) for key, bad in by_key.items()}
    rejected = np.isin(np.asarray(keys, dtype=object), list(reasons))
    return frame.loc[~rejected].reset_index(drop=True), reasons


def to_frame_or_reason(
    api: str | Api, fields: Sequence[str], rows: Sequence[Sequence[str]]
) -> tuple[pd.DataFrame, None] | tuple[None, str]:
    """The rows of one request as a typed frame, or None and why not.

    The one-key form of `to_frame_by_key`: a malformed value rejects every row of the request
    (never NULL), and so do a row of the wrong width and a field the catalog does not describe.
    """
    spec = _as_api(api)
    try:
        columns, _, problems = _convert(spec, fields, rows, None)
    except MalformedValueError as exc:  # unknown field or ragged rows
        return None, str(exc)
    if problems:
        return None, _reason(spec.name, problems)
    return pd.DataFrame(columns, copy=False), None


def _reason(api_name: str, problems: Sequence[BadValue]) -> str:
    """Why one key's rows were rejected: the first few bad values."""
    shown = ", ".join(f"{p.field}={p.value!r}" for p in problems[:5])
    more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
    return f"malformed values from {api_name} (not stored as NULL): {shown}{more}"
