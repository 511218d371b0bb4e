"""BaoStock failures, sorted into the two kinds the pool acts on.

Transient failures (network, timeout, dropped connection, server overload, blacklist) are retried
with exponential backoff; permanent ones (bad code, field, frequency, date, credentials) fail fast
because asking again cannot help. `from_reply` maps the client's `error_code` strings
(`baostock.common.contants.BSERR_*`) to the right class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# BaoStock error codes (common/contants.py) with an English reading, and whether a retry can help.
# The blacklist and network codes are transient; codes about the request itself are permanent.
_CODES: dict[str, tuple[str, bool]] = {
    "10001001": ("not logged in (session expired or lost)", True),
    "10001002": ("wrong user name or password", False),
    "10001003": ("could not read the user's account", True),
    "10001004": ("client version expired: upgrade the baostock package", False),
    "10001005": ("too many logins for this account", True),
    "10001006": ("account lacks the permission for this API", False),
    "10001007": ("account needs activation", False),
    "10001008": ("user name empty", False),
    "10001009": ("password empty", False),
    "10001010": ("logout failed", True),
    "10001011": ("client blacklisted by BaoStock (too many requests)", True),
    "10001012": ("API key malformed", False),
    "10002001": ("network error", True),
    "10002002": ("connection failed", True),
    "10002003": ("connection timed out", True),
    "10002004": ("connection closed while receiving", True),
    "10002005": ("send failed", True),
    "10002006": ("send timed out", True),
    "10002007": ("receive failed", True),
    "10002008": ("receive timed out", True),
    "10004001": ("response could not be parsed", True),
    "10004002": ("response could not be decompressed", True),
    "10004003": ("unknown client error", True),
    "10004004": ("index out of bounds", False),
    "10004005": ("required parameter empty", False),
    "10004006": ("bad parameter (code, frequency or adjustflag)", False),
    "10004007": ("malformed start date", False),
    "10004008": ("malformed end date", False),
    "10004009": ("start date after end date", False),
    "10004010": ("malformed date", False),
    "10004011": ("invalid security code", False),
    "10004012": ("invalid field", False),
    "10004013": ("date outside the supported range", False),
    "10004014": ("mixed security kinds not supported", False),
    "10004015": ("security kind not supported", False),
    "10004016": ("too many rows requested", False),
    "10004017": ("unsupported trade information", False),
    "10004018": ("field listed twice", False),
    "10004019": ("malformed message", True),
    "10004020": ("wrong message type", True),
    "10005001": ("server system error", True),
}
BLACKLIST_CODE = "10001011"
NOT_LOGGED_IN_CODE = "10001001"
# Codes after which the worker's socket can no longer be trusted: reconnect before the next call.
RECONNECT_CODES = frozenset(
    {NOT_LOGGED_IN_CODE, "10004001", "10004002", "10004019", "10004020"}
    | {c for c in _CODES if c.startswith("10002")}
)


class BaostockError(Exception):
    """A BaoStock request failed. `transient` says whether retrying can help."""

    transient: bool = False

    def __init__(
        self,
        reason: str,
        *,
        api: str | None = None,
        params: Mapping[str, Any] | None = None,
        error_code: str | None = None,
    ):
        self.reason = reason
        self.api = api
        self.params = dict(params or {})
        self.error_code = error_code
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.api or "baostock"
        code = self.params.get("code")
        if code:
            where += f" {code}"
        tag = f" [{self.error_code}]" if self.error_code else ""
        return f"{where}: {self.reason}{tag}"


class TransientError(BaostockError):
    """Network trouble, a timeout, an overloaded or rate-limiting server: retry with backoff."""

    transient = True


class PermanentError(BaostockError):
    """The request itself is wrong (bad code, field, date, credentials): retrying cannot help."""

    transient = False


class RequestTimeout(TransientError):
    """No reply within the per-request timeout; the session behind it was replaced."""


class ConnectionLost(TransientError):
    """The server dropped the connection or the worker process died mid-request."""


class BlacklistedError(TransientError):
    """BaoStock refused the client as too aggressive: the whole pool pauses before retrying."""


class PoolPausedError(BlacklistedError):
    """Not sent: BaoStock kept refusing the client, so the pool fails fast until its pause ends."""


class PoolClosedError(BaostockError):
    """The pool was closed (or is closing) while a request wanted a session."""


def from_reply(
    error_code: str,
    error_msg: str,
    *,
    api: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> BaostockError:
    """The exception for a non-zero BaoStock `error_code`.

    Unknown codes count as transient: the retry budget bounds the cost, while failing fast on a
    code we have never seen could drop data for a passing server hiccup.
    """
    meaning, transient = _CODES.get(error_code, ("unknown error code", True))
    reason = f"{meaning}: {error_msg}" if error_msg else meaning
    if error_code == BLACKLIST_CODE:
        cls: type[BaostockError] = BlacklistedError
    elif transient:
        cls = TransientError
    else:
        cls = PermanentError
    return cls(reason, api=api, params=params, error_code=error_code)
