"""Exchange holidays for the dates of forecast days."""

from __future__ import annotations

from pipelines.calendar import closed_weekdays


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
