"""Key names and versions of the cache. Pure: no I/O.

    {prefix}:current                  the version readers use (a string)
    {prefix}:{version}:meta           HASH day, created_at, codes, bars, columns, ...
    {prefix}:{version}:bars:{code}    the code's last `bars` stock_daily rows (codec bytes)
    {prefix}:{version}:latest:{code}  HASH the code's latest bar and latest indicators, one
                                      field per column, and the row packed in `_frame`
    {prefix}:{version}:xs             the day's cross-section (codec bytes)

A version is `{day:%Y%m%d}-{created:%Y%m%dT%H%M%S%f}` (UTC): the day of technical_daily it
holds, recoverable for the freshness check, and when it was written, which keeps versions
unique and orders them.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from stock_pipeline.settings import CACHE_PREFIX_PATTERN

_VERSION = re.compile(r"(\d{8})-(\d{8}T\d{12})")


def make_version(day: dt.date, created: dt.datetime) -> str:
    """The version of a cache of `day` written at `created` (UTC)."""
    created = created.astimezone(dt.UTC) if created.tzinfo else created
    return f"{day:%Y%m%d}-{created:%Y%m%dT%H%M%S%f}"


def parse_version(version: str) -> tuple[dt.date, dt.datetime]:
    """(day, created) of a version; ValueError for text that is not one."""
    match = _VERSION.fullmatch(version)
    if match is None:
        raise ValueError(f"{version!r} is not a cache version (YYYYMMDD-YYYYMMDDTHHMMSSffffff)")
    try:
        day = dt.datetime.strptime(match.group(1), "%Y%m%d").date()
        created = dt.datetime.strptime(match.group(2), "%Y%m%dT%H%M%S%f").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"{version!r} is not a cache version: its dates do not exist") from None
    return day, created


@dataclass(frozen=True)
class CacheKeys:
    """The key names under one prefix."""

    prefix: str

    def __post_init__(self) -> None:
        if not CACHE_PREFIX_PATTERN.fullmatch(self.prefix):
            raise ValueError(
                f"cache prefix {self.prefix!r} must be 1-100 letters, digits, _ . : or - "
                "(starting with a letter or digit): it is matched literally in key patterns"
            )

    @property
    def current(self) -> str:
        return f"{self.prefix}:current"

    def meta(self, version: str) -> str:
        return f"{self.prefix}:{version}:meta"

    def bars(self, version: str, code: str) -> str:
        return f"{self.prefix}:{version}:bars:{code}"

    def latest(self, version: str, code: str) -> str:
        return f"{self.prefix}:{version}:latest:{code}"

    def cross_section(self, version: str) -> str:
        return f"{self.prefix}:{version}:xs"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key under the prefix."""
        return f"{self.prefix}:*"

    def version_of(self, key: str) -> str | None:
        """The version a key belongs to (None for the pointer or a foreign key)."""
        if not key.startswith(self.prefix + ":"):
            return None
        version = key[len(self.prefix) + 1 :].split(":", 1)[0]
        return version if _VERSION.fullmatch(version) else None
