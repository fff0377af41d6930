import json

import numpy as np
import pytest

from lstm_core.intervals import (
    ConformalCalibration,
    Intervals,
    band_metrics,
    calibrate,
    conformal_quantile,
    level_name,
    price_scores,
    recalibrate,
)


def test_level_names():
    assert [level_name(x) for x in (0.8, 0.95, 0.975, 0.5)] == ["80", "95", "97.5", "50"]


def test_band_metrics():
    band = Intervals({0.8: np.zeros((4, 1))}, {0.8: np.full((4, 1), 10.0)})
    m = band_metrics(np.array([1.0, 5.0, 9.0, 20.0]), band, 0.8)
    assert m["interval_coverage_80"] == 0.75 and m["interval_width_80"] == 10.0
    # Winkler: width 10 + 2 / 0.2 * (20 - 10) for the one outside, averaged over 4
    assert m["interval_score_80"] == pytest.approx(10.0 + 100.0 / 4)
    assert all(np.isnan(v) for v in band_metrics(np.array([]), band, 0.8).values())
    assert all(np.isnan(v) for v in band_metrics(np.ones(4), None, 0.8, "naive_").values())


def test_conformal_quantile_by_hand():
    scores = np.array([7.0, 2.0, 9.0, 1.0, 5.0, 3.0, 8.0, 6.0, 4.0])  # 1..9 shuffled, n = 9
    assert conformal_quantile(scores, 0.8) == 8.0  # ceil(10 * 0.8) = 8th smallest, not 9th
    assert conformal_quantile(scores, 0.5) == 5.0  # ceil(10 * 0.5) = 5
    assert conformal_quantile(scores, 0.75) == 8.0  # ceil(7.5) = 8
    assert conformal_quantile(scores, 0.95) == 9.0  # ceil(9.5) = 10 > n: the largest (MAPIE)
    assert conformal_quantile(np.arange(1.0, 20.0), 0.95) == 19.0  # n = 19: ceil(19) = 19
    assert conformal_quantile(np.arange(1.0, 41.0), 0.95) == 39.0  # ceil(38.95) = 39
    with pytest.raises(ValueError, match="no calibration scores"):
        conformal_quantile(np.array([]), 0.8)


def test_split_conformal_coverage_is_nominal_on_gaussian_noise():
    """Statistical test: with n = 39 scores the 80% band covers a new point with
    probability exactly 32/40 = 0.8 (exchangeability), and the 95% band 38/40 = 0.95.

    4000 independent calibrations, one new point each: the standard error of the mean
    coverage is at most 0.0064, so +-0.025 is about four standard errors.
    """
    rng = np.random.default_rng(123)
    trials, n = 4000, 39
    errors = rng.normal(0.0, 2.0, (trials, n + 1))
    for level, expected in ((0.8, 32 / 40), (0.95, 38 / 40)):
        hits = [abs(e[-1]) <= conformal_quantile(np.abs(e[:-1]), level) for e in errors]
        assert np.mean(hits) == pytest.approx(expected, abs=0.025)


def test_calibration_bands_widths_and_round_trip():
    rng = np.random.default_rng(5)
    actual = rng.normal(100.0, 1.0, (50, 2))
    predicted = actual * np.exp(rng.normal(0.0, [0.01, 0.03], (50, 2)))  # step 2 is noisier
    cal = calibrate(price_scores(actual, predicted).T, (0.8, 0.95), np.datetime64("2024-05-31"))
    assert cal.steps == 2 and cal.last_date == "2024-05-31"
    scores = np.abs(np.log(actual / predicted))
    q80 = np.array([conformal_quantile(scores[:, k], 0.8) for k in (0, 1)])
    bands = cal.bands(np.array([[10.0, 20.0]]))
    np.testing.assert_allclose(bands.upper[0.8][0], [10.0, 20.0] * np.exp(q80))
    np.testing.assert_allclose(bands.lower[0.8][0], [10.0, 20.0] * np.exp(-q80))
    assert (bands.upper[0.95] >= bands.upper[0.8]).all() and q80[1] > q80[0]
    back = ConformalCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.metrics() == cal.metrics() and back.last_date == cal.last_date
    assert back.metrics()["interval_q_80_day1"] == pytest.approx(q80[0])


def test_recalibrate_keeps_the_most_recent_window():
    cal = ConformalCalibration(
        scores=(np.arange(5.0), np.arange(4.0)), levels=(0.8,), last_date="2024-01-05"
    )
    new = recalibrate(cal, [np.array([10.0, 11.0]), np.array([])], "2024-01-09")
    np.testing.assert_array_equal(new.scores[0], [2.0, 3.0, 4.0, 10.0, 11.0])
    np.testing.assert_array_equal(new.scores[1], np.arange(4.0))
    assert new.last_date == "2024-01-09" and cal.scores[0][0] == 0.0  # pure: input unchanged
    with pytest.raises(ValueError, match="2 step"):
        recalibrate(cal, [np.array([1.0])], "2024-01-09")


def test_recalibration_follows_a_volatility_regime_change():
    """Static bands under-cover after the noise doubles; the rolling window recovers."""
    rng = np.random.default_rng(9)
    n = 200
    cal = ConformalCalibration(
        scores=(np.abs(rng.normal(0, 1.0, n)),), levels=(0.8,), last_date="2024-01-01"
    )
    live = np.abs(rng.normal(0, 2.0, 3 * n))  # the new regime, one score per day
    static_hits, rolling_hits = [], []
    current = cal
    for day, err in enumerate(live):
        static_hits.append(err <= cal.quantile(0.8, 0))
        rolling_hits.append(err <= current.quantile(0.8, 0))
        current = recalibrate(current, [np.array([err])], np.datetime64("2024-01-02") + day)
    assert np.mean(static_hits[n:]) < 0.55  # P(|2Z| < 1.28) = 0.48
    assert np.mean(rolling_hits[n:]) == pytest.approx(0.8, abs=0.07)


def test_interval_score_by_hand():
    actual = np.array([0.0, 5.0, -3.0])
    band = Intervals({0.8: np.full((3, 1), -1.0)}, {0.8: np.full((3, 1), 1.0)})
    # alpha = 0.2: width 2, plus 2/0.2 = 10 times the distance outside
    score = band_metrics(actual, band, 0.8)["interval_score_80"]
    assert score == pytest.approx((2 + 42 + 22) / 3)
