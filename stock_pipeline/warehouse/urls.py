"""Database URL spelling: users give plain postgresql:// URLs, each driver gets its own form.

SQLAlchemy 2.1 maps a bare postgresql:// URL to psycopg 3, which we do not ship, so the driver is
always spelled out here: asyncpg for the warehouse, psycopg2 for Alembic and Dagster's storage.
Also here: how a URL, and a driver's message about it, are shown without the password.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import quote, unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from stock_pipeline.settings import redact_url

Driver = Literal["asyncpg", "psycopg2"]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?://)?")  # as redact_url reads it


def _parse(url: str | URL) -> URL:
    if isinstance(url, str):
        try:
            parsed = make_url(url)
        except ValueError:  # make_url's int() of the port
            raise ValueError(
                f"{display_url(url)} has a port that is not a number (e.g. 127.0.0.1:5432)"
            ) from None
        except ArgumentError:
            raise ValueError(
                f"{display_url(url)} is not a URL: write postgresql://user:password@host:port/"
                "database (percent-encode @ / ? # in the password as %40 %2F %3F %23)"
            ) from None
    else:
        parsed = url
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {display_url(parsed)}")
    return parsed


def check_url(url: str) -> None:
    """Raise ValueError, naming the masked URL and what to change, unless the drivers can use
    `url` as a PostgreSQL URL."""
    _parse(url)


def sqlalchemy_url(url: str | URL, driver: Driver = "asyncpg", database: str | None = None) -> URL:
    """The URL with its driver set, e.g. postgresql+asyncpg://... ."""
    parsed = _parse(url).set(drivername=f"postgresql+{driver}")
    return parsed.set(database=database) if database else parsed


def asyncpg_dsn(url: str | URL, database: str | None = None) -> str:
    """A libpq-style postgresql:// DSN (asyncpg.connect and psycopg2.connect accept it).

    A unix-socket directory given as ?host=/dir is kept as a query parameter, which both accept.
    """
    parsed = _parse(url).set(drivername="postgresql")
    if database:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def display_url(url: str | URL) -> str:
    """The URL with its password masked: the only form that may reach logs and errors."""
    return redact_url(url if isinstance(url, str) else url.render_as_string(hide_password=True))


def describe_error(exc: BaseException, url: str) -> str:
    """`Type: message` of a driver's error about `url` (any scheme) on one line, its password
    masked."""
    detail = f"{type(exc).__name__}: {' '.join(mask_password(str(exc), url).split())}"
    if _unencoded_password(url):
        detail += " (percent-encode any @ / ? # in the password as %40 %2F %3F %23)"
    return detail


def mask_password(message: str, url: str) -> str:
    """`message` (a driver's error about `url`, any scheme) with url's password masked.

    Drivers echo what they could not use: a password holding %00 in its encoded form, one
    holding an unencoded @ as part of the host name after it. Every spelling of the password,
    and each piece of 3+ characters that an unencoded @ / ? # splits off, becomes ***.
    """
    passwords = set(_passwords(url))
    for password in list(passwords):
        passwords.update(piece for piece in re.split(r"[@/?#]", password) if len(piece) >= 3)
    spellings = set()
    for password in passwords:
        plain = unquote(password)
        # as written, decoded, encoded, and as SQLAlchemy renders it for the drivers
        spellings |= {password, plain, quote(plain, safe=""), quote(plain, safe=" +")}
    for form in sorted(spellings - {""}, key=len, reverse=True):
        message = message.replace(form, "***")
    return message


def _unencoded_password(url: str) -> bool:
    """Whether url's password seems to hold an unencoded @ / ? or #, which splits it."""
    widest = _widest_password(url)
    return widest is not None and bool(re.search(r"[@/?#]", widest))


def _widest_password(url: str) -> str | None:
    """The password as redact_url reads it: from the user's colon up to the last @."""
    scheme = _SCHEME.match(url)
    if scheme:
        userinfo, at, _host = url[scheme.end() :].rpartition("@")
        if at and ":" in userinfo:
            return userinfo.split(":", 1)[1]
    return None


def _passwords(url: str) -> list[str]:
    """url's password as each reader sees it: up to the last @, up to the first @ (SQLAlchemy),
    in password= query parameters (libpq, redis-py) or libpq key=value pairs."""
    found = [_widest_password(url) or ""]
    try:
        found.append(str(make_url(url).password or ""))
    except (ArgumentError, ValueError):
        pass  # not a URL SQLAlchemy reads: the other readings cover it
    if _SCHEME.match(url):
        found += re.findall(r"[?&](?:ssl)?password=([^&#]*)", url, flags=re.I)
    else:
        for quoted, bare in re.findall(
            r"\b(?:ssl)?password\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S*))", url, flags=re.I
        ):
            found += [quoted, re.sub(r"\\(.)", r"\1", quoted), bare]
    return [password for password in found if password]
