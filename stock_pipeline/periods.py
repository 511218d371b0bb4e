"""Statement periods (year, quarter) and their legal deadlines: pure dates, no pandas, so the
partitions, the schedules and the P1 computations share one definition.

Reports are due by law: Q1 by April 30, H1 by August 31, Q3 by October 31, the annual report by
April 30 of the next year.
"""

from __future__ import annotations

import datetime as dt

Period = tuple[int, int]  # (year, quarter)


def quarter_start(year: int, quarter: int) -> dt.date:
    return dt.date(year, 3 * quarter - 2, 1)


def quarter_end(year: int, quarter: int) -> dt.date:
    """The period's stat_date."""
    return dt.date(year, 3 * quarter, 31 if quarter in (1, 4) else 30)


def period_label(period: Period) -> str:
    return f"{period[0]}Q{period[1]}"


def periods_between(start: dt.date, end: dt.date) -> list[Period]:
    """The statement periods whose first day lies in [start, end], in order."""
    out = []
    year, quarter = start.year, (start.month - 1) // 3 + 1
    if quarter_start(year, quarter) < start:
        year, quarter = (year, quarter + 1) if quarter < 4 else (year + 1, 1)
    while quarter_start(year, quarter) <= end:
        out.append((year, quarter))
        year, quarter = (year, quarter + 1) if quarter < 4 else (year + 1, 1)
    return out


def deadline(year: int, quarter: int) -> dt.date:
    """The last legal publication day of a period's report."""
    if quarter == 1:
        return dt.date(year, 4, 30)
    if quarter == 2:
        return dt.date(year, 8, 31)
    if quarter == 3:
        return dt.date(year, 10, 31)
    if quarter == 4:
        return dt.date(year + 1, 4, 30)
    raise ValueError(f"quarter must be 1..4, got {quarter}")


def settled(year: int, quarter: int, today: dt.date, grace_days: int = 30) -> bool:
    """Whether a period's reports are all in: `grace_days` have passed since its deadline
    (BaoStock needs a few days to serve a report; late filers are rare exceptions)."""
    return today > deadline(year, quarter) + dt.timedelta(days=grace_days)
