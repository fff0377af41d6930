"""Live scoring arithmetic against hand-computed values."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lstm_core import scoring

DATES = pd.bdate_range("2024-01-01", periods=6)  # Mon 1 .. Mon 8 January
PRICES = pd.DataFrame({"date": DATES, "open": [10.0, 11.0, 12.0, 11.0, 13.0, 14.0]})


def _log() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "made_on": [DATES[1], DATES[1], DATES[4], DATES[4]],
            "step": [1, 2, 1, 2],
            "forecast": [11.5, 12.5, 13.5, 15.0],
            "lower_80": [11.0, 12.6, 13.0, 14.0],
            "upper_80": [12.0, 13.0, 14.5, 16.0],
        }
    )


def test_match_by_trading_day_step_and_pending_targets():
    m = scoring.match(_log(), PRICES, "open")
    assert m["scored"].tolist() == [True, True, True, False]
    assert m["actual"].iloc[:3].tolist() == [12.0, 11.0, 14.0]
    assert m["last"].tolist() == [11.0, 11.0, 13.0, 13.0]
    assert m["target_date"].iloc[2] == DATES[5]  # Monday after the Friday: no calendar needed
    assert pd.isna(m["target_date"].iloc[3]) and math.isnan(m["actual"].iloc[3])


def test_metrics_match_hand_computed_values():
    got = scoring.metrics(scoring.match(_log(), PRICES, "open"))
    # errors -0.5, 1.5, -0.5; naive errors (last - actual) -1, 0, -1
    assert got.n == 3 and got.days == 3
    assert got.rmse == pytest.approx(math.sqrt(2.75 / 3))
    assert got.mae == pytest.approx(2.5 / 3)
    assert got.naive_rmse == pytest.approx(math.sqrt(2 / 3))
    assert got.skill_vs_naive == pytest.approx(1 - math.sqrt(2.75 / 3) / math.sqrt(2 / 3))
    assert got.directional_accuracy == pytest.approx(2 / 3)  # the flat day went the wrong way
    assert got.coverage == {"80": pytest.approx(2 / 3)}


def test_window_keeps_the_last_trading_days_and_series_is_rolling():
    m = scoring.match(_log(), PRICES, "open")
    last_two = scoring.window(m, 2)  # target positions 4 and 5: only the one at 5 is scored
    assert last_two["target_index"].tolist() == [5]
    s = scoring.series(m, days=2, origin=1)
    assert s["step"].tolist() == [1, 2, 4]
    assert s["live_rmse"].tolist() == pytest.approx([0.5, math.sqrt(2.5 / 2), 0.5])
    assert list(s["target_date"]) == [DATES[2], DATES[3], DATES[5]]


def test_no_scored_rows_gives_nan_not_zero():
    m = scoring.match(_log().iloc[3:], PRICES, "open")
    got = scoring.metrics(m)
    assert got.n == 0 and math.isnan(got.rmse) and math.isnan(got.coverage["80"])
    assert not scoring.verdict(got, 1, 1.0, 0.1).degraded


def test_verdict_needs_min_days_and_names_the_reasons():
    got = scoring.metrics(scoring.match(_log(), PRICES, "open"))
    assert not scoring.verdict(got, min_days=4, max_live_ratio=1.0, coverage_tolerance=0.0).degraded
    v = scoring.verdict(got, min_days=3, max_live_ratio=1.1, coverage_tolerance=0.1)
    assert v.degraded and "live RMSE" in v.reasons[0] and "coverage_80" in v.reasons[1]
    assert not scoring.verdict(got, 3, max_live_ratio=1.5, coverage_tolerance=0.2).degraded


# Stored days with Wednesday 3 and Thursday 4 January missing: the exchange traded on both.
GAPPY = PRICES.drop(index=[2, 3]).reset_index(drop=True)


def _dated_log() -> pd.DataFrame:
    """Forecasts made on Tuesday 2 January for 1..4 days, dated with the exchange's sessions,
    and one made on Friday 5 for Monday 8."""
    made = [DATES[1]] * 4 + [DATES[4]]
    return pd.DataFrame(
        {
            "made_on": made,
            "step": [1, 2, 3, 4, 1],
            "expected_date": [*DATES[2:6], DATES[5]],
            "forecast": [100.0, 100.0, 13.5, 100.0, 14.5],
            "lower_80": [99.0, 99.0, 13.0, 99.0, 14.0],
            "upper_80": [101.0, 101.0, 14.0, 101.0, 15.0],
        }
    )


def test_with_a_calendar_a_forecast_whose_day_is_missing_is_not_scored_on_a_later_day():
    m = scoring.match(_dated_log(), GAPPY, "open", dated=True)
    # stored after the 2nd: the 5th and the 8th, where steps 1 and 2 would land by position;
    # steps 3 and 4 have no stored position yet, but their days (the 5th, the 8th) are
    # stored at other positions: none of the four is ever scored unless the 3rd and 4th come
    assert m["gap"].tolist() == [True, True, True, True, False]
    assert m["scored"].tolist() == [False, False, False, False, True]
    assert m["actual"].isna().tolist() == [True, True, True, True, False]
    assert m["target_date"].iloc[4] == DATES[5] and m["actual"].iloc[4] == 14.0
    # once the missing days are ingested, every forecast is scored on its own day
    filled = scoring.match(_dated_log(), PRICES, "open", dated=True)
    assert filled["scored"].all() and not filled["gap"].any()
    assert list(filled["target_date"]) == list(filled["expected_date"])
    # a forecast for a day after the store's last is pending, not a gap
    ahead = pd.Timestamp("2024-01-09")
    later = _dated_log().iloc[[4]].assign(made_on=DATES[5], expected_date=ahead)
    m = scoring.match(later, GAPPY, "open", dated=True)
    assert not m["gap"].any() and not m["scored"].any()


def test_without_a_calendar_the_position_decides_as_before():
    m = scoring.match(_dated_log(), GAPPY, "open")
    assert not m["gap"].any()
    assert m["scored"].tolist() == [True, True, False, False, True]
    assert list(m["target_date"].iloc[:2]) == [DATES[4], DATES[5]]  # the 5th and the 8th
    # a log without expected dates (or rows without one) is matched by position, calendar or not
    undated = _dated_log().assign(expected_date=None)
    assert not scoring.match(undated, GAPPY, "open", dated=True)["gap"].any()


def test_the_verdict_counts_only_scored_forecasts():
    # the forecasts for the missing days were far off: scored on the later days they would
    # call the model degraded; left unscored, the one scored forecast is inside its band
    wrong = scoring.metrics(scoring.match(_dated_log(), GAPPY, "open"))
    assert scoring.verdict(wrong, 1, 1.5, 0.1).degraded
    got = scoring.metrics(scoring.match(_dated_log(), GAPPY, "open", dated=True))
    assert (got.n, got.days, got.coverage) == (1, 1, {"80": 1.0})
    assert not scoring.verdict(got, 1, 1.5, 0.1).degraded
