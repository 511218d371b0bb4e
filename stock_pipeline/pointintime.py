"""Point-in-time queries: what the warehouse knew on a day, without look-ahead.

The SQL behind `read.finance_as_of`, `read.index_members`, `read.industry_as_of` and
`read.universe` (MarketReader runs it). Kept apart from read.py's cache-aside logic: these reads
always go to PostgreSQL (they are per-day lookups over small tables).

What "as of day D" means here:
- finance: per code, the statement with the latest stat_date among those published on or before
  D (pub_date <= D), in the version valid on D. The first version stored is taken as published
  (valid from pub_date); a re-fetch that changed it moved the old values to finance_revisions
  with superseded_on = the day of that re-fetch, so D before that day reads the old values.
  BaoStock serves only its latest values: a correction made before the warehouse first fetched
  a statement is invisible, and the day of a revision is the day the warehouse noticed it.
- index members and industries: intervals [valid_from, valid_to) built from BaoStock's dated
  snapshots; a change is known from the snapshot that first shows it (snapshots are sampled, see
  the P3 and P4 assets).
- universe: the stocks query_all_stock listed as trading on D (raw_all_stock), delisted ones
  included for past days.
"""

from __future__ import annotations

import datetime as dt

from stock_pipeline.warehouse.tables import finance

# Index aliases BaoStock's constituent APIs are named after, and the index codes they stand for.
INDEX_ALIASES = {"hs300": "sh.000300", "sz50": "sh.000016", "zz500": "sh.000905"}

FINANCE_VALUE_COLUMNS: tuple[str, ...] = tuple(
    c.name
    for c in finance.columns
    if c.name not in ("code", "stat_date", "pub_date", "revised_on", "updated_at")
)
FINANCE_COLUMNS: tuple[str, ...] = ("stat_date", "pub_date", "valid_from", *FINANCE_VALUE_COLUMNS)


def finance_as_of_sql(with_codes: bool) -> str:
    """Parameters: day, and codes (a list) when `with_codes`."""
    values = ", ".join(FINANCE_VALUE_COLUMNS)
    only = "AND code = ANY(%(codes)s)" if with_codes else ""
    return f"""
WITH versions AS (
    SELECT code, stat_date, pub_date, coalesce(revised_on, pub_date) AS valid_from,
           NULL::date AS valid_to, {values}
    FROM finance WHERE pub_date <= %(day)s {only}
    UNION ALL
    SELECT code, stat_date, pub_date, coalesce(revised_on, pub_date), superseded_on, {values}
    FROM finance_revisions WHERE pub_date <= %(day)s {only}
)
SELECT DISTINCT ON (code) code, stat_date, pub_date, valid_from, {values}
FROM versions
WHERE valid_from <= %(day)s AND (valid_to IS NULL OR valid_to > %(day)s)
ORDER BY code, stat_date DESC
"""


INDEX_MEMBERS_SQL = """
SELECT code FROM index_constituents
WHERE index_code = %(index)s AND valid_from <= %(day)s
  AND (valid_to IS NULL OR valid_to > %(day)s)
ORDER BY code
"""
INDEX_SPAN_SQL = """
SELECT min(valid_from), max(coalesce(valid_to, valid_from)) FROM index_constituents
WHERE index_code = %(index)s
"""

INDUSTRY_COLUMNS = ("industry", "classification", "valid_from")


def industry_as_of_sql(with_codes: bool) -> str:
    only = "AND code = ANY(%(codes)s)" if with_codes else ""
    return f"""
SELECT code, industry, classification, valid_from FROM industry_membership
WHERE valid_from <= %(day)s AND (valid_to IS NULL OR valid_to > %(day)s) {only}
ORDER BY code
"""


INDUSTRY_SPAN_SQL = "SELECT min(valid_from) FROM industry_membership"

# Stocks (security_type 1, or unknown to stock_basic) listed as trading on the day.
UNIVERSE_SQL = """
SELECT a.code FROM raw_all_stock a LEFT JOIN raw_stock_basic b ON b.code = a.code
WHERE a.trade_date = %(day)s AND a.trade_status AND coalesce(b.security_type, 1) = 1
ORDER BY a.code
"""
LISTINGS_ON_DAY_SQL = "SELECT EXISTS (SELECT 1 FROM raw_all_stock WHERE trade_date = %(day)s)"
IS_OPEN_SQL = "SELECT is_open FROM trade_calendar WHERE cal_date = %(day)s LIMIT 1"


def index_code(index: object) -> str:
    """'sh.000300' or its alias 'hs300' (also 'sz50', 'zz500') -> the index code."""
    if isinstance(index, str):
        name = index.strip().lower()
        if name in INDEX_ALIASES:
            return INDEX_ALIASES[name]
        if name in INDEX_ALIASES.values():
            return name
    known = ", ".join(f"{code} ({alias})" for alias, code in INDEX_ALIASES.items())
    raise ValueError(f"index must be one of {known}; got {index!r}")


def no_snapshot_message(index: str, day: dt.date, first: dt.date | None) -> str:
    if first is None:
        return (
            f"index_constituents holds no snapshot of {index}: materialize the p3 group's "
            "constituent assets (raw_hs300_stocks, ..., index_constituents) first"
        )
    return (
        f"{day} is before the first stored snapshot of {index} ({first}): its members on that "
        "day are unknown here; set STOCK_PIPELINE_START_DATE earlier and rematerialize the "
        "constituent assets"
    )
