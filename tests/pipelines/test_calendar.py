"""Exchange holidays for the dates of forecast days, and the sessions a series lacks."""

from __future__ import annotations

import numpy as np

from pipelines.calendar import closed_weekdays, gap_warning, missing_sessions


def test_closed_weekdays_are_the_exchanges_holidays_after_the_date():
    nyse = closed_weekdays("XNYS", "2017-11-10")
    assert nyse[:3] == ("2017-11-23", "2017-12-25", "2018-01-01")  # Thanksgiving, Christmas
    shanghai = closed_weekdays("XSHG", "2024-02-08")
    assert shanghai[:5] == ("2024-02-09", "2024-02-12", "2024-02-13", "2024-02-14", "2024-02-15")
    # strictly after the date given
    assert closed_weekdays("XNYS", "2017-11-22")[0] == "2017-11-23"
    assert closed_weekdays("XNYS", "2017-11-23")[0] == "2017-12-25"


def test_no_holidays_beyond_what_the_calendar_knows():
    assert closed_weekdays("XNYS", "2100-01-01") == ()
    assert closed_weekdays(None, "2017-11-10") == ()  # data.calendar: null, Monday-Friday


def _days(*iso: str) -> np.ndarray:
    return (np.array(iso, dtype="datetime64[D]") - np.datetime64("1970-01-01", "D")).astype(int)


def test_missing_sessions_after_the_stored_last_day_make_one_line():
    stored = _days("2017-10-12", "2017-10-13", "2017-10-30", "2017-10-31")
    since = _days("2017-10-13")[0]
    assert gap_warning("MSFT", "XNYS", stored, since) == (
        "MSFT: 10 XNYS sessions missing between 2017-10-13 and 2017-10-30 "
        "(2017-10-16..2017-10-27): forecasts for them are not scored"
    )
    # gaps before the stored last day are not this ingest's; holidays are no gaps
    # (Thanksgiving, Thursday 23 November 2017)
    assert gap_warning("MSFT", "XNYS", stored, _days("2017-10-30")[0]) is None
    assert gap_warning("MSFT", "XNYS", _days("2017-11-22", "2017-11-24"), 0) is None
    several = _days(
        "2017-10-13", "2017-10-17", "2017-10-19", "2017-10-23", "2017-10-25", "2017-10-27"
    )
    assert gap_warning("MSFT", "XNYS", several, since) == (
        "MSFT: 5 XNYS sessions missing between 2017-10-13 and 2017-10-27 (2017-10-16, "
        "2017-10-18, 2017-10-20 and 2 more gaps): forecasts for them are not scored"
    )
    assert missing_sessions("XNYS", several).size == 5
