import math

import numpy as np
import pytest
from scipy import stats

from lstm_core.config import EvaluationConfig
from lstm_core.data import fit_preprocessor, make_dataset, prepare_data, split_frame
from lstm_core.evaluate import (
    diebold_mariano,
    evaluate_forecasts,
    evaluate_model,
    naive_scale,
    point_metrics,
)
from lstm_core.forecast import calibrate_recursive
from lstm_core.intervals import Intervals
from lstm_core.model import build_model
from lstm_core.predictor import Forecaster
from lstm_core.train import train_network
from tests.lstm_core.conftest import TINY_EVAL, TINY_FEATURES, TINY_MODEL, TINY_TRAINING, make_frame

METRIC_NAMES = {
    "test_rmse",
    "test_mae",
    "test_mape",
    "test_directional_accuracy",
    "mase",
    "naive_rmse",
    "naive_mae",
    "skill_vs_naive",
    "dm_stat",
    "dm_pvalue",
    *(
        f"{prefix}interval_{what}_{level}"
        for prefix in ("", "naive_")
        for what in ("coverage", "width", "score")
        for level in ("80", "95")
    ),
}


def _windows(frame, eval_cfg):
    frames = split_frame(frame, eval_cfg)
    return frames, make_dataset(frames, fit_preprocessor(frames.train, TINY_FEATURES))


def _evaluate(model, frames, data, eval_cfg):
    """The main job's evaluation: the served band's calibration, then the test part scored."""
    levels = eval_cfg.interval_levels
    calibration = calibrate_recursive(model, data.preprocessor, frames, 1, levels)
    return evaluate_model(model, data, eval_cfg, calibration)


def _train_and_evaluate(frame, eval_cfg):
    """The main job's chain on a tiny model: windows, training, test evaluation."""
    frames, data = _windows(frame, eval_cfg)
    result = train_network(TINY_MODEL, TINY_TRAINING, data.train, data.val)
    return result, _evaluate(result.model, frames, data, eval_cfg)


def test_point_metrics_by_hand():
    actual = np.array([10.0, 12.0, 9.0, 10.0])
    pred = np.array([11.0, 11.0, 9.0, 12.0])
    anchor = np.array([10.5, 11.0, 10.0, 10.0])  # last day: no move -> excluded from direction
    m = point_metrics(actual, pred, anchor)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 1 + 0 + 4) / 4))
    assert m["mae"] == pytest.approx(1.0)
    assert m["mape"] == pytest.approx(100 * (0.1 + 1 / 12 + 0 + 0.2) / 4)
    # moves: down/up (wrong), up/flat (wrong), down/down (right)
    assert m["directional_accuracy"] == pytest.approx(1 / 3)


def test_naive_scale_is_the_training_parts_mean_absolute_daily_change():
    prices = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    assert naive_scale(prices, 3) == pytest.approx(1.5)  # |2-1|, |4-2|: rows after 3 unread


def test_diebold_mariano_h1_equals_paired_t_test():
    rng = np.random.default_rng(0)
    e1, e2 = rng.normal(0, 1.0, 50), rng.normal(0, 1.3, 50)
    stat, p = diebold_mariano(e1, e2)
    ref = stats.ttest_1samp(e1**2 - e2**2, 0.0)
    assert stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert stat < 0  # model errors are smaller


def test_diebold_mariano_by_its_formula_and_degenerate():
    """The statistic as Diebold-Mariano and Harvey et al. write it, for one-day forecasts."""
    rng = np.random.default_rng(1)
    e1, e2 = rng.normal(0, 1.0, 40), rng.normal(0, 1.0, 40)
    d = e1**2 - e2**2
    n, c = len(d), d - d.mean()
    dm = d.mean() / math.sqrt(c @ c / n / n)  # the long-run variance: no autocovariance at h=1
    expected = dm * math.sqrt((n + 1 - 2) / n)  # Harvey et al.'s correction at h=1
    assert diebold_mariano(e1, e2)[0] == pytest.approx(expected)
    assert all(math.isnan(x) for x in diebold_mariano(e1, e1))
    assert all(math.isnan(x) for x in diebold_mariano(e1[:1], e2[:1]))


def test_evaluate_perfect_forecast():
    data = prepare_data(make_frame(100), TINY_FEATURES, EvaluationConfig())
    ev = evaluate_forecasts(data, data.test.actual, EvaluationConfig())
    assert set(ev.metrics) == METRIC_NAMES
    assert ev.metrics["test_rmse"] == 0.0 and ev.metrics["skill_vs_naive"] == 1.0
    assert ev.metrics["test_directional_accuracy"] == 1.0
    assert list(ev.predictions.columns) == [
        "date",
        "actual",
        "predicted",
        "naive",
        "lower_80",
        "upper_80",
        "lower_95",
        "upper_95",
    ]
    assert len(ev.predictions) == len(data.test)
    np.testing.assert_array_equal(ev.predictions["naive"], data.test.anchor)


