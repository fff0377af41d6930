"""Exchange trading days (exchange_calendars), for the dates of forecast days."""

from __future__ import annotations

from typing import Any

import pandas as pd


def closed_weekdays(exchange: str | None, after: Any) -> tuple[str, ...]:
    """The weekdays after ``after`` on which ``exchange`` does not trade, ISO dates, as far
    ahead as its calendar is known (exchange_calendars' last session); none without one."""
    if exchange is None:
        return ()
    import exchange_calendars

    cal = exchange_calendars.get_calendar(exchange)
    start = max(pd.Timestamp(after).normalize() + pd.Timedelta(days=1), cal.first_session)
    end = cal.last_session
    if start > end:
        return ()
    weekdays = pd.bdate_range(start, end)
    closed = weekdays.difference(pd.DatetimeIndex(cal.sessions_in_range(start, end)))
    return tuple(d.strftime("%Y-%m-%d") for d in closed)
