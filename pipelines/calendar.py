"""Exchange trading days (exchange_calendars), for the dates of forecast days and of stored rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

_EPOCH = np.datetime64("1970-01-01", "D")


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


def closed_days(exchange: str | None, days: np.ndarray) -> np.ndarray:
    """Which of ``days`` (int days since 1970) ``exchange`` did not trade on, as far back and
    ahead as its calendar knows (days outside that range count as open); without an exchange,
    Saturdays and Sundays. exchange_calendars is imported only when there is a day to check."""
    days = np.asarray(days, dtype=np.int64)
    if exchange is None or not len(days):
        return (days + 3) % 7 >= 5  # 1970-01-01 was a Thursday
    import exchange_calendars

    cal = exchange_calendars.get_calendar(exchange)
    first = pd.Timestamp(_EPOCH + np.timedelta64(int(days.min()), "D"))
    if first < cal.first_session:  # the default calendar starts 20 years back: reach further
        bound = type(cal).bound_min()
        start = first if bound is None else max(first, pd.Timestamp(bound))
        if start < cal.first_session:
            cal = exchange_calendars.get_calendar(exchange, start=start)
    lo = (cal.first_session.to_datetime64().astype("datetime64[D]") - _EPOCH).astype(np.int64)
    hi = (cal.last_session.to_datetime64().astype("datetime64[D]") - _EPOCH).astype(np.int64)
    sessions = cal.sessions.values.astype("datetime64[D]")
    open_days = (sessions - _EPOCH).astype(np.int64)
    return (days >= lo) & (days <= hi) & ~np.isin(days, open_days)