def test_train_and_evaluate_end_to_end(frame):
    result, evaluation = _train_and_evaluate(frame, TINY_EVAL)
    m = evaluation.metrics
    assert set(m) == METRIC_NAMES
    assert all(np.isfinite(v) for v in m.values())
    preds = evaluation.predictions
    assert (preds["lower_95"] <= preds["lower_80"]).all() and (
        preds["upper_80"] <= preds["upper_95"]
    ).all()
    assert result.epochs_run == 1


def test_interval_metrics_by_hand():
    """Band metrics and the naive band, recomputed from the validation scores."""
    data = prepare_data(make_frame(200, seed=3), TINY_FEATURES, EvaluationConfig())
    cfg = EvaluationConfig(interval_levels=(0.8,))
    predicted = data.test.anchor[:, None] * 1.001
    val_pred = data.val.anchor[:, None] * 1.001
    scores = np.sort(np.abs(np.log(data.val.actual[:, 0] / val_pred[:, 0])))
    n = len(scores)
    k = math.ceil((n + 1) * 0.8) - 1
    lower, upper = predicted[:, 0] * np.exp(-scores[k]), predicted[:, 0] * np.exp(scores[k])
    bands = Intervals(lower={0.8: lower[:, None]}, upper={0.8: upper[:, None]})
    m = evaluate_forecasts(data, predicted, cfg, bands).metrics
    y = data.test.actual[:, 0]
    assert m["interval_coverage_80"] == pytest.approx(np.mean((y >= lower) & (y <= upper)))
    assert m["interval_width_80"] == pytest.approx(np.mean(upper - lower))
    outside = np.maximum(lower - y, 0) + np.maximum(y - upper, 0)
    assert m["interval_score_80"] == pytest.approx(np.mean(upper - lower + 10 * outside))
    naive_q = np.sort(np.abs(np.log(data.val.actual[:, 0] / data.val.anchor)))[k]
    naive_width = data.test.anchor * (np.exp(naive_q) - np.exp(-naive_q))
    assert m["naive_interval_width_80"] == pytest.approx(naive_width.mean())
    inside = np.abs(np.log(y / data.test.anchor)) <= naive_q
    assert m["naive_interval_coverage_80"] == pytest.approx(inside.mean())


def test_the_evaluated_band_is_the_served_next_day_band():
    frame = make_frame(160, seed=4)
    model = build_model(TINY_MODEL, 5, 1, 1, seed=0)
    frames, data = _windows(frame, TINY_EVAL)
    calibration = calibrate_recursive(model, data.preprocessor, frames, 3, (0.8, 0.95))
    first = evaluate_model(model, data, TINY_EVAL, calibration).predictions.iloc[0]
    history = frame.iloc[: frames.val_end]  # what the first test day is forecast from
    served = Forecaster(model, data.preprocessor, calibration).forecast(history, days=1).iloc[0]
    assert served["date"] == first["date"]
    assert served["forecast"] == pytest.approx(first["predicted"], rel=1e-6)
    for bound in ("lower_80", "upper_80", "lower_95", "upper_95"):
        assert served[bound] == pytest.approx(first[bound], rel=1e-6)


def test_conformal_bands_never_read_the_test_part():
    """Poisoned test prices change the test forecasts, never the band quantiles."""
    frame = make_frame(160, seed=4)
    model = build_model(TINY_MODEL, 5, 1, 1, seed=0)
    ev = _evaluate(model, *_windows(frame, TINY_EVAL), TINY_EVAL)
    poisoned = frame.copy()
    test_rows = poisoned.index >= split_frame(frame, TINY_EVAL).val_end
    poisoned.loc[test_rows, "open"] *= np.linspace(2.0, 5.0, test_rows.sum())
    ev_p = _evaluate(model, *_windows(poisoned, TINY_EVAL), TINY_EVAL)
    for name in ("80", "95"):
        q = np.log(ev.predictions[f"upper_{name}"] / ev.predictions["predicted"])
        q_p = np.log(ev_p.predictions[f"upper_{name}"] / ev_p.predictions["predicted"])
        np.testing.assert_allclose(q, q_p, rtol=1e-9)
        np.testing.assert_allclose(q, q.iloc[0])  # one validation quantile for all days
    assert not np.allclose(ev.predictions["actual"], ev_p.predictions["actual"])


def test_conformal_coverage_end_to_end_on_known_noise():
    """A tiny model on a price series with i.i.d. Gaussian log returns: the conformal band
    of the test days covers close to nominal.  Standard error of an 80% coverage over the
    ~240 test days plus the calibration's own spread is about 0.04: +-0.12 is three of it.
    """
    rng = np.random.default_rng(11)
    frame = make_frame(800, seed=11)
    frame["open"] = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, len(frame))))
    cfg = EvaluationConfig(val_fraction=0.3, test_fraction=0.3, backtest_folds=0)
    m = _train_and_evaluate(frame, cfg)[1].metrics
    assert m["interval_coverage_80"] == pytest.approx(0.8, abs=0.12)
    assert m["interval_coverage_95"] == pytest.approx(0.95, abs=0.06)
    assert m["interval_width_95"] > m["interval_width_80"] > 0
