"""Exchange trading days (exchange_calendars), for the dates of forecast days and of stored rows,
and the sessions a stored series lacks."""

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
    known_from = cal.first_session
    first = pd.Timestamp(_EPOCH + np.timedelta64(int(days.min()), "D"))
    if first < cal.first_session:  # the default calendar starts 20 years back: reach further
        bound = type(cal).bound_min()
        start = first if bound is None else max(first, pd.Timestamp(bound))
        if start < cal.first_session:
            cal = exchange_calendars.get_calendar(exchange, start=start)
            # known from `start` on, a holiday itself: its first session is the day after
            known_from = start
    lo = (known_from.to_datetime64().astype("datetime64[D]") - _EPOCH).astype(np.int64)
    hi = (cal.last_session.to_datetime64().astype("datetime64[D]") - _EPOCH).astype(np.int64)
    sessions = cal.sessions.values.astype("datetime64[D]")
    open_days = (sessions - _EPOCH).astype(np.int64)
    return (days >= lo) & (days <= hi) & ~np.isin(days, open_days)


def missing_sessions(exchange: str | None, days: np.ndarray) -> np.ndarray:
    """The days strictly between the first and last of ``days`` (sorted int days since 1970)
    that ``exchange`` traded on (:func:`closed_days` decides) and ``days`` lacks."""
    days = np.asarray(days, dtype=np.int64)
    if len(days) < 2:
        return days[:0]
    span = np.arange(days[0] + 1, days[-1])
    absent = span[~np.isin(span, days)]
    return absent[~closed_days(exchange, absent)]


def first_missing_session(exchange: str | None, dates: Any, after: Any) -> str | None:
    """The first session of ``exchange`` missing from the stored ``dates`` (sorted) after the
    last of them on or before ``after`` (ISO), or None."""
    stored = pd.to_datetime(pd.Series(dates)).to_numpy().astype("datetime64[D]")
    start = max(
        int(np.searchsorted(stored, np.datetime64(pd.Timestamp(after), "D"), "right")) - 1, 0
    )
    missing = missing_sessions(exchange, (stored[start:] - _EPOCH).astype(np.int64))
    return str(_EPOCH + np.timedelta64(int(missing[0]), "D")) if len(missing) else None


GAPS_SHOWN = 3  # gaps named in a warning; more are counted


def gap_warning(ticker: str, exchange: str, days: np.ndarray, since: int) -> str | None:
    """One line naming the sessions of ``exchange`` missing from the stored ``days`` (sorted,
    int days since 1970) after ``since``, the day the store held last before an ingest; None
    when none are missing."""
    tail = np.asarray(days, dtype=np.int64)
    tail = tail[tail >= since]
    missing = missing_sessions(exchange, tail)
    if not len(missing):
        return None
    iso = [str(_EPOCH + np.timedelta64(int(d), "D")) for d in (*tail, *missing)]
    day, lost = iso[: len(tail)], iso[len(tail) :]
    after = np.searchsorted(tail, missing)  # the stored day after each missing one
    ranges = []
    for k in np.unique(after):
        run = np.flatnonzero(after == k)
        first, last = lost[run[0]], lost[run[-1]]
        ranges.append(first if first == last else f"{first}..{last}")
    named = ", ".join(ranges[:GAPS_SHOWN])
    if len(ranges) > GAPS_SHOWN:
        more = len(ranges) - GAPS_SHOWN
        named += f" and {more} more gap{'s' if more != 1 else ''}"
    n = len(missing)
    return (
        f"{ticker}: {n} {exchange} session{'s' if n != 1 else ''} missing between "
        f"{day[after[0] - 1]} and {day[after[-1]]} ({named}): forecasts for them are not scored"
    )


def check_stored_days(ticker: str, dates: Any, exchange: str | None) -> None:
    """Refuse to train on a stored series holding a day ``exchange`` did not trade on
    (:func:`closed_days`, the check `ingest` makes): its rows were stored under another
    ``data.calendar``, and a model trained here would date its forecasts on this one's
    sessions, on which those prices never trade."""
    days = np.asarray(dates, dtype="datetime64[D]")
    closed = closed_days(exchange, (days - _EPOCH).astype(np.int64))
    if not closed.any():
        return
    from pipelines.errors import PipelineError

    day = pd.Timestamp(days[int(np.flatnonzero(closed)[0])])
    which = (
        "a Saturday or Sunday, not a trading day with data.calendar null"
        if exchange is None
        else f"not a session of {exchange} (data.calendar)"
    )
    raise PipelineError(
        f"{ticker}: stored day {day:%Y-%m-%d} ({day:%A}) is {which}: these prices were stored "
        "with another calendar; set data.calendar in mlflow.yaml to the calendar they were "
        "stored with (e.g. XSHG for Shanghai and Shenzhen shares), then train again"
    )
