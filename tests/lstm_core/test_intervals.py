import numpy as np
import pytest

from lstm_core.config import FeatureConfig, ModelConfig
from lstm_core.data import fit_preprocessor
from lstm_core.intervals import (
    coverage,
    level_name,
    mc_dropout_intervals,
    mc_dropout_samples,
    quantile_bounds,
)
from lstm_core.model import build_model
from tests.lstm_core.conftest import make_frame


def test_level_names():
    assert [level_name(x) for x in (0.8, 0.95, 0.975, 0.5)] == ["80", "95", "97.5", "50"]


def test_quantile_bounds_and_coverage():
    paths = np.arange(101.0)[:, None] * np.ones((1, 3))  # (samples, n)
    b = quantile_bounds(paths, [0.8, 0.5])
    np.testing.assert_allclose(b.lower[0.8], 10.0)
    np.testing.assert_allclose(b.upper[0.8], 90.0)
    np.testing.assert_allclose(b.lower[0.5], 25.0)
    np.testing.assert_allclose(b.median, 50.0)
    assert coverage(np.array([1.0, 5.0, 9.0, 20.0]), np.zeros(4), np.full(4, 10.0)) == 0.75
    assert np.isnan(coverage(np.array([]), np.array([]), np.array([])))


@pytest.mark.parametrize("dropout", [0.3, 0.0])
def test_mc_dropout(dropout):
    df = make_frame(60)
    pre = fit_preprocessor(df, FeatureConfig(lookback=5))
    model = build_model(
        ModelConfig(layers=1, units=4, dropout=dropout, backend="keras"), 5, 1, 1, seed=0
    )
    X = np.random.default_rng(0).random((6, 5, 1)).astype(np.float32)
    s1 = mc_dropout_samples(model, X, 8, seed=1)
    assert s1.shape == (8, 6, 1)
    iv = mc_dropout_intervals(model, X, np.full(6, 10.0), pre, (0.8, 0.95), 20, seed=2)
    width80 = iv.upper[0.8] - iv.lower[0.8]
    width95 = iv.upper[0.95] - iv.lower[0.95]
    if dropout > 0:
        assert (s1.std(axis=0) > 0).all()
        assert (width95 >= width80).all() and (width80 > 0).all()
    else:  # documented: no dropout -> intervals collapse onto the point forecast
        assert np.allclose(width95, 0.0)
